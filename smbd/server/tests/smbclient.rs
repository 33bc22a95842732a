//! smbclient (Samba 4.17) against the real smbd binary at every dialect, plain, signed and
//! encrypted: put, get (content compared), ls, rename, rm, mkdir, rmdir.

mod common;
use common::*;

fn exercise(dialect: &str, protection: &str) {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let srv = TestServer::start(Options::default());
    let work = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(work.path().join("up.bin"), &data).unwrap();
    let mut extra = vec!["-m", dialect];
    let prot = format!("--client-protection={protection}");
    if !protection.is_empty() {
        extra.push(&prot);
    }
    let (ok, out) = srv.smbclient(
        work.path(),
        &extra,
        "put up.bin a.bin; mkdir sub; rename a.bin sub\\b.bin; get sub\\b.bin down.bin; ls sub\\*",
    );
    assert!(ok, "{dialect} {protection}: {out}\n{}", srv.log());
    assert!(out.contains("b.bin"), "ls output: {out}");
    assert_eq!(std::fs::read(work.path().join("down.bin")).unwrap(), data);
    assert_eq!(std::fs::read(srv.share.join("sub/b.bin")).unwrap(), data);
    let (ok, out) = srv.smbclient(work.path(), &extra, "rm sub\\b.bin; rmdir sub; ls");
    assert!(ok, "{dialect} {protection}: {out}");
    assert!(!srv.share.join("sub").exists());
}

fn all(dialect: &str) {
    exercise(dialect, "");
    exercise(dialect, "sign");
    if dialect.starts_with("SMB3") {
        exercise(dialect, "encrypt");
    }
}

#[test]
fn smbclient_smb2_02() {
    all("SMB2_02");
}
#[test]
fn smbclient_smb2_10() {
    all("SMB2_10");
}
#[test]
fn smbclient_smb3_00() {
    all("SMB3_00");
}
#[test]
fn smbclient_smb3_02() {
    all("SMB3_02");
}
#[test]
fn smbclient_smb3_11() {
    all("SMB3_11");
}

#[test]
fn smbclient_wrong_password_refused() {
    if !have("smbclient") {
        return;
    }
    let srv = TestServer::start(Options::default());
    let out = std::process::Command::new("smbclient")
        .arg("//127.0.0.1/data")
        .args(["-p", &srv.port.to_string(), "-s"])
        .arg(&srv.client_conf)
        .args(["-U", "alice%wrong", "-c", "ls"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("NT_STATUS_LOGON_FAILURE"), "{text}");
}

#[test]
fn encrypted_share_requires_smb3() {
    if !have("smbclient") {
        return;
    }
    let srv = TestServer::start(Options {
        encrypt_share: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("x.txt"), b"secret data").unwrap();
    // smbclient 4.17 refuses an encrypted share unless told to encrypt.
    let (ok, out) = srv.smbclient(
        work.path(),
        &["-m", "SMB3_11", "--client-protection=encrypt"],
        "put x.txt; get x.txt y.txt",
    );
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(work.path().join("y.txt")).unwrap(),
        b"secret data"
    );
    let (ok, _) = srv.smbclient(work.path(), &["-m", "SMB2_10"], "ls");
    assert!(!ok, "SMB2.1 must be refused on an encrypted share");
}

#[test]
fn sigterm_stops_cleanly() {
    let mut srv = TestServer::start(Options::default());
    let st = srv.stop();
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn global_encryption_smb3_00() {
    if !have("smbclient") {
        return;
    }
    let srv = TestServer::start(Options {
        global_encrypt: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("x.txt"), b"sealed").unwrap();
    let (ok, out) = srv.smbclient(
        work.path(),
        &["-m", "SMB3_00", "--client-protection=encrypt"],
        "put x.txt; get x.txt y.txt",
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(work.path().join("y.txt")).unwrap(), b"sealed");
}
