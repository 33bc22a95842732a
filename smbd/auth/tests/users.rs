use smb_auth::users::{UserDb, UserDbError};

#[test]
fn parse_valid_file() {
    let db =
        UserDb::parse("# users\n\nalice:secret\r\n  Bob:pa:ss:word\n# trailing comment\ncarol:\n")
            .unwrap();
    assert_eq!(db.len(), 3);
    // MS-NLMP 4.2.2.1.2: NTOWFv1("Password") = a4f49c406510bdcab6824ee7c30fd852.
    let mut db2 = UserDb::new();
    db2.add("User", "Password");
    assert_eq!(
        db2.nt_hash("user").unwrap().to_vec(),
        hex::decode("a4f49c406510bdcab6824ee7c30fd852").unwrap()
    );
    assert_eq!(db.nt_hash("ALICE"), db.nt_hash("alice"));
    assert!(db.nt_hash("alice").is_some());
    assert_eq!(db.canonical_name("bob"), Some("Bob"));
    // Password is everything after the first ':'.
    let mut expect = UserDb::new();
    expect.add("x", "pa:ss:word");
    assert_eq!(db.nt_hash("bob"), expect.nt_hash("x"));
    assert!(db.nt_hash("carol").is_some());
    assert!(db.nt_hash("dave").is_none());
}

#[test]
fn parse_errors_carry_line_numbers() {
    match UserDb::parse("alice:x\n\nnocolon\n") {
        Err(UserDbError::Parse { line, .. }) => assert_eq!(line, 3),
        other => panic!("unexpected {other:?}"),
    }
    match UserDb::parse(":pw\n") {
        Err(UserDbError::Parse { line, reason }) => {
            assert_eq!(line, 1);
            assert!(reason.contains("empty"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match UserDb::parse("a:1\nA:2\n") {
        Err(UserDbError::Parse { line, reason }) => {
            assert_eq!(line, 2);
            assert!(reason.contains("duplicate"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn load_from_file() {
    let dir = std::env::temp_dir().join(format!("smb-auth-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users.txt");
    std::fs::write(&path, "alice:secret\n").unwrap();
    let db = UserDb::load(&path).unwrap();
    assert!(db.nt_hash("alice").is_some());
    let err = UserDb::load(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, UserDbError::Io { .. }));
    assert!(err.to_string().contains("missing"));
    std::fs::remove_dir_all(&dir).unwrap();
}
