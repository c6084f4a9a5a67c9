//! Fault injection: every key-slot operation is interrupted after each of its writes in
//! turn; the image left behind must open with the old or the new key set, never neither.
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, Luks1Volume};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits as Limits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::ErrorKind;
use vmcrypt_format::luks2::Priority;

const KDF: KeyslotParams = KeyslotParams {
    kdf: KdfKind::Pbkdf2,
    hash: HashAlg::Sha256,
    iter_time_ms: 1,
    iterations: Some(1000),
    memory_kib: None,
    parallel: None,
    priority: Priority::Normal,
    in_place: false,
};
const KEYS: [&[u8]; 3] = [b"key-A", b"key-B", b"key-C"];

fn base_image() -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(vec![0u8; 3 << 20]));
    let params = CreateParams {
        keyslot: KDF,
        ..CreateParams::luks1(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap())
    };
    Luks1Volume::create(mem.clone(), &params, KEYS[0]).unwrap();
    mem.snapshot()
}

/// Which of KEYS open `image` (the header must also parse and validate).
fn key_set(image: Vec<u8>) -> Vec<bool> {
    let vol = Luks1Volume::open(Arc::new(MemDriver::new(image)), false, &Limits::default())
        .expect("interrupted image must still have a valid header");
    KEYS.iter().map(|k| vol.unlock(k, None).is_ok()).collect()
}

/// Run `op` on `start` with a write budget of 0, 1, 2, ... until it completes; after every
/// interruption the key set must be one of `allowed`. Returns the number of writes.
fn interrupt_everywhere(
    start: &[u8],
    allowed: &[Vec<bool>],
    op: &dyn Fn(&mut Luks1Volume) -> vmcrypt_error::Result<()>,
) -> usize {
    for budget in 0.. {
        let mem = Arc::new(MemDriver::new(start.to_vec()));
        let faulty: Arc<dyn BlockDriver> = Arc::new(FaultyDriver::new(mem.clone(), budget));
        let mut vol = Luks1Volume::open(faulty, false, &Limits::default()).unwrap();
        let res = op(&mut vol);
        let set = key_set(mem.snapshot());
        match res {
            Ok(()) => {
                assert_eq!(
                    &set,
                    allowed.last().unwrap(),
                    "completed op gave the wrong key set"
                );
                return budget;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Io, "unexpected error: {e}");
                assert!(
                    allowed.contains(&set),
                    "interrupted after {budget} writes: key set {set:?} not in {allowed:?}"
                );
            }
        }
    }
    unreachable!()
}

fn with_keys(image: Vec<u8>, add: &[usize]) -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(image));
    let mut vol = Luks1Volume::open(mem.clone(), false, &Limits::default()).unwrap();
    let vk = vol.unlock(KEYS[0], None).unwrap().volume_key;
    for &k in add {
        vol.add_key(&vk, KEYS[k], None, &KDF).unwrap();
    }
    mem.snapshot()
}

#[test]
fn add_key_is_crash_safe() {
    let start = base_image();
    let old = vec![true, false, false];
    let new = vec![true, true, false];
    let writes = interrupt_everywhere(&start, &[old, new], &|vol| {
        let vk = vol.unlock(KEYS[0], None)?.volume_key;
        vol.add_key(&vk, KEYS[1], None, &KDF).map(|_| ())
    });
    assert!(
        writes >= 2,
        "add-key should write material then header ({writes} writes)"
    );
}

#[test]
fn kill_slot_is_crash_safe() {
    let start = with_keys(base_image(), &[1]);
    let old = vec![true, true, false];
    let new = vec![true, false, false];
    interrupt_everywhere(&start, &[old, new], &|vol| vol.kill_slot(1, false));
}

#[test]
fn remove_key_is_crash_safe() {
    let start = with_keys(base_image(), &[1]);
    let old = vec![true, true, false];
    let new = vec![false, true, false];
    interrupt_everywhere(&start, &[old, new], &|vol| {
        vol.remove_key(KEYS[0], false).map(|_| ())
    });
}

#[test]
fn change_key_is_crash_safe() {
    let start = base_image();
    let old = vec![true, false, false];
    let both = vec![true, false, true];
    let new = vec![false, false, true];
    interrupt_everywhere(&start, &[old, both, new], &|vol| {
        vol.change_key(KEYS[0], KEYS[2], None, &KDF).map(|_| ())
    });
}

#[test]
fn refusals_write_nothing() {
    let start = base_image();
    let mem = Arc::new(MemDriver::new(start.clone()));
    let mut vol = Luks1Volume::open(mem.clone(), false, &Limits::default()).unwrap();
    assert_eq!(vol.kill_slot(0, false).unwrap_err().kind(), ErrorKind::Busy);
    assert_eq!(
        vol.kill_slot(3, true).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        vol.remove_key(b"nope", true).unwrap_err().kind(),
        ErrorKind::WrongKey
    );
    assert_eq!(
        vol.change_key(b"nope", b"x", None, &KDF)
            .unwrap_err()
            .kind(),
        ErrorKind::WrongKey
    );
    let vk = vol.unlock(KEYS[0], None).unwrap().volume_key;
    assert_eq!(
        vol.add_key(&vk, b"x", Some(0), &KDF).unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(
        vol.add_key(&vk, b"x", Some(8), &KDF).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        mem.snapshot(),
        start,
        "a refused operation changed the image"
    );
}
