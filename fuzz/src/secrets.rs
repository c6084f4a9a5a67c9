//! Fuzz entry point `secrets_files` for `vmcrypt-secrets`: what it reads from disk or
//! from a user. The first input byte picks what the rest is:
//!
//! 0. a libvirt `<secret>` document, parsed; what parses must print (`dumpxml`) into a
//!    document that parses to the same definition;
//! 1. a store's `UUID.xml` file, beside a valid sealed value: list, definition,
//!    dumpxml and the value by UUID and by usage;
//! 2. a store's `UUID.value` file (the sealed at-rest format), beside a valid
//!    definition: the value by UUID (plain and for use) and by usage; a value that
//!    opens must be the one stored, since nothing but the master key can seal one;
//! 3. the small text parsers: usage references, UUIDs, base64 values.
//!
//! The store is a real one in a temporary directory (with a master key file), made once
//! per process; each input rewrites its two files.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/secrets_files.rs`) and by
//! `crates/vmcrypt-secrets/tests/fuzz_replay.rs` (included with `#[path]`).
use crate::replay::Target;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use vmcrypt_secrets::{MasterKeyConfig, SecretDef, Store, Usage, Uuid};

/// Every target in this file, by name (the corpus directory names).
pub const TARGETS: &[Target] = &[("secrets_files", secrets_files)];

/// The stored secret.
const UUID: &str = "9c5f4ab4-4d5b-4d8e-9a4e-0a8f1c2b3d4e";
const XML: &str = "<secret ephemeral='no' private='no'>\n  \
    <uuid>9c5f4ab4-4d5b-4d8e-9a4e-0a8f1c2b3d4e</uuid>\n  \
    <usage type='volume'>\n    <volume>/vms/a.img</volume>\n  </usage>\n</secret>\n";
const VALUE: &[u8] = b"hunter2";
const MASTER: [u8; 32] = [0x42; 32];

/// The store, its directory (kept alive), and the valid sealed value.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Mutex<Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key_file = dir.path().join("master.key");
        std::fs::write(&key_file, MASTER).expect("writing the master key file");
        let master = MasterKeyConfig {
            key_file: Some(key_file),
            ..Default::default()
        };
        let store = Store::new(Some(dir.path().join("store")), master);
        let def = SecretDef::parse(XML).expect("the fixture's definition parses");
        store.define(&def).expect("defining the fixture's secret");
        store
            .set_value(&def.uuid, VALUE)
            .expect("storing its value");
        let sealed = std::fs::read(value_path(&store)).expect("reading the sealed value");
        Mutex::new(Fixture {
            _dir: dir,
            store,
            sealed,
        })
    })
}

fn value_path(store: &Store) -> PathBuf {
    store.dir().join(format!("{UUID}.value"))
}

/// See the module documentation.
pub fn secrets_files(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => xml(rest),
        1 => store_files(Some(rest), None),
        2 => store_files(None, Some(rest)),
        _ => text(rest),
    }
}

fn xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(def) = SecretDef::parse(text) else {
        return;
    };
    let again = SecretDef::parse(&def.to_xml()).expect("a printed definition parses");
    assert_eq!(again, def, "a secret definition changed in a round trip");
}

/// Write the store's files (the fixture's where `None`) and read them every way.
fn store_files(xml: Option<&[u8]>, value: Option<&[u8]>) {
    let f = fixture().lock().expect("fixture lock");
    let store = &f.store;
    let uuid: Uuid = UUID.parse().expect("the fixture's UUID");
    let xml_path = store.dir().join(format!("{UUID}.xml"));
    std::fs::write(&xml_path, xml.unwrap_or(XML.as_bytes())).expect("writing the definition");
    let sealed = value.unwrap_or(&f.sealed);
    std::fs::write(value_path(store), sealed).expect("writing the value");
    let _ = store.list();
    let _ = store.definition(&uuid);
    let _ = store.dumpxml(&uuid);
    let got = [
        store.get_value(&uuid),
        store.value_for_use(&uuid),
        store.value_for_usage(&Usage::parse_ref("volume:/vms/a.img").expect("a usage")),
    ];
    for v in got.iter().flatten() {
        assert!(
            v.as_bytes() == VALUE,
            "a sealed value opened to something else"
        );
    }
}

fn text(data: &[u8]) {
    let _ = vmcrypt_secrets::base64_decode(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = Usage::parse_ref(s) {
        let _ = (u.display(), u.kind(), u.id());
    }
    if let Ok(u) = s.parse::<Uuid>() {
        assert_eq!(
            u.to_string().parse::<Uuid>().ok(),
            Some(u),
            "a UUID round trip"
        );
    }
}
