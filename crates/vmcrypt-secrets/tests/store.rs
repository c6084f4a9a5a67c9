//! The store on disk: round trips, file modes, refusals of tampered, swapped and
//! truncated values, a wrong master key, leftover temp files, private secrets.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use vmcrypt_error::ErrorKind;
use vmcrypt_secrets::{Defined, MasterKeyConfig, SecretDef, Store, Usage, Uuid};

fn store_at(dir: &Path) -> Store {
    Store::new(Some(dir.to_path_buf()), MasterKeyConfig::default())
}

fn def(uuid: &str, private: bool, vol: &str) -> SecretDef {
    SecretDef::parse(&format!(
        "<secret ephemeral='no' private='{}'><uuid>{uuid}</uuid>\
         <usage type='volume'><volume>{vol}</volume></usage></secret>",
        if private { "yes" } else { "no" }
    ))
    .unwrap()
}

const A: &str = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";
const B: &str = "11111111-2222-4333-8444-555555555555";

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn setup() -> (tempfile::TempDir, PathBuf, Store) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("secrets");
    let s = store_at(&dir);
    (t, dir, s)
}

#[test]
fn round_trip_modes_and_list() {
    let (_t, dir, s) = setup();
    let a: Uuid = A.parse().unwrap();
    assert_eq!(
        s.define(&def(A, false, "/a.img")).unwrap(),
        Defined::Created
    );
    assert_eq!(
        s.define(&def(A, false, "/a.img")).unwrap(),
        Defined::Updated
    );
    s.set_value(&a, b"pass phrase\n").unwrap();
    assert_eq!(s.get_value(&a).unwrap().as_bytes(), b"pass phrase\n");
    assert_eq!(
        s.value_for_usage(&Usage::Volume("/a.img".into()))
            .unwrap()
            .as_bytes(),
        b"pass phrase\n"
    );
    assert_eq!(mode(&dir), 0o700);
    for f in [
        format!("{A}.xml"),
        format!("{A}.value"),
        "master.key".into(),
    ] {
        assert_eq!(mode(&dir.join(&f)), 0o600, "{f}");
    }
    let sealed = fs::read(dir.join(format!("{A}.value"))).unwrap();
    assert!(
        !sealed.windows(11).any(|w| w == b"pass phrase"),
        "value stored in clear"
    );
    assert_eq!(s.dumpxml(&a).unwrap(), def(A, false, "/a.img").to_xml());
    let l = s.list().unwrap();
    assert_eq!(l.len(), 1);
    assert!(l[0].has_value);
    s.undefine(&a).unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(!dir.join(format!("{A}.value")).exists());
    assert_eq!(s.get_value(&a).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn tampered_swapped_truncated_refused() {
    let (_t, dir, s) = setup();
    let (a, b): (Uuid, Uuid) = (A.parse().unwrap(), B.parse().unwrap());
    s.define(&def(A, false, "/a.img")).unwrap();
    s.define(&def(B, false, "/b.img")).unwrap();
    s.set_value(&a, b"alpha").unwrap();
    s.set_value(&b, b"bravo").unwrap();
    let (pa, pb) = (
        dir.join(format!("{A}.value")),
        dir.join(format!("{B}.value")),
    );
    let (va, vb) = (fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
    // swap
    fs::write(&pa, &vb).unwrap();
    fs::write(&pb, &va).unwrap();
    for u in [a, b] {
        let e = s.get_value(&u).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey);
        assert!(
            e.to_string().contains(&format!(
                "secret {u}: sealed value does not authenticate (tampered, or sealed under another master key)"
            )),
            "{e}"
        );
    }
    // flip one byte of the ciphertext
    let mut flipped = va.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    fs::write(&pa, &flipped).unwrap();
    assert!(
        s.get_value(&a)
            .unwrap_err()
            .to_string()
            .contains("does not authenticate")
    );
    // truncated
    fs::write(&pa, &va[..va.len() - 1]).unwrap();
    assert!(s.get_value(&a).is_err());
    fs::write(&pa, &va[..10]).unwrap();
    assert!(
        s.get_value(&a)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    fs::write(&pa, &va).unwrap();
    assert_eq!(s.get_value(&a).unwrap().as_bytes(), b"alpha");
    // an XML file copied to another name is refused too
    fs::copy(dir.join(format!("{A}.xml")), dir.join(format!("{B}.xml"))).unwrap();
    assert!(
        s.get_value(&b)
            .unwrap_err()
            .to_string()
            .contains("not 11111111")
    );
}

#[test]
fn wrong_master_key_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    let k1 = t.path().join("k1");
    let k2 = t.path().join("k2");
    fs::write(&k1, [1u8; 32]).unwrap();
    fs::write(&k2, [2u8; 32]).unwrap();
    let with = |k: &Path| {
        Store::new(
            Some(dir.clone()),
            MasterKeyConfig {
                key_file: Some(k.into()),
                ..Default::default()
            },
        )
    };
    let a: Uuid = A.parse().unwrap();
    with(&k1).define(&def(A, false, "/a")).unwrap();
    with(&k1).set_value(&a, b"v").unwrap();
    assert!(
        !dir.join("master.key").exists(),
        "a configured key file must not generate one"
    );
    assert_eq!(with(&k1).get_value(&a).unwrap().as_bytes(), b"v");
    assert_eq!(
        with(&k2).get_value(&a).unwrap_err().kind(),
        ErrorKind::WrongKey
    );
    // the generated key is another key as well
    assert_eq!(
        store_at(&dir).get_value(&a).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // a short key file is refused with its size
    let short = t.path().join("short");
    fs::write(&short, b"tiny").unwrap();
    let e = with(&short).get_value(&a).unwrap_err();
    assert!(e.to_string().contains("holds 4 bytes"), "{e}");
}

#[test]
fn credential_and_passphrase_sources() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    let creds = t.path().join("creds");
    fs::create_dir(&creds).unwrap();
    fs::write(creds.join("vmcrypt-master-key"), [9u8; 40]).unwrap();
    let keyfile = t.path().join("kf");
    fs::write(&keyfile, [9u8; 40]).unwrap();
    let cred_store = Store::new(
        Some(dir.clone()),
        MasterKeyConfig {
            credentials_dir: Some(creds.clone()),
            ..Default::default()
        },
    );
    let a: Uuid = A.parse().unwrap();
    cred_store.define(&def(A, false, "/a")).unwrap();
    cred_store.set_value(&a, b"from-cred").unwrap();
    // the same bytes given as a key file are the same key
    let kf_store = Store::new(
        Some(dir.clone()),
        MasterKeyConfig {
            key_file: Some(keyfile),
            ..Default::default()
        },
    );
    assert_eq!(kf_store.get_value(&a).unwrap().as_bytes(), b"from-cred");
    // passphrase: right one reads, wrong one is refused
    let pass = t.path().join("pass");
    fs::write(&pass, b"correct horse\n").unwrap();
    let pstore = |p: &Path| {
        Store::new(
            Some(dir.clone()),
            MasterKeyConfig {
                passphrase_file: Some(p.into()),
                ..Default::default()
            },
        )
    };
    pstore(&pass).set_value(&a, b"from-pass").unwrap();
    assert_eq!(mode(&dir.join("master.salt")), 0o600);
    assert_eq!(
        pstore(&pass).get_value(&a).unwrap().as_bytes(),
        b"from-pass"
    );
    let wrong = t.path().join("wrong");
    fs::write(&wrong, b"battery staple\n").unwrap();
    assert_eq!(
        pstore(&wrong).get_value(&a).unwrap_err().kind(),
        ErrorKind::WrongKey
    );
    assert_eq!(
        kf_store.get_value(&a).unwrap_err().kind(),
        ErrorKind::WrongKey
    );
}

#[test]
fn leftover_temp_file_ignored() {
    let (_t, dir, s) = setup();
    let a: Uuid = A.parse().unwrap();
    s.define(&def(A, false, "/a")).unwrap();
    s.set_value(&a, b"old").unwrap();
    // what an interrupted set-value leaves: a half-written temp file beside the old value
    fs::write(dir.join(format!(".{A}.value.tmp.4242")), b"VMCSEAL1 half").unwrap();
    fs::write(dir.join(format!(".{A}.xml.tmp.4242")), b"<secret").unwrap();
    assert_eq!(s.get_value(&a).unwrap().as_bytes(), b"old");
    assert_eq!(s.list().unwrap().len(), 1);
    s.set_value(&a, b"new").unwrap();
    assert_eq!(s.get_value(&a).unwrap().as_bytes(), b"new");
}

#[test]
fn private_ephemeral_usage_rules() {
    let (_t, dir, s) = setup();
    let a: Uuid = A.parse().unwrap();
    s.define(&def(A, true, "/a")).unwrap();
    s.set_value(&a, b"p").unwrap();
    let e = s.get_value(&a).unwrap_err();
    assert!(e.to_string().contains("secret is private"), "{e}");
    assert_eq!(s.value_for_use(&a).unwrap().as_bytes(), b"p");
    let e = s.define(&def(A, false, "/a")).unwrap_err();
    assert!(e.to_string().contains("cannot change private flag"), "{e}");
    let e = s.define(&def(B, false, "/a")).unwrap_err();
    assert!(
        e.to_string().contains("already defined for use with /a"),
        "{e}"
    );
    let mut eph = def(B, false, "/b");
    eph.ephemeral = true;
    let e = s.define(&eph).unwrap_err();
    assert!(e.to_string().contains("ephemeral"), "{e}");
    assert!(!dir.join(format!("{B}.xml")).exists());
    // set-value of an undefined secret writes nothing
    let b: Uuid = B.parse().unwrap();
    assert_eq!(
        s.set_value(&b, b"x").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!dir.join(format!("{B}.value")).exists());
}

#[test]
fn open_store_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let e = store_at(&dir).define(&def(A, false, "/a")).unwrap_err();
    assert!(e.to_string().contains("chmod 700"), "{e}");
    assert!(!dir.join(format!("{A}.xml")).exists());
}
