//! Named pipes on IPC$ with DCE/RPC (smb-rpc): `smbclient -L` enumerates shares through
//! srvsvc NetrShareEnum over the srvsvc pipe (CREATE, FSCTL_PIPE_TRANSCEIVE, READ, CLOSE), at
//! every dialect, signed and encrypted. Each test fails on a server without the pipe, with a
//! wrong share list, or one that lets anonymous sessions enumerate shares.

mod common;
use common::*;

use std::process::Command;

fn list_shares(srv: &TestServer, auth: &[&str], extra: &[&str]) -> (bool, String) {
    let out = Command::new("smbclient")
        .arg("-L")
        .arg("//127.0.0.1")
        .arg("-p")
        .arg(srv.port.to_string())
        .arg("-s")
        .arg(&srv.client_conf)
        .args(auth)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The (name, type, comment) rows of smbclient's share table.
fn share_rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("---------"))
        .skip(1)
        .take_while(|l| l.starts_with('\t') && !l.trim().is_empty())
        .map(|l| {
            let mut t = l.split_whitespace();
            let name = t.next().unwrap_or_default().to_string();
            let ty = t.next().unwrap_or_default().to_string();
            (name, ty, t.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

fn server_with_two_shares() -> TestServer {
    let other = std::env::temp_dir();
    TestServer::start(Options {
        config_extra: format!(
            "[[share]]\nname = \"Projects\"\npath = \"{}\"\n",
            other.display()
        ),
        ..Options::default()
    })
}

#[test]
fn smbclient_lists_the_configured_shares_and_ipc_at_every_dialect() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let srv = server_with_two_shares();
    let user = format!("{USER}%{PASS}");
    for extra in [
        &["-m", "SMB2_02"][..],
        &["-m", "SMB2_10"][..],
        &["-m", "SMB3_00", "--client-protection=sign"][..],
        &["-m", "SMB3_02"][..],
        &["-m", "SMB3_11"][..],
        &["-m", "SMB3_11", "--client-protection=encrypt"][..],
    ] {
        let (ok, out) = list_shares(&srv, &["-U", &user], extra);
        assert!(ok, "{extra:?}: {out}\n{}", srv.log());
        assert_eq!(
            share_rows(&out),
            vec![
                ("data".into(), "Disk".into(), String::new()),
                ("Projects".into(), "Disk".into(), String::new()),
                ("IPC$".into(), "IPC".into(), "IPC Service".into()),
            ],
            "{extra:?}: {out}"
        );
    }
}

#[test]
fn anonymous_sessions_cannot_list_shares_unless_allowed() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let srv = TestServer::start(Options::default());
    let (ok, out) = list_shares(&srv, &["-N"], &["-m", "SMB3_11"]);
    assert!(!ok, "anonymous listed shares: {out}");
    assert!(share_rows(&out).is_empty(), "{out}");

    // With allow_anonymous a null session reaches IPC$ (as on Windows and Samba).
    let srv = TestServer::start(Options {
        server_extra: "allow_anonymous = true".into(),
        ..Options::default()
    });
    let (ok, out) = list_shares(&srv, &["-N"], &["-m", "SMB3_11"]);
    assert!(ok, "{out}\n{}", srv.log());
    assert_eq!(share_rows(&out).len(), 2, "{out}");
}

#[test]
fn unknown_pipes_are_not_found() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let srv = TestServer::start(Options::default());
    let work = tempfile::tempdir().unwrap();
    let user = format!("{USER}%{PASS}");
    // `rpcclient` is the usual tool, but smbclient on IPC$ can open a pipe name as a file.
    let out = Command::new("smbclient")
        .current_dir(work.path())
        .arg("//127.0.0.1/IPC$")
        .arg("-p")
        .arg(srv.port.to_string())
        .arg("-s")
        .arg(&srv.client_conf)
        .args([
            "-U",
            &user,
            "-m",
            "SMB3_11",
            "-c",
            "get nosuchpipe x; get srvsvc y",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NT_STATUS_OBJECT_NAME_NOT_FOUND opening remote file \\nosuchpipe"),
        "{text}"
    );
    // The srvsvc pipe opens; a READ with no request in it finds it empty.
    assert!(!text.contains("opening remote file \\srvsvc"), "{text}");
}

/// rpcclient (Samba's RPC client, samba-common-bin) for the other srvsvc calls: share and
/// server information at each level served.
#[test]
fn rpcclient_share_and_server_info() {
    if !have("rpcclient") {
        missing("rpcclient not installed (apt-get install samba-common-bin)");
        return;
    }
    let srv = server_with_two_shares();
    let user = format!("{USER}%{PASS}");
    let out = Command::new("rpcclient")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(srv.port.to_string())
        .arg("-s")
        .arg(&srv.client_conf)
        .args(["-U", &user, "-m", "SMB3_11"])
        .args([
            "-c",
            "netshareenumall 1; netsharegetinfo Projects 1; \
             netsharegetinfo nosuch; srvinfo",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", srv.log());
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let count = |want: &[&str]| lines.iter().filter(|l| l.as_slice() == want).count();
    // NetrShareEnum level 1 lists the three shares; GetInfo finds Projects once more.
    // (rpcclient displays no level 0; the crate's tests cover it.)
    assert_eq!(count(&["netname:", "data"]), 1, "{text}");
    assert_eq!(count(&["netname:", "IPC$"]), 1, "{text}");
    assert_eq!(count(&["netname:", "Projects"]), 2, "{text}");
    assert_eq!(count(&["remark:", "IPC", "Service"]), 1, "{text}");
    assert_eq!(
        count(&["result", "was", "WERR_NERR_NETNAMENOTFOUND"]),
        1,
        "{text}"
    );
    // srvinfo: NetrServerGetInfo level 101.
    assert_eq!(count(&["platform_id", ":", "500"]), 1, "{text}");
    assert_eq!(count(&["os", "version", ":", "10.0"]), 1, "{text}");
    assert!(
        lines.iter().any(|l| l.first() == Some(&"TESTSRV")),
        "{text}"
    );
    assert!(
        !text.contains("DOS code") && !text.contains("NT_STATUS"),
        "{text}"
    );
}

/// A share list longer than one RPC fragment (4280 bytes): the answer comes in several
/// response PDUs, the first through FSCTL_PIPE_TRANSCEIVE and the rest through READs.
#[test]
fn long_share_lists_arrive_in_several_fragments() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let tmp = std::env::temp_dir();
    let names: Vec<String> = (0..150)
        .map(|i| format!("share_with_a_long_name_{i:03}"))
        .collect();
    let config_extra: String = names
        .iter()
        .map(|n| format!("[[share]]\nname = \"{n}\"\npath = \"{}\"\n", tmp.display()))
        .collect();
    let srv = TestServer::start(Options {
        config_extra,
        ..Options::default()
    });
    let user = format!("{USER}%{PASS}");
    let (ok, out) = list_shares(&srv, &["-U", &user], &["-m", "SMB3_11"]);
    assert!(ok, "{out}\n{}", srv.log());
    let rows = share_rows(&out);
    let listed: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let mut expected = vec!["data"];
    expected.extend(names.iter().map(String::as_str));
    expected.push("IPC$");
    assert_eq!(listed, expected, "{out}");
}
