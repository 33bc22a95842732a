//! MS-DFSC referral messages, carried in FSCTL_DFS_GET_REFERRALS (_EX) IOCTLs (MS-SMB2
//! 2.2.31, 3.3.5.15.2): the request ([`ReferralRequest`], MS-DFSC 2.2.2 and 2.2.3) and the
//! response ([`ReferralResponse`], 2.2.4) with referral entries of versions 1 to 4 that carry
//! a target (2.2.5.1, 2.2.5.2, 2.2.5.3.1, 2.2.5.4; name-list referrals for domain and DC
//! requests are not answered by this server and are refused by the decoder).

use crate::cursor::{string_to_utf16, utf16_to_string, DecodeError, Reader, Writer};

/// REQ_GET_DFS_REFERRAL_EX RequestFlags (MS-DFSC 2.2.3): a SiteName follows the file name.
pub const REQ_FLAG_SITE_NAME: u16 = 0x0001;

/// RESP_GET_DFS_REFERRAL ReferralHeaderFlags (MS-DFSC 2.2.4).
pub mod header_flags {
    /// R: the targets are DFS root targets (they answer referrals themselves).
    pub const REFERRAL_SERVERS: u32 = 0x0000_0001;
    /// S: the targets hold storage (a client may open files there).
    pub const STORAGE_SERVERS: u32 = 0x0000_0002;
    /// T: target failback.
    pub const TARGET_FAILBACK: u32 = 0x0000_0004;
}

/// DFS_REFERRAL_V3/V4 ServerType (MS-DFSC 2.2.5.3): the target is a root target.
pub const SERVER_TYPE_ROOT: u16 = 0x0001;
/// DFS_REFERRAL_V3/V4 ServerType: the target is a link target.
pub const SERVER_TYPE_LINK: u16 = 0x0000;

/// ReferralEntryFlags (MS-DFSC 2.2.5.3): a name-list referral (not produced nor accepted here).
const ENTRY_FLAG_NAME_LIST: u16 = 0x0002;
/// ReferralEntryFlags (MS-DFSC 2.2.5.4, V4 only): first target of a target set.
const ENTRY_FLAG_TARGET_SET_BOUNDARY: u16 = 0x0004;

/// Size of a V3/V4 non-name-list entry: the fixed fields and the (zero) ServiceSiteGuid.
const ENTRY_SIZE: u16 = 34;
/// The fixed fields before ServiceSiteGuid; the least a V3/V4 entry may declare.
const ENTRY_MIN_SIZE: u16 = 18;
/// Size of a V2 entry (MS-DFSC 2.2.5.2): nine fixed fields, its strings after the last entry.
const ENTRY_V2_SIZE: u16 = 22;
/// The fixed fields of a V1 entry (2.2.5.1), before its inline ShareName.
const ENTRY_V1_FIXED: u16 = 8;

/// A referral request (REQ_GET_DFS_REFERRAL, or REQ_GET_DFS_REFERRAL_EX with its site name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralRequest {
    /// The highest referral version the client understands.
    pub max_referral_level: u16,
    /// The path asked about (`\server\share\...`, or empty / `\domain` for domain requests).
    pub file_name: String,
    /// The client's site (only in the _EX form).
    pub site_name: Option<String>,
}

/// Reads a UTF-16LE string that ends at the first NUL unit or at the end of `b`.
fn utf16_until_nul(b: &[u8]) -> Result<String, DecodeError> {
    let mut end = b.len() & !1;
    for (i, c) in b.chunks_exact(2).enumerate() {
        if c == [0, 0] {
            end = i * 2;
            break;
        }
    }
    if end == b.len() & !1 && b.len() % 2 == 1 {
        return Err(DecodeError::BadString);
    }
    utf16_to_string(&b[..end])
}

impl ReferralRequest {
    /// REQ_GET_DFS_REFERRAL (MS-DFSC 2.2.2): MaxReferralLevel then a NUL-terminated UTF-16
    /// RequestFileName (a missing terminator is tolerated).
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let max_referral_level = r.u16()?;
        let rest = r.bytes(r.remaining())?;
        Ok(ReferralRequest {
            max_referral_level,
            file_name: utf16_until_nul(rest)?,
            site_name: None,
        })
    }

    /// REQ_GET_DFS_REFERRAL_EX (MS-DFSC 2.2.3): MaxReferralLevel, RequestFlags,
    /// RequestDataLength, then RequestData (2.2.3.1: counted file name, and a counted site name
    /// when RequestFlags has SiteName).
    pub fn decode_ex(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let max_referral_level = r.u16()?;
        let flags = r.u16()?;
        let data_len = r.u32()? as usize;
        let data = r.bytes(data_len)?;
        let mut d = Reader::new(data);
        let name_len = d.u16()? as usize;
        let file_name = utf16_until_nul(d.bytes(name_len)?)?;
        let site_name = if flags & REQ_FLAG_SITE_NAME != 0 {
            let site_len = d.u16()? as usize;
            Some(utf16_until_nul(d.bytes(site_len)?)?)
        } else {
            None
        };
        Ok(ReferralRequest {
            max_referral_level,
            file_name,
            site_name,
        })
    }

    /// The REQ_GET_DFS_REFERRAL form (a client's input; the site name is not carried).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.max_referral_level)
            .bytes(&string_to_utf16(&self.file_name))
            .u16(0);
        w.buf
    }

    /// The REQ_GET_DFS_REFERRAL_EX form.
    pub fn encode_ex(&self) -> Vec<u8> {
        let name = string_to_utf16(&self.file_name);
        let mut data = Writer::new();
        data.u16(name.len() as u16).bytes(&name);
        let mut flags = 0;
        if let Some(site) = &self.site_name {
            flags |= REQ_FLAG_SITE_NAME;
            let site = string_to_utf16(site);
            data.u16(site.len() as u16).bytes(&site);
        }
        let mut w = Writer::new();
        w.u16(self.max_referral_level)
            .u16(flags)
            .u32(data.buf.len() as u32)
            .bytes(&data.buf);
        w.buf
    }
}

/// One referral entry with a target (MS-DFSC 2.2.5.1, 2.2.5.2, 2.2.5.3.1, 2.2.5.4). A V1
/// entry carries only the target (its ShareName, kept in `network_address`; the paths are
/// empty and the time to live 0 when decoded, and not sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralEntry {
    /// 1 to 4.
    pub version: u16,
    /// [`SERVER_TYPE_ROOT`] or [`SERVER_TYPE_LINK`].
    pub server_type: u16,
    /// V4: this target starts a target set.
    pub target_set_boundary: bool,
    /// Seconds the client may cache the referral.
    pub time_to_live: u32,
    /// The DFS path the referral is for (`\server\share[\link]`).
    pub dfs_path: String,
    /// The same path in its 8.3 form (servers send the DFS path again).
    pub dfs_alternate_path: String,
    /// The target (`\server\share[\path]`).
    pub network_address: String,
}

/// RESP_GET_DFS_REFERRAL (MS-DFSC 2.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralResponse {
    /// Bytes (UTF-16, no terminator) of the request path the referral covers.
    pub path_consumed: u16,
    /// [`header_flags`].
    pub header_flags: u32,
    pub entries: Vec<ReferralEntry>,
}

impl ReferralResponse {
    /// Decodes a response: every entry of one version (2.2.5), 1 to 4, and not a name-list
    /// referral.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let path_consumed = r.u16()?;
        let count = r.u16()?;
        let header_flags = r.u32()?;
        let mut entries = Vec::new();
        let mut at = r.pos();
        for _ in 0..count {
            let mut e = Reader::at(input, at);
            let version = e.u16()?;
            let size = e.u16()?;
            let min = match version {
                1 => ENTRY_V1_FIXED,
                2 => ENTRY_V2_SIZE,
                3 | 4 => ENTRY_MIN_SIZE,
                _ => return Err(DecodeError::Invalid("referral entry version")),
            };
            if entries
                .first()
                .is_some_and(|f: &ReferralEntry| f.version != version)
            {
                return Err(DecodeError::Invalid(
                    "referral entries of different versions",
                ));
            }
            if size < min {
                return Err(DecodeError::Invalid("referral entry size"));
            }
            // The entry must lie inside the buffer even where its fields are not read.
            let end = at
                .checked_add(usize::from(size))
                .filter(|end| *end <= input.len())
                .ok_or(DecodeError::Truncated)?;
            let server_type = e.u16()?;
            // V1 and V2: ReferralEntryFlags MUST be 0 and are ignored on receipt.
            let flags = e.u16()?;
            let entry = if version == 1 {
                // The ShareName inside the entry, up to its NUL or the entry's end.
                let name = input
                    .get(at + usize::from(ENTRY_V1_FIXED)..end)
                    .ok_or(DecodeError::Truncated)?;
                ReferralEntry {
                    version,
                    server_type,
                    target_set_boundary: false,
                    time_to_live: 0,
                    dfs_path: String::new(),
                    dfs_alternate_path: String::new(),
                    network_address: utf16_until_nul(name)?,
                }
            } else {
                if version >= 3 && flags & ENTRY_FLAG_NAME_LIST != 0 {
                    return Err(DecodeError::Invalid("name-list referral"));
                }
                if version == 2 {
                    let _proximity = e.u32()?;
                }
                let time_to_live = e.u32()?;
                let string = |off: u16| -> Result<String, DecodeError> {
                    let start = at
                        .checked_add(usize::from(off))
                        .ok_or(DecodeError::BadOffset)?;
                    utf16_until_nul(input.get(start..).ok_or(DecodeError::BadOffset)?)
                };
                let dfs_path = string(e.u16()?)?;
                let dfs_alternate_path = string(e.u16()?)?;
                let network_address = string(e.u16()?)?;
                ReferralEntry {
                    version,
                    server_type,
                    target_set_boundary: version == 4
                        && flags & ENTRY_FLAG_TARGET_SET_BOUNDARY != 0,
                    time_to_live,
                    dfs_path,
                    dfs_alternate_path,
                    network_address,
                }
            };
            at = end;
            entries.push(entry);
        }
        Ok(ReferralResponse {
            path_consumed,
            header_flags,
            entries,
        })
    }

    /// Encodes the header, the entries and after them the string buffer (2.2.5): a V1 entry
    /// holds its ShareName inline; V2 entries are 22 bytes and V3/V4 ones 34 (ServiceSiteGuid
    /// zero), each entry's offsets counting from the start of that entry (2.2.5.2, 2.2.5.3.1).
    /// `None` when the entries are not all of one version from 1 to 4, a string puts an offset
    /// or a V1 entry past 64 KiB, or there are more than 65535 entries.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let count = u16::try_from(self.entries.len()).ok()?;
        let version = self.entries.first().map_or(3, |e| e.version);
        if !(1..=4).contains(&version) || self.entries.iter().any(|e| e.version != version) {
            return None;
        }
        let sizes: Vec<u16> = self
            .entries
            .iter()
            .map(|e| match version {
                1 => u16::try_from(
                    usize::from(ENTRY_V1_FIXED)
                        + 2 * (e.network_address.encode_utf16().count() + 1),
                )
                .ok(),
                2 => Some(ENTRY_V2_SIZE),
                _ => Some(ENTRY_SIZE),
            })
            .collect::<Option<_>>()?;
        let mut w = Writer::new();
        w.u16(self.path_consumed).u16(count).u32(self.header_flags);
        let mut strings = Writer::new();
        let strings_start = w.len() + sizes.iter().map(|s| usize::from(*s)).sum::<usize>();
        for (e, size) in self.entries.iter().zip(&sizes) {
            let entry_at = w.len();
            w.u16(e.version).u16(*size).u16(e.server_type);
            if version == 1 {
                w.u16(0).bytes(&string_to_utf16(&e.network_address)).u16(0);
                continue;
            }
            let mut offset_of = |s: &str| -> Option<u16> {
                let off = u16::try_from(strings_start + strings.len() - entry_at).ok()?;
                strings.bytes(&string_to_utf16(s)).u16(0);
                Some(off)
            };
            let dfs = offset_of(&e.dfs_path)?;
            let alt = offset_of(&e.dfs_alternate_path)?;
            let net = offset_of(&e.network_address)?;
            let flags = if e.version == 4 && e.target_set_boundary {
                ENTRY_FLAG_TARGET_SET_BOUNDARY
            } else {
                0
            };
            w.u16(flags);
            if version == 2 {
                w.u32(0); // Proximity
            }
            w.u32(e.time_to_live).u16(dfs).u16(alt).u16(net);
            if version >= 3 {
                w.zeros(16);
            }
        }
        w.bytes(&strings.buf);
        Some(w.buf)
    }
}

/// The fuzz target's property: no decoder panics, and whatever decodes survives
/// encode -> decode unchanged. Returns whether any of the three forms decoded.
pub fn check_round_trip(data: &[u8]) -> Result<bool, String> {
    let mut any = false;
    if let Ok(req) = ReferralRequest::decode(data) {
        any = true;
        // A name with an embedded NUL would end early on the way back: only whole names.
        if !req.file_name.contains('\0') {
            let again = ReferralRequest::decode(&req.encode())
                .map_err(|e| format!("re-decode of {req:?}: {e}"))?;
            if again != req {
                return Err(format!("request {req:?} came back as {again:?}"));
            }
        }
    }
    if let Ok(req) = ReferralRequest::decode_ex(data) {
        any = true;
        let fits = req.file_name.encode_utf16().count() * 2 <= usize::from(u16::MAX)
            && req
                .site_name
                .as_ref()
                .is_none_or(|s| s.encode_utf16().count() * 2 <= usize::from(u16::MAX));
        if fits {
            let again = ReferralRequest::decode_ex(&req.encode_ex())
                .map_err(|e| format!("re-decode of {req:?}: {e}"))?;
            if again != req {
                return Err(format!("_EX request {req:?} came back as {again:?}"));
            }
        }
    }
    if let Ok(resp) = ReferralResponse::decode(data) {
        any = true;
        if let Some(bytes) = resp.encode() {
            let again = ReferralResponse::decode(&bytes)
                .map_err(|e| format!("re-decode of {resp:?}: {e}"))?;
            if again != resp {
                return Err(format!("response {resp:?} came back as {again:?}"));
            }
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_from_a_client() {
        // MaxReferralLevel 4, "\srv\dfs" NUL-terminated, as smbclient sends it.
        let mut input = vec![4, 0];
        input.extend(string_to_utf16("\\srv\\dfs"));
        input.extend([0, 0]);
        let req = ReferralRequest::decode(&input).unwrap();
        assert_eq!(req.max_referral_level, 4);
        assert_eq!(req.file_name, "\\srv\\dfs");
        assert_eq!(req.encode(), input);
        // Without the terminator, and with an odd trailing byte.
        assert_eq!(
            ReferralRequest::decode(&input[..input.len() - 2])
                .unwrap()
                .file_name,
            "\\srv\\dfs"
        );
        assert_eq!(
            ReferralRequest::decode(&input[..input.len() - 3]),
            Err(DecodeError::BadString)
        );
        assert_eq!(ReferralRequest::decode(&[4]), Err(DecodeError::Truncated));
    }

    #[test]
    fn ex_request_with_site() {
        let req = ReferralRequest {
            max_referral_level: 4,
            file_name: "\\srv\\dfs\\link".into(),
            site_name: Some("site1".into()),
        };
        let b = req.encode_ex();
        assert_eq!(&b[2..4], &[1, 0], "SiteName flag");
        assert_eq!(ReferralRequest::decode_ex(&b).unwrap(), req);
        // RequestDataLength past the end.
        let mut bad = b.clone();
        bad[4] = 0xFF;
        assert_eq!(
            ReferralRequest::decode_ex(&bad),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn response_layout() {
        let resp = ReferralResponse {
            path_consumed: 26,
            header_flags: header_flags::STORAGE_SERVERS,
            entries: vec![ReferralEntry {
                version: 3,
                server_type: SERVER_TYPE_LINK,
                target_set_boundary: false,
                time_to_live: 300,
                dfs_path: "\\a\\b\\c".into(),
                dfs_alternate_path: "\\a\\b\\c".into(),
                network_address: "\\n2\\d".into(),
            }],
        };
        let b = resp.encode().unwrap();
        // Header 8 + one 34-byte entry, then 3 strings with terminators.
        assert_eq!(b.len(), 8 + 34 + 14 + 14 + 12);
        assert_eq!(&b[8..12], &[3, 0, 34, 0]);
        // DFSPathOffset counts from the entry: right after it.
        assert_eq!(u16::from_le_bytes([b[20], b[21]]), 34);
        assert_eq!(u16::from_le_bytes([b[22], b[23]]), 48);
        assert_eq!(u16::from_le_bytes([b[24], b[25]]), 62);
        assert_eq!(ReferralResponse::decode(&b).unwrap(), resp);
        // A string offset past the end, and a truncated entry.
        let mut bad = b.clone();
        bad[24] = 0xF0;
        assert!(ReferralResponse::decode(&bad).is_err());
        assert!(ReferralResponse::decode(&b[..30]).is_err());
        assert_eq!(check_round_trip(&b), Ok(true));
    }

    #[test]
    fn name_list_and_unknown_versions_refused() {
        let resp = ReferralResponse {
            path_consumed: 0,
            header_flags: 0,
            entries: vec![ReferralEntry {
                version: 4,
                server_type: SERVER_TYPE_ROOT,
                target_set_boundary: true,
                time_to_live: 1,
                dfs_path: String::new(),
                dfs_alternate_path: String::new(),
                network_address: "x".into(),
            }],
        };
        let mut b = resp.encode().unwrap();
        assert_eq!(ReferralResponse::decode(&b).unwrap(), resp);
        b[14] |= 0x02;
        assert_eq!(
            ReferralResponse::decode(&b),
            Err(DecodeError::Invalid("name-list referral"))
        );
        b[14] &= !0x02;
        b[8] = 5;
        assert_eq!(
            ReferralResponse::decode(&b),
            Err(DecodeError::Invalid("referral entry version"))
        );
    }

    #[test]
    fn v1_response_layout() {
        // One V1 link entry to \n2\d: hand-checked bytes (MS-DFSC 2.2.4, 2.2.5.1).
        let resp = ReferralResponse {
            path_consumed: 26,
            header_flags: header_flags::STORAGE_SERVERS,
            entries: vec![ReferralEntry {
                version: 1,
                server_type: SERVER_TYPE_LINK,
                target_set_boundary: false,
                time_to_live: 0,
                dfs_path: String::new(),
                dfs_alternate_path: String::new(),
                network_address: "\\n2\\d".into(),
            }],
        };
        let b = resp.encode().unwrap();
        let want: Vec<u8> = [
            &[26, 0, 1, 0, 2, 0, 0, 0][..],
            // VersionNumber 1, Size 8 + 12, ServerType 0, ReferralEntryFlags 0.
            &[1, 0, 20, 0, 0, 0, 0, 0],
            &[b'\\', 0, b'n', 0, b'2', 0, b'\\', 0, b'd', 0, 0, 0],
        ]
        .concat();
        assert_eq!(b, want);
        assert_eq!(ReferralResponse::decode(&b).unwrap(), resp);
        // A Size below the fixed fields, or past the buffer.
        let mut bad = b.clone();
        bad[10] = 6;
        assert!(ReferralResponse::decode(&bad).is_err());
        bad[10] = 60;
        assert_eq!(ReferralResponse::decode(&bad), Err(DecodeError::Truncated));
        assert_eq!(check_round_trip(&b), Ok(true));
    }

    #[test]
    fn v2_response_layout() {
        // Two V2 root entries: 22-byte entries, then the strings; offsets count from each
        // entry (MS-DFSC 2.2.5.2). Hand-checked bytes.
        let entry = |net: &str| ReferralEntry {
            version: 2,
            server_type: SERVER_TYPE_ROOT,
            target_set_boundary: false,
            time_to_live: 300,
            dfs_path: "\\a".into(),
            dfs_alternate_path: "\\a".into(),
            network_address: net.into(),
        };
        let resp = ReferralResponse {
            path_consumed: 4,
            header_flags: header_flags::REFERRAL_SERVERS | header_flags::STORAGE_SERVERS,
            entries: vec![entry("\\x"), entry("\\y")],
        };
        let b = resp.encode().unwrap();
        let s = |c: u8| [b'\\', 0, c, 0, 0, 0];
        let want: Vec<u8> = [
            &[4, 0, 2, 0, 3, 0, 0, 0][..],
            // Entry 1 at 8: V2, Size 22, root, flags 0, Proximity 0, TTL 300, offsets to the
            // strings at 52, 58, 64: 44, 50, 56.
            &[
                2, 0, 22, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x2c, 1, 0, 0, 44, 0, 50, 0, 56, 0,
            ],
            // Entry 2 at 30: strings at 70, 76, 82: 40, 46, 52.
            &[
                2, 0, 22, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x2c, 1, 0, 0, 40, 0, 46, 0, 52, 0,
            ],
            &s(b'a'),
            &s(b'a'),
            &s(b'x'),
            &s(b'a'),
            &s(b'a'),
            &s(b'y'),
        ]
        .concat();
        assert_eq!(b, want);
        assert_eq!(ReferralResponse::decode(&b).unwrap(), resp);
        assert_eq!(check_round_trip(&b), Ok(true));
        // Entries of two versions in one response are refused both ways.
        let mut mixed = resp.clone();
        mixed.entries[1].version = 3;
        assert_eq!(mixed.encode(), None);
        let mut bad = b.clone();
        bad[30] = 3;
        assert_eq!(
            ReferralResponse::decode(&bad),
            Err(DecodeError::Invalid(
                "referral entries of different versions"
            ))
        );
    }
}
