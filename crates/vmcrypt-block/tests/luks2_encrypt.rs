//! Encryption in place (`luks reencrypt --encrypt`, cryptsetup's LUKS2 format),
//! interrupted at every write it makes (whole, and torn in the middle): with
//! `--reduce-device-size` (header, key material, data and final wipe all on the one
//! device) and with a detached header (every metadata write faulted), 512- and
//! 4096-byte sectors. Once the first header is on the device the image must load and
//! both vmcrypt and `cryptsetup reencrypt --resume-only` must finish it to a header
//! without requirements whose data decrypts to the original plaintext; before that the
//! plaintext is still whole (in place, or its first bytes in the moved copy).
mod common;
use common::Rng;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::reencrypt::ResilienceChoice;
use vmcrypt_block::drivers::luks::v2::reencrypt::encrypt::Encryption;
use vmcrypt_block::drivers::luks::v2::reencrypt::encrypt_init::{
    EncryptParams, encrypt_init, plan,
};
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::Result;

const PW: &[u8] = b"pw";
const SHIFT: u64 = 512 << 10;
const DATA: u64 = 2 << 20;
/// Hotzone of a detached run (with a shift the hotzone is the shift).
const HOTZONE: u64 = 512 << 10;

fn params(sector: u32, reduce: bool, res: ResilienceChoice) -> EncryptParams {
    let mut create = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    create.sector_size = sector;
    create.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    EncryptParams {
        create,
        resilience: res,
        hash: HashAlg::Sha256,
        reduce: reduce.then_some(2 * SHIFT),
    }
}

/// Start (with `p`) or resume an encryption and run it to the end. `hdev` is `data`
/// itself with a shift.
fn encrypt(
    hdev: Arc<dyn BlockDriver>,
    data: Arc<dyn BlockDriver>,
    detached: bool,
    p: Option<&EncryptParams>,
) -> Result<()> {
    if let Some(p) = p {
        let pl = plan(data.size(), p)?;
        encrypt_init(hdev.clone(), data.as_ref(), p, pl, PW)?;
    }
    let mut vol = Luks2Volume::open(hdev, detached, &KdfLimits::default())?;
    let Some(st) = vol.encrypt_state()? else {
        return Ok(());
    };
    let key = vol.unlock_digest(PW, st.new_digest)?;
    Encryption::load(&mut vol, data, &key, Some(HOTZONE))?.run(&mut |_| {}, &|| true)?;
    Ok(())
}

/// The first DATA plaintext bytes of a finished image (no requirement left).
fn plaintext(img: Vec<u8>, hdr: Option<Vec<u8>>) -> Vec<u8> {
    plaintext_of(img, hdr, DATA)
}

/// The first `len` plaintext bytes of a finished image (no requirement left).
fn plaintext_of(img: Vec<u8>, hdr: Option<Vec<u8>>, len: u64) -> Vec<u8> {
    let h = hdr.map(|h| Arc::new(MemDriver::new(h)) as Arc<dyn BlockDriver>);
    let mem: Arc<dyn BlockDriver> = Arc::new(MemDriver::new(img));
    let vol = Luks2Volume::open(
        h.clone().unwrap_or(mem.clone()),
        h.is_some(),
        &KdfLimits::default(),
    )
    .unwrap();
    assert!(vol.requirements().unwrap().mandatory.is_empty());
    let d = LuksDriver::open(mem, h, Some(PW), None, &KdfLimits::default()).unwrap();
    let mut out = vec![0u8; len as usize];
    d.read_at(&mut out, 0).unwrap();
    out
}

/// (encryption in progress, a hotzone was interrupted), or None if no header loads.
fn state(hdr: &[u8], detached: bool) -> Option<(bool, bool)> {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        detached,
        &KdfLimits::default(),
    )
    .ok()?;
    Some(match vol.encrypt_state().unwrap() {
        Some(st) => (true, st.hot().is_some()),
        None => (false, false),
    })
}

fn cryptsetup(args: &[&str], dir: &Path, detached: bool) {
    let mut c = std::process::Command::new("cryptsetup");
    c.current_dir(dir)
        .args(args)
        .arg("--key-file")
        .arg(dir.join("pw"));
    if detached {
        c.arg("--header").arg(dir.join("hdr"));
    }
    let out = c
        .arg(dir.join("img"))
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    assert!(
        out.status.success(),
        "cryptsetup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Finish with cryptsetup (`repair` first after an interrupted hotzone); returns
/// (image, header) after.
fn cryptsetup_resume(img: &[u8], hdr: Option<&[u8]>, hot: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("img"), img).unwrap();
    std::fs::write(d.join("pw"), PW).unwrap();
    if let Some(h) = hdr {
        std::fs::write(d.join("hdr"), h).unwrap();
    }
    let hpath = if hdr.is_some() {
        d.join("hdr")
    } else {
        d.join("img")
    };
    if hot {
        cryptsetup(&["repair", "-q"], d, hdr.is_some());
    }
    if state(&std::fs::read(&hpath).unwrap(), hdr.is_some()).is_some_and(|s| s.0) {
        cryptsetup(
            &[
                "reencrypt",
                "--resume-only",
                "--force-offline-reencrypt",
                "-q",
            ],
            d,
            hdr.is_some(),
        );
    }
    // cryptsetup writes a regular file in 4096-byte blocks: a data end that is not a
    // multiple of 4096 grows the file (a block device would keep its size).
    let mut out = std::fs::read(d.join("img")).unwrap();
    out.truncate(img.len());
    (out, hdr.map(|_| std::fs::read(d.join("hdr")).unwrap()))
}

/// A plain image: DATA random bytes, then (with a shift) 2 * SHIFT more.
fn plain(reduce: bool, seed: u64) -> Vec<u8> {
    random_bytes(DATA + if reduce { 2 * SHIFT } else { 0 }, seed)
}

fn random_bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Every write of an encryption with a shift, interrupted whole and torn.
fn every_write_reduce(sector: u32) {
    let img = plain(true, u64::from(sector));
    let want = img[..DATA as usize].to_vec();
    let p = params(sector, true, ResilienceChoice::Checksum);
    let full = Arc::new(FaultyDriver::new(
        Arc::new(MemDriver::new(img.clone())),
        usize::MAX,
    ));
    encrypt(full.clone(), full.clone(), false, Some(&p)).unwrap();
    let total = full.writes_done();
    assert!(total > 20, "only {total} writes for 4 hotzones");
    let (mut resumed, mut before_header) = (0, 0);
    for torn in [false, true] {
        for budget in 0..total {
            let what = format!("{sector}-byte sectors, torn {torn}, write #{budget}");
            let mem = Arc::new(MemDriver::new(img.clone()));
            let f = Arc::new(if torn {
                FaultyDriver::torn_half(mem.clone(), budget)
            } else {
                FaultyDriver::new(mem.clone(), budget)
            });
            assert!(
                encrypt(f.clone(), f, false, Some(&p)).is_err(),
                "{what}: no fault"
            );
            let left = mem.snapshot();
            let Some((running, hot)) = state(&left, false) else {
                // Inside the start: the plaintext's first SHIFT bytes are in place or
                // in the moved copy at the end, the rest untouched.
                before_header += 1;
                let (s, d) = (SHIFT as usize, DATA as usize);
                let moved = &left[d + s..d + 2 * s];
                assert!(left[s..d] == want[s..d], "{what}: plaintext damaged");
                assert!(
                    left[..s] == want[..s] || moved == &want[..s],
                    "{what}: the start of the plaintext is lost"
                );
                continue;
            };
            let ours = Arc::new(MemDriver::new(left.clone()));
            encrypt(ours.clone(), ours.clone(), false, None)
                .unwrap_or_else(|e| panic!("{what}: resume: {e}"));
            assert!(
                plaintext(ours.snapshot(), None) == want,
                "{what}: vmcrypt resume"
            );
            if running {
                resumed += 1;
                let (theirs, _) = cryptsetup_resume(&left, None, hot);
                assert!(plaintext(theirs, None) == want, "{what}: cryptsetup resume");
            }
        }
    }
    assert!(
        before_header <= 2 * 4,
        "{before_header} faults left no header"
    );
    assert!(
        resumed > total,
        "too few interruptions in progress ({resumed})"
    );
}

#[test]
fn reduce_512_every_write() {
    every_write_reduce(512);
}

#[test]
fn reduce_4096_every_write() {
    every_write_reduce(4096);
}

/// Every write to a detached header, interrupted whole and torn.
fn every_header_write(sector: u32, res: ResilienceChoice) {
    every_header_write_of(plain(false, u64::from(sector) + 1), sector, res);
}

/// [`every_header_write`] of the plain image `img`.
fn every_header_write_of(img: Vec<u8>, sector: u32, res: ResilienceChoice) {
    let len = img.len() as u64;
    let p = params(sector, false, res);
    let hmem = || Arc::new(MemDriver::new(vec![0u8; 16 << 20]));
    let full = Arc::new(FaultyDriver::new(hmem(), usize::MAX));
    let data = Arc::new(MemDriver::new(img.clone()));
    encrypt(full.clone(), data, true, Some(&p)).unwrap();
    let total = full.writes_done();
    assert!(total > 10, "only {total} header writes");
    let mut resumed = 0;
    for torn in [false, true] {
        for budget in 0..total {
            let what = format!("{sector} {res:?}, torn {torn}, header write #{budget}");
            let hm = hmem();
            let f = Arc::new(if torn {
                FaultyDriver::torn_half(hm.clone(), budget)
            } else {
                FaultyDriver::new(hm.clone(), budget)
            });
            let data = Arc::new(MemDriver::new(img.clone()));
            assert!(
                encrypt(f, data.clone(), true, Some(&p)).is_err(),
                "{what}: no fault"
            );
            let (hleft, dleft) = (hm.snapshot(), data.snapshot());
            let Some((running, hot)) = state(&hleft, true) else {
                assert!(dleft == img, "{what}: data written without a header");
                continue;
            };
            let (oh, od) = (
                Arc::new(MemDriver::new(hleft.clone())),
                Arc::new(MemDriver::new(dleft.clone())),
            );
            encrypt(oh.clone(), od.clone(), true, None).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                plaintext_of(od.snapshot(), Some(oh.snapshot()), len) == img,
                "{what}: vmcrypt"
            );
            if running {
                resumed += 1;
                let (d, h) = cryptsetup_resume(&dleft, Some(&hleft), hot);
                assert!(plaintext_of(d, h, len) == img, "{what}: cryptsetup resume");
            }
        }
    }
    assert!(
        resumed > total,
        "too few interruptions in progress ({resumed})"
    );
}

#[test]
fn detached_checksum_every_header_write() {
    every_header_write(512, ResilienceChoice::Checksum);
    every_header_write(4096, ResilienceChoice::Checksum);
}

#[test]
fn detached_journal_every_header_write() {
    every_header_write(512, ResilienceChoice::Journal);
    every_header_write(4096, ResilienceChoice::Journal);
}

/// A detached checksum run whose last hotzone is shorter than the others and, with
/// 512-byte sectors, not a whole number of 4096-byte blocks (the data is DATA + 3
/// sectors): interrupted at its last data write (nothing of it written: the whole
/// hotzone is redone from its checksums) and at every header write (whole and torn),
/// then finished by vmcrypt and by `cryptsetup repair` + `reencrypt --resume-only`.
fn last_partial_hotzone(sector: u32) {
    let len = DATA + 3 * u64::from(sector);
    let img = random_bytes(len, u64::from(sector) + 7);
    let p = params(sector, false, ResilienceChoice::Checksum);
    let hmem = || Arc::new(MemDriver::new(vec![0u8; 16 << 20]));
    let full = Arc::new(FaultyDriver::new(
        Arc::new(MemDriver::new(img.clone())),
        usize::MAX,
    ));
    encrypt(hmem(), full.clone(), true, Some(&p)).unwrap();
    let last = full.writes_done() - 1;
    let what = format!("{sector}-byte sectors, {len} bytes, last data write");
    let (h, d) = (hmem(), Arc::new(MemDriver::new(img.clone())));
    let f = Arc::new(FaultyDriver::new(d.clone(), last));
    assert!(
        encrypt(h.clone(), f, true, Some(&p)).is_err(),
        "{what}: no fault"
    );
    let (hleft, dleft) = (h.snapshot(), d.snapshot());
    assert_eq!(state(&hleft, true), Some((true, true)), "{what}: not hot");
    let (oh, od) = (
        Arc::new(MemDriver::new(hleft.clone())),
        Arc::new(MemDriver::new(dleft.clone())),
    );
    encrypt(oh.clone(), od.clone(), true, None).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        plaintext_of(od.snapshot(), Some(oh.snapshot()), len) == img,
        "{what}: vmcrypt resume"
    );
    let (d, h) = cryptsetup_resume(&dleft, Some(&hleft), true);
    assert!(plaintext_of(d, h, len) == img, "{what}: cryptsetup resume");
    every_header_write_of(img, sector, ResilienceChoice::Checksum);
}

#[test]
fn detached_checksum_last_partial_hotzone_512() {
    last_partial_hotzone(512);
}

#[test]
fn detached_checksum_last_partial_hotzone_4096() {
    last_partial_hotzone(4096);
}

/// cryptsetup's own start (`--init-only`, detached, checksum) of 512-byte sectors over
/// DATA + 3 sectors keeps 4096-byte checksum blocks, so the last hotzone ends in a
/// partial block: vmcrypt runs it, is interrupted at its last data write, and resumes,
/// redoing the partial block from the checksum of its bytes. (cryptsetup's recovery
/// skips a partial block, so only vmcrypt's resume is checked here.)
#[test]
fn cryptsetup_start_last_partial_block_512() {
    let len = DATA + 3 * 512;
    let img = random_bytes(len, 99);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("img"), &img).unwrap();
    std::fs::write(d.join("pw"), PW).unwrap();
    cryptsetup(
        &[
            "reencrypt",
            "--encrypt",
            "--init-only",
            "-q",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--resilience",
            "checksum",
            "--sector-size",
            "512",
        ],
        d,
        true,
    );
    let hdr = std::fs::read(d.join("hdr")).unwrap();
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.clone())),
        true,
        &KdfLimits::default(),
    )
    .unwrap();
    let st = vol
        .encrypt_state()
        .unwrap()
        .expect("an encryption in progress");
    assert!(
        format!("{:?}", st.keyslot.resilience).contains("4096"),
        "cryptsetup's checksum block: {:?}",
        st.keyslot.resilience
    );
    let full = Arc::new(FaultyDriver::new(
        Arc::new(MemDriver::new(img.clone())),
        usize::MAX,
    ));
    encrypt(
        Arc::new(MemDriver::new(hdr.clone())),
        full.clone(),
        true,
        None,
    )
    .unwrap();
    let (h, data) = (
        Arc::new(MemDriver::new(hdr)),
        Arc::new(MemDriver::new(img.clone())),
    );
    let f = Arc::new(FaultyDriver::new(data.clone(), full.writes_done() - 1));
    assert!(encrypt(h.clone(), f, true, None).is_err(), "no fault");
    assert_eq!(state(&h.snapshot(), true), Some((true, true)), "not hot");
    encrypt(h.clone(), data.clone(), true, None).unwrap();
    assert!(
        plaintext_of(data.snapshot(), Some(h.snapshot()), len) == img,
        "vmcrypt resume of a partial last block"
    );
}
