use smb_auth::users::{UserDb, UserDbError};

const H: &str = "A4F49C406510BDCAB6824EE7C30FD852"; // NTOWFv1("Password")

#[test]
fn parse_valid_file() {
    let db = UserDb::parse(&format!(
        "# users\n\nalice:1:1:{H}\r\n  Bob:::{}\n# trailing comment\ncarol:3:3:{H}:4\n",
        H.to_lowercase()
    ))
    .unwrap();
    assert_eq!(db.len(), 3);
    // MS-NLMP 4.2.2.1.2: NTOWFv1("Password") = a4f49c406510bdcab6824ee7c30fd852.
    let mut db2 = UserDb::new();
    db2.add("User", "Password");
    assert_eq!(
        db2.nt_hash("user").unwrap().to_vec(),
        hex::decode("a4f49c406510bdcab6824ee7c30fd852").unwrap()
    );
    assert_eq!(db.nt_hash("ALICE"), db2.nt_hash("user"));
    assert_eq!(db.canonical_name("bob"), Some("Bob"));
    assert_eq!(db.nt_hash("bob"), db2.nt_hash("user"));
    assert!(db.nt_hash("carol").is_some());
    assert!(db.nt_hash("dave").is_none());
}

#[test]
fn parse_errors_carry_line_numbers() {
    match UserDb::parse(&format!("alice:1:1:{H}\n\nnocolon\n")) {
        Err(UserDbError::Parse { line, .. }) => assert_eq!(line, 3),
        other => panic!("unexpected {other:?}"),
    }
    match UserDb::parse(&format!(":1:1:{H}\n")) {
        Err(UserDbError::Parse { line, reason }) => {
            assert_eq!(line, 1);
            assert!(reason.contains("empty"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match UserDb::parse(&format!("a:1:1:{H}\nA:2:2:{H}\n")) {
        Err(UserDbError::Parse { line, reason }) => {
            assert_eq!(line, 2);
            assert!(reason.contains("duplicate"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The old plaintext form is refused, pointing at the tool that converts it.
    match UserDb::parse("alice:secret\n") {
        Err(UserDbError::Parse { line, reason }) => {
            assert_eq!(line, 1);
            assert!(reason.contains("smbd passwd"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn load_from_file() {
    let dir = std::env::temp_dir().join(format!("smb-auth-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users.txt");
    std::fs::write(&path, format!("alice:::{H}\n")).unwrap();
    let db = UserDb::load(&path).unwrap();
    assert!(db.nt_hash("alice").is_some());
    let err = UserDb::load(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, UserDbError::Io { .. }));
    assert!(err.to_string().contains("missing"));
    std::fs::remove_dir_all(&dir).unwrap();
}
