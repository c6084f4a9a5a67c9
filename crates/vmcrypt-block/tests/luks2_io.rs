//! The LUKS2 data path for every sector size: random unaligned writes mirrored into a
//! plain model read back identically (also after reopening), and the payload on disk
//! decrypts independently with the volume key, sector by sector, with IV sector =
//! iv_tweak + byte offset / 512. Fixed-size segments, a nonzero iv_tweak, out-of-range
//! requests and unknown requirements (read-only data) are covered too.
mod common;
use common::Rng;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::LuksDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, SecretBytes, SectorCipher};
use vmcrypt_error::{ErrorKind, Reason};
use vmcrypt_format::luks2::Metadata;

const SIZE: usize = 1 << 20;
const DATA_OFFSET: u64 = 1 << 20;
const PW: &[u8] = b"pw";
const SECTOR_SIZES: [u32; 4] = [512, 1024, 2048, 4096];

fn spec() -> CipherSpec {
    CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap()
}

/// A LUKS2 image with `sector_size` data sectors and SIZE bytes of payload; returns the
/// device and the volume key.
fn new_image(sector_size: u32) -> (Arc<MemDriver>, SecretBytes) {
    let mem = Arc::new(MemDriver::new(Vec::new()));
    let mut p = CreateParams::luks2(spec());
    p.sector_size = sector_size;
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    p.keyslots_size = Some(256 << 10);
    p.data_offset = Some(DATA_OFFSET);
    let (vol, vk) = Luks2Volume::create(mem.clone(), &p, PW).unwrap();
    let seg = vol.data_segment().unwrap();
    assert_eq!(seg.offset, DATA_OFFSET);
    assert_eq!(seg.sector_size, sector_size);
    mem.resize(DATA_OFFSET + SIZE as u64).unwrap();
    (mem, vk)
}

fn open(mem: &Arc<MemDriver>) -> LuksDriver {
    LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap()
}

/// Fill `d` and `model` with the same data, then mirror `rounds` random unaligned
/// writes (some inside one sector, some across many), checking reads as it goes.
fn random_writes(d: &LuksDriver, model: &mut [u8], seed: u64, rounds: usize, what: &str) {
    let size = model.len();
    let init: Vec<u8> = (0..size).map(|i| (i * 13 % 253) as u8).collect();
    d.write_at(&init, 0).unwrap();
    model.copy_from_slice(&init);
    let mut rng = Rng(seed);
    for i in 0..rounds {
        let max = if i % 3 == 0 { 700 } else { 20_000 };
        let len = (rng.next() % max) as usize + 1;
        let off = (rng.next() as usize) % (size - len);
        let fill: Vec<u8> = (0..len).map(|j| (i * 7 + j * 3) as u8).collect();
        d.write_at(&fill, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&fill);
        if i % 25 == 0 {
            let mut back = vec![0u8; len + 5];
            let start = off.saturating_sub(3).min(size - back.len());
            d.read_at(&mut back, start as u64).unwrap();
            assert!(
                back == model[start..start + back.len()],
                "{what}: read after write {i} differs"
            );
        }
    }
}

/// Decrypt the raw payload at `offset` of `raw` with `vk`, sector by sector, IV sector
/// `iv_tweak + byte offset / 512`, independently of the luks driver.
fn decrypt_payload(
    raw: &[u8],
    vk: &SecretBytes,
    sector: u32,
    iv_tweak: u64,
    len: usize,
) -> Vec<u8> {
    let cipher = SectorCipher::new(&spec(), vk.as_bytes()).unwrap();
    let mut out = raw[DATA_OFFSET as usize..DATA_OFFSET as usize + len].to_vec();
    for (i, s) in out.chunks_mut(sector as usize).enumerate() {
        let byte = (i * sector as usize) as u64;
        cipher
            .decrypt(iv_tweak + byte / 512, sector as usize, s)
            .unwrap();
    }
    out
}

#[test]
fn random_unaligned_writes_match_a_model_for_every_sector_size() {
    for ss in SECTOR_SIZES {
        let (mem, vk) = new_image(ss);
        let d = open(&mem);
        assert_eq!(d.sector_size(), u64::from(ss));
        assert_eq!(d.size(), SIZE as u64);
        let mut model = vec![0u8; SIZE];
        random_writes(
            &d,
            &mut model,
            0x9e37_79b9_7f4a_7c15 ^ u64::from(ss),
            300,
            &format!("{ss}"),
        );
        let fresh = open(&mem);
        let mut all = vec![0u8; SIZE];
        fresh.read_at(&mut all, 0).unwrap();
        assert!(all == model, "sector size {ss}: reopened image differs");
        let plain = decrypt_payload(&mem.snapshot(), &vk, ss, 0, SIZE);
        assert!(
            plain == model,
            "sector size {ss}: the payload does not decrypt independently to the model"
        );
        // Ciphertext on disk, not plaintext, and the header area was left alone.
        let raw = mem.snapshot();
        assert_ne!(raw[DATA_OFFSET as usize..][..4096], model[..4096]);
        assert!(Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).is_ok());
    }
}

#[test]
fn sector_granularity_differs_between_sector_sizes() {
    // A 4096-byte sector is one XTS unit: decrypted as 512-byte sectors, only its first
    // 512 bytes come out right (so the driver really used 4096-byte sectors).
    let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
    let mut raws = Vec::new();
    for ss in [512, 4096] {
        let (mem, vk) = new_image(ss);
        open(&mem).write_at(&data, 0).unwrap();
        raws.push((mem.snapshot()[DATA_OFFSET as usize..][..8192].to_vec(), vk));
    }
    let mut as512 = raws[0].0.clone();
    SectorCipher::new(&spec(), raws[0].1.as_bytes())
        .unwrap()
        .decrypt(0, 512, &mut as512)
        .unwrap();
    assert_eq!(as512, data, "512-byte sectors");
    let other = SectorCipher::new(&spec(), raws[1].1.as_bytes()).unwrap();
    let mut as512 = raws[1].0.clone();
    // Decrypting a 4096-sector payload as 512-byte sectors only gets sector 0 right.
    other.decrypt(0, 512, &mut as512).unwrap();
    assert_eq!(as512[..512], data[..512]);
    assert_ne!(as512[512..1024], data[512..1024]);
}

/// Rewrite the data segment of the image on `mem` with `edit`.
fn edit_segment(mem: &Arc<MemDriver>, edit: impl Fn(&mut serde_json::Value)) {
    let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
    let mut next = vol.header().clone();
    let mut v = next.metadata.to_value();
    edit(&mut v["segments"]["0"]);
    next.metadata = Metadata::from_value(v).unwrap();
    vol.write_header(next).unwrap();
}

#[test]
fn fixed_size_segment_with_iv_tweak() {
    const FIXED: u64 = 512 << 10;
    const TWEAK: u64 = 123_456;
    for ss in SECTOR_SIZES {
        let (mem, vk) = new_image(ss);
        edit_segment(&mem, |s| {
            s["size"] = FIXED.to_string().into();
            s["iv_tweak"] = TWEAK.to_string().into();
        });
        let d = open(&mem);
        assert_eq!(d.size(), FIXED, "sector size {ss}: fixed segment size");
        let mut model = vec![0u8; FIXED as usize];
        random_writes(
            &d,
            &mut model,
            77 + u64::from(ss),
            100,
            &format!("fixed {ss}"),
        );
        let plain = decrypt_payload(&mem.snapshot(), &vk, ss, TWEAK, FIXED as usize);
        assert!(
            plain == model,
            "sector size {ss}: iv_tweak not applied as 512-byte units"
        );
        let raw = mem.snapshot();
        assert!(
            raw[(DATA_OFFSET + FIXED) as usize..]
                .iter()
                .all(|&b| b == 0),
            "wrote past the fixed segment"
        );
        let mut b = vec![0u8; ss as usize];
        assert_eq!(
            d.read_at(&mut b, FIXED).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            d.write_at(&b, FIXED - 1).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            d.resize(2 * FIXED).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        // A file shorter than the segment: only whole sectors that exist are exposed.
        mem.resize(DATA_OFFSET + FIXED / 2 + 100).unwrap();
        assert_eq!(open(&mem).size(), FIXED / 2);
    }
}

#[test]
fn dynamic_size_rounds_down_to_whole_sectors_and_resizes_in_sectors() {
    for ss in SECTOR_SIZES {
        let (mem, _) = new_image(ss);
        mem.resize(DATA_OFFSET + SIZE as u64 + 511).unwrap();
        let d = open(&mem);
        assert_eq!(d.size(), SIZE as u64);
        if ss > 512 {
            assert_eq!(
                d.resize(SIZE as u64 + 512).unwrap_err().kind(),
                ErrorKind::Usage
            );
        }
        d.resize(SIZE as u64 + u64::from(ss)).unwrap();
        assert_eq!(d.size(), SIZE as u64 + u64::from(ss));
    }
}

#[test]
fn out_of_range_requests_are_refused() {
    for ss in SECTOR_SIZES {
        let (mem, _) = new_image(ss);
        let d = open(&mem);
        let before = mem.snapshot();
        let mut b = [0u8; 512];
        let kind = |r: vmcrypt_error::Result<()>| r.unwrap_err().kind();
        assert_eq!(kind(d.read_at(&mut b, SIZE as u64)), ErrorKind::OutOfRange);
        assert_eq!(
            kind(d.read_at(&mut b, SIZE as u64 - 1)),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            kind(d.write_at(&b, SIZE as u64 - 100)),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            kind(d.read_at(&mut b, u64::MAX - 10)),
            ErrorKind::OutOfRange
        );
        assert_eq!(kind(d.write_at(&b, u64::MAX - 10)), ErrorKind::OutOfRange);
        assert!(
            mem.snapshot() == before,
            "a refused request changed the image"
        );
        // The last byte is addressable.
        d.write_at(&[7], SIZE as u64 - 1).unwrap();
        let mut one = [0u8];
        d.read_at(&mut one, SIZE as u64 - 1).unwrap();
        assert_eq!(one, [7]);
    }
}

#[test]
fn unknown_requirements_make_the_data_read_only() {
    for ss in [512, 4096] {
        let (mem, _) = new_image(ss);
        let mut model = vec![0u8; SIZE];
        random_writes(&open(&mem), &mut model, 5, 20, "before");
        let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
        let mut next = vol.header().clone();
        let mut v = next.metadata.to_value();
        v["config"]["requirements"] = serde_json::json!({ "mandatory": ["vmcrypt-test-future"] });
        next.metadata = Metadata::from_value(v).unwrap();
        vol.write_header(next).unwrap();
        let before = mem.snapshot();
        let d = open(&mem);
        assert!(d.is_read_only());
        let mut all = vec![0u8; SIZE];
        d.read_at(&mut all, 0).unwrap();
        assert!(
            all == model,
            "sector size {ss}: data unreadable with requirements"
        );
        for (off, len) in [(0, 4096), (100, 10)] {
            assert_eq!(
                d.write_at(&vec![1u8; len], off).unwrap_err().kind(),
                ErrorKind::ReadOnly
            );
        }
        assert!(mem.snapshot() == before, "a read-only volume was written");
    }
}

#[test]
fn reencryption_requirement_refuses_data_access() {
    let (mem, _) = new_image(512);
    let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
    let mut next = vol.header().clone();
    let mut v = next.metadata.to_value();
    v["config"]["requirements"] = serde_json::json!({ "mandatory": ["online-reencrypt-v2"] });
    next.metadata = Metadata::from_value(v).unwrap();
    vol.write_header(next).unwrap();
    let err = LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[test]
fn large_requests_split_over_threads_decrypt_like_small_ones() {
    for ss in [1024, 4096] {
        let (mem, _) = new_image(ss);
        let d = open(&mem);
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
        d.write_at(&data, 0).unwrap();
        let mut small = vec![0u8; SIZE];
        for (i, c) in small.chunks_mut(ss as usize).enumerate() {
            d.read_at(c, (i * ss as usize) as u64).unwrap();
        }
        assert!(small == data, "sector size {ss}");
        // Written sector by sector, read in one piece.
        let rev: Vec<u8> = data.iter().rev().copied().collect();
        for (i, c) in rev.chunks(ss as usize).enumerate() {
            d.write_at(c, (i * ss as usize) as u64).unwrap();
        }
        let mut all = vec![0u8; SIZE];
        d.read_at(&mut all, 0).unwrap();
        assert!(all == rev, "sector size {ss}");
    }
}

/// A file node that, once armed, pauses the first read at `at` (the read half of a
/// read-modify-write) until another writer reports done or `patience` runs out.
struct PausingFile {
    inner: Arc<MemDriver>,
    at: u64,
    armed: std::sync::atomic::AtomicBool,
    paused: std::sync::atomic::AtomicBool,
    other_done: std::sync::atomic::AtomicBool,
}

impl BlockDriver for PausingFile {
    fn driver_name(&self) -> &'static str {
        "pausing"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmcrypt_error::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.inner.read_at(buf, offset)?;
        if offset == self.at && self.armed.swap(false, SeqCst) {
            self.paused.store(true, SeqCst);
            let t = std::time::Instant::now();
            while !self.other_done.load(SeqCst) && t.elapsed().as_millis() < 300 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> vmcrypt_error::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> vmcrypt_error::Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

#[test]
fn a_whole_sector_write_during_a_read_modify_write_is_not_lost() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    for ss in [512usize, 4096] {
        let (mem, _) = new_image(ss as u32);
        let sector = 3 * ss as u64;
        let file = Arc::new(PausingFile {
            inner: mem.clone(),
            at: DATA_OFFSET + sector,
            armed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            other_done: AtomicBool::new(false),
        });
        let d =
            LuksDriver::open(file.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap();
        d.write_at(&vec![0x11; ss], sector).unwrap();
        file.armed.store(true, SeqCst);
        let whole = vec![0x22u8; ss];
        std::thread::scope(|s| {
            // A: 10 bytes in the middle of the sector (read-modify-write).
            let a = s.spawn(|| d.write_at(&[0x33; 10], sector + 100).unwrap());
            while !file.paused.load(SeqCst) {
                std::thread::yield_now();
            }
            // B: the whole sector, while A holds the old contents.
            d.write_at(&whole, sector).unwrap();
            file.other_done.store(true, SeqCst);
            a.join().unwrap();
        });
        let mut got = vec![0u8; ss];
        d.read_at(&mut got, sector).unwrap();
        let mut b_then_a = whole.clone();
        b_then_a[100..110].fill(0x33);
        assert!(
            got == whole || got == b_then_a,
            "sector size {ss}: a concurrent write was lost (old bytes came back: {:?})",
            &got[..4]
        );
    }
}

#[test]
fn a_device_without_luks_magic_is_not_a_luks_device() {
    let mem = Arc::new(MemDriver::new(vec![0u8; SIZE]));
    let open = vmcrypt_block::drivers::luks::Volume::open(mem, false, &KdfLimits::default());
    let e = open.err().unwrap();
    assert_eq!(
        (e.kind(), e.reason()),
        (ErrorKind::Corrupt, Some(Reason::BadMagic))
    );
    assert_eq!(e.message(), "not a LUKS device (no LUKS header found)");
}
