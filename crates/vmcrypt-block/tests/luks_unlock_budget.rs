//! One unlock attempt has a KDF budget over all the key slots it tries
//! (`KdfLimits::max_unlock_cost`): a hostile header with many slots just under the
//! per-slot caps cannot make one wrong passphrase cost the caps times the slot count.
//! Slots past the budget are skipped and named in the error; a named slot is always
//! tried. The headers are made in memory, with small caps so that the tests run fast.
use std::sync::Arc;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, Volume};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;

const SLOTS: u32 = 8;

fn pass(i: u32) -> Vec<u8> {
    format!("slot-{i}").into_bytes()
}

/// A header of `params.version` in memory with `SLOTS` slots, slot i holding `pass(i)`.
fn header(params: CreateParams, size: usize) -> Arc<MemDriver> {
    let mem = Arc::new(MemDriver::new(vec![0u8; size]));
    let (mut vol, key) = Volume::create(mem.clone(), &params, &pass(0)).unwrap();
    for i in 1..SLOTS {
        vol.add_key(&key, &pass(i), Some(i), &params.keyslot)
            .unwrap();
    }
    Arc::new(MemDriver::new(mem.snapshot()))
}

/// LUKS1, every slot at 1000 PBKDF2 iterations (+1000 for the digest): 2000 a slot.
fn luks1() -> Arc<MemDriver> {
    let mut p = CreateParams::luks1(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap());
    p.keyslot.iterations = Some(1000);
    header(p, 4 << 20)
}

/// Caps that each LUKS1 slot fits (2000 iterations a slot is one cap).
fn luks1_caps() -> KdfLimits {
    KdfLimits {
        max_pbkdf2_iterations: 2000,
        ..KdfLimits::default()
    }
}

/// LUKS2, every slot Argon2id at 1024 KiB x 3 passes.
fn luks2() -> Arc<MemDriver> {
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Argon2id,
        iterations: Some(3),
        memory_kib: Some(1024),
        parallel: Some(1),
        ..Default::default()
    };
    p.keyslots_size = Some(4 << 20);
    p.data_offset = Some(8 << 20);
    header(p, (8 << 20) + 4096)
}

/// Caps that each LUKS2 slot fits, at 0.6 of the Argon2 cap (1024 x 5): 6 slots fit in
/// the default budget of 4; the digests' PBKDF2 is negligible against a u32::MAX cap.
fn luks2_caps() -> KdfLimits {
    KdfLimits {
        max_memory_kib: 1024,
        max_time: 5,
        max_pbkdf2_iterations: u32::MAX,
        ..KdfLimits::default()
    }
}

fn open(mem: &Arc<MemDriver>, limits: &KdfLimits) -> Volume {
    Volume::open(mem.clone(), false, limits).unwrap()
}

#[track_caller]
fn skipped(mem: &Arc<MemDriver>, limits: &KdfLimits, passphrase: &[u8], slots: &str) {
    let e = open(mem, limits).unlock(passphrase, None).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("key slot(s) {slots} were not tried")),
        "{msg}"
    );
    assert!(msg.contains("--max-unlock-cost"), "{msg}");
    assert!(msg.contains("--key-slot"), "{msg}");
}

/// With the budget raised to `cost`, slot `slot` opens and a wrong passphrase is
/// plainly wrong (every slot tried).
#[track_caller]
fn all_tried_with(mem: &Arc<MemDriver>, caps: KdfLimits, cost: u32, slot: u32) {
    let raised = KdfLimits {
        max_unlock_cost: cost,
        ..caps
    };
    assert_eq!(
        open(mem, &raised).unlock(&pass(slot), None).unwrap().slot,
        slot
    );
    let e = open(mem, &raised).unlock(b"wrong", None).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    assert_eq!(e.to_string(), "no key available with this passphrase");
}

#[test]
fn luks1_wrong_passphrase_stops_at_the_budget() {
    let mem = luks1();
    // 4 slots of 2000 iterations fill the default budget of 4 caps.
    skipped(&mem, &luks1_caps(), b"wrong", "4, 5, 6, 7");
    let tight = KdfLimits {
        max_unlock_cost: 2,
        ..luks1_caps()
    };
    skipped(&mem, &tight, b"wrong", "2, 3, 4, 5, 6, 7");
}

#[test]
fn luks1_slots_within_the_budget_or_named_still_open() {
    let mem = luks1();
    let u = open(&mem, &luks1_caps()).unlock(&pass(3), None).unwrap();
    assert_eq!(u.slot, 3);
    // Slot 6 is past the budget when every slot is tried, but not when named.
    skipped(&mem, &luks1_caps(), &pass(6), "4, 5, 6, 7");
    let u = open(&mem, &luks1_caps()).unlock(&pass(6), Some(6)).unwrap();
    assert_eq!(u.slot, 6);
    all_tried_with(&mem, luks1_caps(), 8, 6);
}

#[test]
fn luks1_default_limits_try_every_slot() {
    let mem = luks1();
    let e = open(&mem, &KdfLimits::default())
        .unlock(b"wrong", None)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    let u = open(&mem, &KdfLimits::default())
        .unlock(&pass(7), None)
        .unwrap();
    assert_eq!(u.slot, 7);
}

#[test]
fn luks2_wrong_passphrase_stops_at_the_budget() {
    let mem = luks2();
    skipped(&mem, &luks2_caps(), b"wrong", "6, 7");
    skipped(&mem, &luks2_caps(), &pass(7), "6, 7");
    let u = open(&mem, &luks2_caps()).unlock(&pass(7), Some(7)).unwrap();
    assert_eq!(u.slot, 7);
    let u = open(&mem, &luks2_caps()).unlock(&pass(5), None).unwrap();
    assert_eq!(u.slot, 5);
    all_tried_with(&mem, luks2_caps(), 5, 7);
}
