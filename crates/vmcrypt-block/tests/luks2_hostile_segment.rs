//! A LUKS2 data segment whose sector size the metadata validator accepts (a multiple
//! of 512, as cryptsetup's) but that no data path can serve (not a power of two, or
//! above 4096) is refused at open with an error naming it, and nothing is written.
//! Found by the `luks_driver` fuzz target: such a node opened, then failed every read.
mod common;
use common::with_edited_metadata;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;

const PASS: &[u8] = b"pw";

/// A small LUKS2 image with one PBKDF2 key slot and 64 KiB of data.
fn image() -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(Vec::new()));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 32).unwrap());
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    p.keyslots_size = Some(256 << 10);
    p.data_offset = Some(288 << 10);
    Luks2Volume::create(mem.clone(), &p, PASS).unwrap();
    mem.resize((288 + 64) << 10).unwrap();
    mem.snapshot()
}

#[test]
fn unservable_sector_sizes_are_refused_at_open() {
    let good = image();
    for sector in [1536u32, 8192, 27648] {
        let img =
            with_edited_metadata(&good, |v| v["segments"]["0"]["sector_size"] = sector.into());
        let mem = Arc::new(MemDriver::new(img.clone()));
        for pass in [None, Some(PASS)] {
            let e = LuksDriver::open(mem.clone(), None, pass, None, &KdfLimits::default())
                .err()
                .unwrap_or_else(|| panic!("sector size {sector} opened"));
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("data segment 0 has sector size {sector}")),
                "{msg}"
            );
        }
        assert!(mem.snapshot() == img, "a refused open wrote");
    }
    let d = LuksDriver::open(
        Arc::new(MemDriver::new(good)),
        None,
        Some(PASS),
        None,
        &KdfLimits::default(),
    )
    .unwrap();
    assert_eq!(d.size(), 64 << 10);
}
