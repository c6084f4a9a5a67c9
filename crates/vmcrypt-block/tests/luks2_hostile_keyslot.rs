//! A LUKS2 keyslot whose area cipher or key sizes are absurd is refused before any key
//! is derived or any buffer is sized from it (a hostile `area.key_size` of 2^31 made
//! an unlock allocate 2 GiB and run PBKDF2 for that many output bytes).
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;
use vmcrypt_format::luks2::Metadata;

const PASS: &[u8] = b"hostile";

/// A small LUKS2 image in memory with one PBKDF2 keyslot (id 0).
fn image() -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(vec![0u8; (4 << 20) + 4096]));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    p.keyslots_size = Some(1 << 20);
    p.data_offset = Some(4 << 20);
    Luks2Volume::create(mem.clone(), &p, PASS).unwrap();
    mem.snapshot()
}

/// `image` with keyslot 0's JSON changed by `edit` (checksums recomputed).
fn edited(edit: impl Fn(&mut serde_json::Value)) -> Arc<MemDriver> {
    let mem = Arc::new(MemDriver::new(image()));
    let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
    let mut next = vol.header().clone();
    let mut v = next.metadata.to_value();
    edit(&mut v["keyslots"]["0"]);
    next.metadata = Metadata::from_value(v).unwrap();
    vol.write_header(next).unwrap();
    Arc::new(MemDriver::new(mem.snapshot()))
}

#[track_caller]
fn refused_quickly(mem: Arc<MemDriver>, what: &str) {
    let start = Instant::now();
    let r = Luks2Volume::open(mem, false, &KdfLimits::default())
        .and_then(|v| v.unlock(PASS, None).map(|_| ()));
    let e = r.expect_err(what);
    assert!(
        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
        "{what}: {e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{what}: took {:?} before refusing",
        start.elapsed()
    );
}

#[test]
fn absurd_area_key_size_is_refused_before_derivation() {
    let mem = edited(|k| k["area"]["key_size"] = serde_json::json!(1u64 << 31));
    refused_quickly(mem, "area.key_size 2^31");
}

#[test]
fn absurd_volume_key_size_is_refused_before_allocation() {
    let mem = edited(|k| k["key_size"] = serde_json::json!(1u64 << 31));
    refused_quickly(mem, "key_size 2^31");
}

#[test]
fn unknown_area_cipher_is_refused_before_derivation() {
    let mem = edited(|k| k["area"]["encryption"] = serde_json::json!("nosuch-xts-plain64"));
    refused_quickly(mem, "area cipher nosuch");
}

#[test]
fn the_unedited_image_unlocks() {
    let mem = edited(|_| {});
    let v = Luks2Volume::open(mem, false, &KdfLimits::default()).unwrap();
    assert_eq!(v.unlock(PASS, None).unwrap().slot, 0);
}
