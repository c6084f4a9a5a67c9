//! A LUKS2 keyslot vmcrypt cannot use (a KDF it does not know, such as the pre-release
//! "argon2" of cryptsetup's test headers, or an unknown area cipher) must not stop the
//! header from loading, dumping or unlocking through the other keyslots: only that slot
//! fails, with a message naming it and the reason (issue 10 item 3).
use std::sync::Arc;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;
use vmcrypt_format::luks2::{Kdf, KeyslotKind, Metadata};

const PASS0: &[u8] = b"slot zero";
const PASS1: &[u8] = b"slot one";

fn fast() -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    }
}

/// A LUKS2 image with PBKDF2 keyslots 0 (`PASS0`) and 1 (`PASS1`), keyslot 0's JSON
/// then changed by `edit` (checksums recomputed).
fn image(edit: impl Fn(&mut serde_json::Value)) -> Luks2Volume {
    let mem = Arc::new(MemDriver::new(vec![0u8; (4 << 20) + 4096]));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.keyslot = fast();
    p.keyslots_size = Some(1 << 20);
    p.data_offset = Some(4 << 20);
    let (mut vol, key) = Luks2Volume::create(mem.clone(), &p, PASS0).unwrap();
    vol.add_key(&key, PASS1, Some(1), &fast()).unwrap();
    let mut next = vol.header().clone();
    let mut v = next.metadata.to_value();
    edit(&mut v["keyslots"]["0"]);
    next.metadata = Metadata::from_value(v).unwrap();
    vol.write_header(next).unwrap();
    let mem = Arc::new(MemDriver::new(mem.snapshot()));
    Luks2Volume::open(mem, false, &KdfLimits::default()).expect("the header loads")
}

/// Keyslot 0 with cryptsetup's pre-release KDF name and Argon2-style parameters.
fn argon2_kdf(k: &mut serde_json::Value) {
    let salt = k["kdf"]["salt"].clone();
    k["kdf"] = serde_json::json!({"type": "argon2", "time": 4, "memory": 1024, "cpus": 1,
                                  "salt": salt});
}

#[test]
fn unknown_kdf_fails_only_its_keyslot() {
    let vol = image(argon2_kdf);
    let slots = vol.header().metadata.keyslots().unwrap();
    let KeyslotKind::Luks2(k0) = &slots[0].kind else {
        panic!("keyslot 0 is not luks2")
    };
    assert!(matches!(&k0.kdf, Kdf::Unsupported { kind, .. } if kind == "argon2"));

    // The other keyslot still unlocks, by search and by name.
    assert_eq!(vol.unlock(PASS1, None).unwrap().slot, 1);
    assert_eq!(vol.unlock(PASS1, Some(1)).unwrap().slot, 1);

    // Slot 0's passphrase: no key, and the message says slot 0 could not be tried and why.
    let e = vol.unlock(PASS0, None).err().expect("must fail");
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("keyslot 0: unsupported KDF type \"argon2\""),
        "{m}"
    );
    // Named: the slot and the reason.
    let e = vol.unlock(PASS0, Some(0)).err().expect("must fail");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert_eq!(
        e.to_string(),
        "LUKS2 keyslot 0: unsupported KDF type \"argon2\" (vmcrypt knows pbkdf2, argon2i \
         and argon2id)"
    );

    // The dump shows it as cryptsetup does (type, costs, salt) and says it is unsupported.
    let text = vmcrypt_block::drivers::luks::Volume::from(vol)
        .dump_text("img", None)
        .unwrap();
    assert!(
        text.contains("\tPBKDF:      argon2 (not supported by vmcrypt)\n\tTime cost:  4\n\tMemory:     1024\n\tThreads:    1\n\tSalt:"),
        "{text}"
    );
}

#[test]
fn only_unusable_keyslots_is_unsupported_not_a_wrong_key() {
    let mut vol = image(argon2_kdf);
    vol.kill_slot(1, false).unwrap();
    let e = vol.unlock(PASS0, None).err().expect("must fail");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string()
            .starts_with("no LUKS2 keyslot can be used: keyslot 0: unsupported KDF type"),
        "{e}"
    );
}

#[test]
fn unknown_area_cipher_fails_only_its_keyslot() {
    let vol = image(|k| k["area"]["encryption"] = serde_json::json!("nosuch-xts-plain64"));
    assert_eq!(vol.unlock(PASS1, None).unwrap().slot, 1);
    let e = vol.unlock(PASS0, None).err().expect("must fail");
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    assert!(
        e.to_string()
            .contains("keyslot 0: unsupported cipher 'nosuch'"),
        "{e}"
    );
}
