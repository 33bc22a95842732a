//! The DFS namespace of this node (MS-DFSC): shares configured `dfs_root = true` and their
//! `dfs_links`. Answers FSCTL_DFS_GET_REFERRALS (MS-DFSC 3.2.5.5: root referrals to this
//! server, link referrals to the link's targets), strips the `\server\share` prefix of CREATE
//! names sent with SMB2_FLAGS_DFS_OPERATIONS (MS-SMB2 3.3.5.9) and finds the link a path runs
//! into (such opens fail with STATUS_PATH_NOT_COVERED so that the client asks for a referral).
//! The wire format is `smb_proto::dfs`.

use smb_proto::dfs::{
    header_flags, ReferralEntry, ReferralRequest, ReferralResponse, SERVER_TYPE_LINK,
    SERVER_TYPE_ROOT,
};
use smb_proto::{status, NtStatus};

use crate::config::DfsLink;
use crate::shared::Share;

/// Seconds a client may cache a referral (Samba's default, `msdfs:ttl`-less, is 300).
pub const REFERRAL_TTL: u32 = 300;

/// The non-empty components of a DFS path split at `\`, each with the UTF-16 byte offset
/// where it ends in `path` (what PathConsumed counts, MS-DFSC 2.2.4).
fn components(path: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for c in path.split('\\') {
        at += c.encode_utf16().count() * 2;
        if !c.is_empty() {
            out.push((c, at));
        }
        at += 2;
    }
    out
}

/// The link of a DFS root `share` that `comps` (the path below the share) starts with,
/// and how many components it has.
pub fn link_for<'a, S: AsRef<str>>(share: &'a Share, comps: &[S]) -> Option<&'a DfsLink> {
    if !share.dfs_root {
        return None;
    }
    share.dfs_links.iter().find(|l| {
        l.components.len() <= comps.len()
            && l.components
                .iter()
                .zip(comps)
                .all(|(a, b)| a.eq_ignore_ascii_case(b.as_ref()))
    })
}

/// MS-SMB2 3.3.5.9: a CREATE with SMB2_FLAGS_DFS_OPERATIONS on a DFS share names the file as
/// `[\]server\share\path`; the path below the share is what is left after two components.
pub fn strip_dfs_prefix(name: &str) -> &str {
    let rest = name.trim_start_matches('\\');
    let mut parts = rest.splitn(3, '\\');
    let (_server, _share) = (parts.next(), parts.next());
    parts.next().unwrap_or("")
}

/// The referral for `req` (MS-DFSC 3.2.5.5): `\server\share` of a DFS root gets a root
/// referral naming this server (ReferralServers and StorageServers), a path through one of its
/// links the link's targets (StorageServers). Domain and DC referral requests (fewer than two
/// components) and paths outside every link get STATUS_NOT_FOUND, as from Samba. The entries
/// are of the highest version this server has (1 to 4) not above the client's
/// MaxReferralLevel (3.2.5.5); a MaxReferralLevel of 0 is STATUS_INVALID_PARAMETER.
pub fn referral(shares: &[Share], req: &ReferralRequest) -> Result<ReferralResponse, NtStatus> {
    // No DFS root here: nothing is known (what this server answered before it had DFS).
    if !shares.iter().any(|s| s.dfs_root) {
        return Err(status::NOT_FOUND);
    }
    let version = match req.max_referral_level {
        0 => return Err(status::INVALID_PARAMETER),
        v @ 1..=3 => v,
        _ => 4,
    };
    let comps = components(&req.file_name);
    let [(server, _), (share_name, share_end), below @ ..] = comps.as_slice() else {
        return Err(status::NOT_FOUND);
    };
    let Some(share) = shares
        .iter()
        .find(|s| s.dfs_root && s.name.eq_ignore_ascii_case(share_name))
    else {
        return Err(status::NOT_FOUND);
    };
    let consumed = |end: usize| u16::try_from(end).map_err(|_| status::INVALID_PARAMETER);
    if below.is_empty() {
        let path = format!("\\{server}\\{share_name}");
        return Ok(ReferralResponse {
            path_consumed: consumed(*share_end)?,
            header_flags: header_flags::REFERRAL_SERVERS | header_flags::STORAGE_SERVERS,
            entries: vec![ReferralEntry {
                version,
                server_type: SERVER_TYPE_ROOT,
                target_set_boundary: version == 4,
                time_to_live: REFERRAL_TTL,
                dfs_path: path.clone(),
                dfs_alternate_path: path.clone(),
                network_address: path,
            }],
        });
    }
    let names: Vec<&str> = below.iter().map(|(c, _)| *c).collect();
    let Some(link) = link_for(share, &names) else {
        return Err(status::NOT_FOUND);
    };
    let n = link.components.len();
    let link_end = below[n - 1].1;
    let dfs_path = format!("\\{server}\\{share_name}\\{}", names[..n].join("\\"));
    Ok(ReferralResponse {
        path_consumed: consumed(link_end)?,
        header_flags: header_flags::STORAGE_SERVERS,
        entries: link
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| ReferralEntry {
                version,
                server_type: SERVER_TYPE_LINK,
                // V4: the targets form one set (MS-DFSC 2.2.5.4).
                target_set_boundary: version == 4 && i == 0,
                time_to_live: REFERRAL_TTL,
                dfs_path: dfs_path.clone(),
                dfs_alternate_path: dfs_path.clone(),
                network_address: t.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(dir: &std::path::Path, dfs_root: bool, links: Vec<DfsLink>) -> Share {
        Share {
            dfs_root,
            dfs_links: links,
            ..Share::for_tests("Dfs", dir)
        }
    }

    fn ask(shares: &[Share], level: u16, name: &str) -> Result<ReferralResponse, NtStatus> {
        referral(
            shares,
            &ReferralRequest {
                max_referral_level: level,
                file_name: name.into(),
                site_name: None,
            },
        )
    }

    #[test]
    fn root_and_link_referrals() {
        let dir = tempfile::tempdir().unwrap();
        let link = DfsLink {
            components: vec!["a".into(), "Link1".into()],
            targets: vec!["\\n2\\data\\sub".into(), "\\n3\\data".into()],
        };
        let shares = [share(dir.path(), true, vec![link])];
        let root = ask(&shares, 4, "\\srv\\dfs").unwrap();
        assert_eq!(root.path_consumed, 16);
        assert_eq!(
            root.header_flags,
            header_flags::REFERRAL_SERVERS | header_flags::STORAGE_SERVERS
        );
        assert_eq!(root.entries.len(), 1);
        assert_eq!(root.entries[0].server_type, SERVER_TYPE_ROOT);
        assert_eq!(root.entries[0].network_address, "\\srv\\dfs");
        assert_eq!(root.entries[0].version, 4);

        let l = ask(&shares, 3, "\\srv\\dfs\\A\\link1\\x\\y.txt").unwrap();
        // "\srv\dfs\A\link1": 16 UTF-16 units.
        assert_eq!(l.path_consumed, 32);
        assert_eq!(l.header_flags, header_flags::STORAGE_SERVERS);
        let targets: Vec<_> = l
            .entries
            .iter()
            .map(|e| e.network_address.as_str())
            .collect();
        assert_eq!(targets, ["\\n2\\data\\sub", "\\n3\\data"]);
        assert!(l.entries.iter().all(|e| e.version == 3
            && e.server_type == SERVER_TYPE_LINK
            && e.dfs_path == "\\srv\\dfs\\A\\link1"));

        assert_eq!(
            ask(&shares, 4, "\\srv\\dfs\\a").err(),
            Some(status::NOT_FOUND)
        );
        assert_eq!(
            ask(&shares, 4, "\\srv\\other").err(),
            Some(status::NOT_FOUND)
        );
        assert_eq!(ask(&shares, 4, "\\domain").err(), Some(status::NOT_FOUND));
        // The highest version not above the client's level; 0 is no level at all.
        for level in 1..=3 {
            let r = ask(&shares, level, "\\srv\\dfs\\A\\link1\\x").unwrap();
            assert_eq!(r.path_consumed, 32);
            assert!(r.entries.iter().all(|e| e.version == level));
            let r = r.encode().expect("encodes");
            assert_eq!(u16::from_le_bytes([r[8], r[9]]), level);
        }
        assert_eq!(ask(&shares, 9, "\\srv\\dfs").unwrap().entries[0].version, 4);
        assert_eq!(
            ask(&shares, 0, "\\srv\\dfs").err(),
            Some(status::INVALID_PARAMETER)
        );
        let plain = [share(dir.path(), false, Vec::new())];
        assert_eq!(ask(&plain, 4, "\\srv\\dfs").err(), Some(status::NOT_FOUND));
    }

    #[test]
    fn components_and_prefix() {
        assert_eq!(
            components("\\srv\\dfs\\l1"),
            vec![("srv", 8), ("dfs", 16), ("l1", 22)]
        );
        assert_eq!(components("\\\\srv\\dfs"), vec![("srv", 10), ("dfs", 18)]);
        assert_eq!(strip_dfs_prefix("srv\\dfs\\a\\b.txt"), "a\\b.txt");
        assert_eq!(strip_dfs_prefix("\\srv\\dfs\\a"), "a");
        assert_eq!(strip_dfs_prefix("srv\\dfs"), "");
        assert_eq!(strip_dfs_prefix(""), "");
    }
}
