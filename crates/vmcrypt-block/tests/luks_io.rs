//! The luks node's data path: random unaligned writes mirrored into a plain model read
//! back identically, through a fresh open too; out-of-range requests are refused.
mod common;
use common::Rng;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, Luks1Volume, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::ErrorKind;
use vmcrypt_format::luks1::Layout;

const SIZE: usize = 1 << 20;

fn new_image(spec: CipherSpec) -> (Arc<MemDriver>, u64) {
    let mem = Arc::new(MemDriver::new(Vec::new()));
    let params = CreateParams {
        layout: Layout::Qemu,
        keyslot: KeyslotParams {
            kdf: KdfKind::Pbkdf2,
            hash: HashAlg::Sha256,
            iter_time_ms: 1,
            iterations: Some(1000),
            ..KeyslotParams::default()
        },
        ..CreateParams::luks1(spec)
    };
    let (vol, _) = Luks1Volume::create(mem.clone(), &params, b"pw").unwrap();
    let payload = vol.payload_offset();
    mem.resize(payload + SIZE as u64).unwrap();
    (mem, payload)
}

fn open(mem: &Arc<MemDriver>) -> LuksDriver {
    LuksDriver::open(mem.clone(), None, Some(b"pw"), None, &KdfLimits::default()).unwrap()
}

#[test]
fn random_unaligned_writes_match_a_model() {
    for (name, mode, kb) in [
        ("aes", "xts-plain64", 64),
        ("aes", "cbc-essiv:sha256", 16),
        ("cast5", "cbc-plain64", 16),
    ] {
        let (mem, payload) = new_image(CipherSpec::from_luks(name, mode, kb).unwrap());
        let d = open(&mem);
        assert_eq!(d.size(), SIZE as u64);
        let mut model = vec![0u8; SIZE];
        d.write_at(&model, 0).unwrap();
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for i in 0..300 {
            let len = (rng.next() % 20000) as usize + 1;
            let off = (rng.next() as usize) % (SIZE - len);
            let fill: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            d.write_at(&fill, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&fill);
            if i % 50 == 0 {
                let mut back = vec![0u8; len + 3];
                let start = off.saturating_sub(3).min(SIZE - back.len());
                d.read_at(&mut back, start as u64).unwrap();
                assert_eq!(
                    back,
                    model[start..start + back.len()],
                    "{name}-{mode} read after write {i}"
                );
            }
        }
        let fresh = open(&mem);
        let mut all = vec![0u8; SIZE];
        fresh.read_at(&mut all, 0).unwrap();
        assert!(
            all == model,
            "{name}-{mode}: reopened image differs from the model"
        );
        // The payload on disk is ciphertext, not the plaintext.
        let raw = mem.snapshot();
        assert_ne!(
            &raw[payload as usize..payload as usize + 4096],
            &model[..4096]
        );
    }
}

#[test]
fn out_of_range_and_missing_key() {
    let (mem, _) = new_image(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap());
    let d = open(&mem);
    let mut b = [0u8; 512];
    assert_eq!(
        d.read_at(&mut b, SIZE as u64).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        d.write_at(&b, SIZE as u64 - 100).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        d.read_at(&mut b, u64::MAX - 10).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    let before = mem.snapshot();
    let meta = LuksDriver::open(mem.clone(), None, None, None, &KdfLimits::default()).unwrap();
    assert_eq!(
        meta.read_at(&mut b, 0).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(meta.write_at(&b, 0).unwrap_err().kind(), ErrorKind::Usage);
    assert_eq!(mem.snapshot(), before);
}

#[test]
fn large_requests_split_over_threads_decrypt_like_small_ones() {
    let (mem, _) = new_image(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap());
    let d = open(&mem);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    d.write_at(&data, 0).unwrap();
    let mut small = vec![0u8; SIZE];
    for (i, c) in small.chunks_mut(4096).enumerate() {
        d.read_at(c, (i * 4096) as u64).unwrap();
    }
    assert!(small == data);
}

#[test]
fn in_place_writes_store_the_same_ciphertext_as_copying_writes() {
    let spec = CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap();
    let (copying, _) = new_image(spec);
    // Same header and key: the in-place image starts as a copy of the other.
    let in_place = Arc::new(MemDriver::new(copying.snapshot()));
    let (a, b) = (open(&copying), open(&in_place));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Large aligned, small aligned, unaligned, and empty writes.
    for (off, len) in [
        (0, SIZE),
        (4096, 512),
        (700, 3000),
        (SIZE - 513, 513),
        (512, 0),
    ] {
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        a.write_at(&data, off as u64).unwrap();
        let mut scratch = data.clone();
        b.write_at_mut(&mut scratch, off as u64).unwrap();
        assert!(
            copying.snapshot() == in_place.snapshot(),
            "write {off}+{len}"
        );
        let mut back = vec![0u8; len];
        b.read_at(&mut back, off as u64).unwrap();
        assert!(back == data, "read back {off}+{len}");
    }
}
