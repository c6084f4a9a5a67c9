//! LUKS2 decryption of a device whose header is attached (cryptsetup's `reencrypt
//! --decrypt --header NEW.hdr`: the header moves to a new file, the data shifts left
//! over it), interrupted at every write to the device and to the new header file,
//! whole and torn in the middle, for checksum and journal resilience and 512- and
//! 4096-byte sectors. Every state left behind must resume to the plaintext: a run in
//! progress by vmcrypt and by `cryptsetup reencrypt --resume-only` (plaintext at the
//! start of the device), a start interrupted before its first header by starting
//! again (the device still has its header) or as a detached-header decryption (the
//! new file already holds the header, the device's magic is gone).
mod common;
use common::{Pass, Rng, with_edited_metadata};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::reencrypt::Position;
use vmcrypt_block::drivers::luks::v2::reencrypt::ResilienceChoice;
use vmcrypt_block::drivers::luks::v2::reencrypt::decrypt::{DecryptParams, Decryption};
use vmcrypt_block::drivers::luks::v2::reencrypt::shift::ShiftDecryption;
use vmcrypt_block::drivers::luks::v2::reencrypt::shift_init::ShiftParams;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::jobs::NoEvents;
use vmcrypt_block::jobs::luks::Target as JobTarget;
use vmcrypt_block::jobs::luks::reencrypt::{ReencryptRequest, reencrypt};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::{ErrorKind, Result};
use vmcrypt_format::luks2::reencrypt::shift::ShiftPhase;

const PW: &[u8] = b"pw";
const KIB: u64 = 1 << 10;
/// Data offset (the shift) and plaintext size.
const SHIFT: u64 = 2 << 20;
const DATA: u64 = 5 << 20;
/// The moved segment of a journal run (it must fit the area, smaller than the shift).
const MOVED_JOURNAL: u64 = 512 * KIB;

/// An attached-header LUKS2 image holding random plaintext encrypted.
struct Base {
    img: Vec<u8>,
    plain: Vec<u8>,
}

fn base(sector: u32, seed: u64) -> Base {
    let mem = Arc::new(MemDriver::new(vec![0; (SHIFT + DATA) as usize]));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.sector_size = sector;
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    p.data_offset = Some(SHIFT);
    p.keyslots_size = Some(SHIFT - 32 * KIB);
    Luks2Volume::create(mem.clone(), &p, PW).unwrap();
    let mut rng = Rng(seed);
    let plain: Vec<u8> = (0..DATA).map(|_| rng.next() as u8).collect();
    let d = LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap();
    d.write_at(&plain, 0).unwrap();
    d.flush().unwrap();
    Base {
        img: mem.snapshot(),
        plain,
    }
}

/// Checksum runs move the whole shift (cryptsetup's default), journal runs less.
fn params(res: ResilienceChoice) -> ShiftParams {
    let moved = match res {
        ResilienceChoice::Journal => MOVED_JOURNAL,
        _ => SHIFT,
    };
    ShiftParams {
        resilience: res,
        hash: HashAlg::Sha256,
        moved: Some(moved),
        digest_iterations: Some(1000),
    }
}

fn has_magic(img: &dyn BlockDriver) -> bool {
    let mut m = [0u8; 6];
    img.read_at(&mut m, 0).unwrap();
    &m == b"LUKS\xba\xbe"
}

/// Start a decryption of `img` into the empty `hdr` and run it.
fn start(img: Arc<dyn BlockDriver>, hdr: Arc<dyn BlockDriver>, p: &ShiftParams) -> Result<()> {
    let vol = Luks2Volume::open(img.clone(), false, &KdfLimits::default())?;
    let key = vol.unlock(PW, None)?.volume_key;
    let next = vol.decrypt_shift_plan(&key, p)?;
    let mut nv = vol.decrypt_shift_start(hdr, next)?;
    ShiftDecryption::load(&mut nv, img, &key)?.run(&mut |_| {}, &|| true)?;
    Ok(())
}

/// Resume whatever an interruption left (see the module doc); the plaintext offset.
fn resume(img: Arc<MemDriver>, hdr: Arc<MemDriver>, p: &ShiftParams) -> Result<u64> {
    let loaded = Luks2Volume::open(hdr.clone(), true, &KdfLimits::default());
    let mut vol = match loaded {
        Ok(v) if !has_magic(img.as_ref()) => v,
        _ => {
            // The start stopped before the device lost its header: start again.
            let fresh = Arc::new(MemDriver::new(Vec::new()));
            start(img.clone(), fresh.clone(), p)?;
            hdr.write_at(&fresh.snapshot(), 0)?;
            return Ok(0);
        }
    };
    if let Some(st) = vol.shift_decrypt_state()? {
        let key = vol.unlock_digest(PW, st.old_digest)?;
        ShiftDecryption::load(&mut vol, img, &key)?.run(&mut |_| {}, &|| true)?;
        return Ok(0);
    }
    let seg = vol.header().metadata.segments()?[0].clone();
    if seg.kind == "linear" {
        return Ok(seg.offset);
    }
    // The new file holds the old header: a detached-header decryption.
    let key = vol.unlock(PW, None)?.volume_key;
    let dp = DecryptParams {
        resilience: ResilienceChoice::Checksum,
        hash: HashAlg::Sha256,
        digest_iterations: Some(1000),
    };
    vol.decrypt_init(img.as_ref(), &key, &dp)?;
    Decryption::load(&mut vol, img, &key, None)?.run(&mut |_| {}, &|| true)?;
    Ok(SHIFT)
}

/// The header is cryptsetup's final one and the device holds the plaintext at `at`.
#[track_caller]
fn check_done(hdr: &[u8], img: &[u8], plain: &[u8], at: u64, what: &str) {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let v = vol.header().metadata.to_value();
    let seg =
        serde_json::json!({"0": {"type": "linear", "offset": at.to_string(), "size": "dynamic"}});
    assert_eq!(v["segments"], seg, "{what}");
    assert_eq!(v["keyslots"], serde_json::json!({}), "{what}");
    assert_eq!(v["digests"], serde_json::json!({}), "{what}");
    assert!(vol.requirements().unwrap().mandatory.is_empty(), "{what}");
    let at = at as usize;
    assert!(
        img[at..at + plain.len()] == *plain,
        "{what}: not the plaintext"
    );
}

/// Whether all data but the moved segment is done (and nothing is hot). cryptsetup
/// 2.6.1 cannot resume that state when the moved segment is shorter than the shift
/// (`--hotzone-size` below the data offset): it fails with "Overlapping segments".
fn before_moved(hdr: &[u8]) -> bool {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    )
    .unwrap();
    let st = vol.shift_decrypt_state().unwrap().unwrap();
    st.phase(DATA).unwrap() == ShiftPhase::Shift { pos: DATA }
}

/// (a data-shifting decryption is in progress, a hotzone was interrupted).
fn in_progress(hdr: &[u8]) -> (bool, bool) {
    let Ok(vol) = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    ) else {
        return (false, false);
    };
    match vol.shift_decrypt_state().unwrap() {
        Some(st) => (true, st.segments.iter().any(|s| !s.flags.is_empty())),
        None => (false, false),
    }
}

/// Finish a run in progress with cryptsetup (`repair` first for a hot state); None
/// for the state cryptsetup cannot resume with a moved segment shorter than the
/// shift ([`before_moved`]).
fn cryptsetup_resume(hdr: &[u8], img: &[u8], hot: bool, short: bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hdr"), hdr).unwrap();
    std::fs::write(d.join("img"), img).unwrap();
    std::fs::write(d.join("pw"), PW).unwrap();
    if hot {
        cryptsetup(&["repair", "-q"], d);
    }
    let h = std::fs::read(d.join("hdr")).unwrap();
    let running = in_progress(&h).0;
    if short && running && before_moved(&h) {
        return None;
    }
    if running {
        cryptsetup(
            &["reencrypt", "--resume-only", "--force-offline-reencrypt"],
            d,
        );
    }
    Some((
        std::fs::read(d.join("hdr")).unwrap(),
        std::fs::read(d.join("img")).unwrap(),
    ))
}

fn cryptsetup(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("cryptsetup")
        .args(args)
        .arg("--key-file")
        .arg(dir.join("pw"))
        .arg("--header")
        .arg(dir.join("hdr"))
        .arg(dir.join("img"))
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && std::env::var_os("KEEP_FAILED").is_some() {
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(dir)
            .arg("/tmp/failed-shift")
            .status();
    }
    assert!(out.status.success(), "cryptsetup {args:?}: {err}");
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Header,
    Image,
}

/// A run with a fault on `target` after `budget` writes (None: no fault); returns the
/// run's result, the header and image left, and the writes done on `target`.
fn faulty_run(
    b: &Base,
    p: &ShiftParams,
    target: Target,
    budget: Option<(usize, bool)>,
) -> (Result<()>, Vec<u8>, Vec<u8>, usize) {
    let on_header = matches!(target, Target::Header);
    common::faulty_pair(Vec::new(), b.img.clone(), on_header, budget, |h, i| {
        start(i, h, p)
    })
}

fn every_write(sector: u32, res: ResilienceChoice) {
    let b = base(sector, u64::from(sector) + 5);
    let p = params(res);
    let (mut by_cryptsetup, mut hot_states) = (0, 0);
    for target in [Target::Header, Target::Image] {
        let (r, h, i, total) = faulty_run(&b, &p, target, None);
        r.unwrap();
        check_done(&h, &i, &b.plain, 0, "uninterrupted");
        assert!(total >= 6, "only {total} writes on {target:?}");
        for torn in [false, true] {
            for budget in 0..total {
                let what = format!("{sector}, {res:?}, {target:?} write #{budget}, torn {torn}");
                let (r, h, i, _) = faulty_run(&b, &p, target, Some((budget, torn)));
                assert!(r.is_err(), "{what}: no fault hit");
                let (running, hot) = in_progress(&h);
                hot_states += u32::from(hot);
                let (hm, im) = (
                    Arc::new(MemDriver::new(h.clone())),
                    Arc::new(MemDriver::new(i.clone())),
                );
                let at = resume(im.clone(), hm.clone(), &p)
                    .unwrap_or_else(|e| panic!("{what}: vmcrypt resume: {e}"));
                check_done(&hm.snapshot(), &im.snapshot(), &b.plain, at, &what);
                let short = p.moved != Some(SHIFT);
                if running
                    && !torn
                    && let Some((th, ti)) = cryptsetup_resume(&h, &i, hot, short)
                {
                    by_cryptsetup += 1;
                    check_done(&th, &ti, &b.plain, 0, &format!("{what}: cryptsetup"));
                }
            }
        }
    }
    assert!(by_cryptsetup > 5, "too few interruptions in progress");
    assert!(hot_states > 4, "too few interruptions inside a hotzone");
}

#[test]
fn checksum_512_every_write() {
    every_write(512, ResilienceChoice::Checksum);
}

#[test]
fn checksum_4096_every_write() {
    every_write(4096, ResilienceChoice::Checksum);
}

#[test]
fn journal_512_every_write() {
    every_write(512, ResilienceChoice::Journal);
}

#[test]
fn journal_4096_every_write() {
    every_write(4096, ResilienceChoice::Journal);
}

/// Refused before anything is written: `none`, a wrong volume key, a moved segment
/// larger than the journal, a detached header.
#[test]
fn refusals_write_nothing() {
    let b = base(4096, 9);
    let img = Arc::new(MemDriver::new(b.img.clone()));
    let vol = Luks2Volume::open(img.clone(), false, &KdfLimits::default()).unwrap();
    let key = vol.unlock(PW, None).unwrap().volume_key;
    let e = vol
        .decrypt_shift_plan(&key, &params(ResilienceChoice::None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    let wrong = vmcrypt_crypto::SecretBytes::new(vec![7; 64]);
    let e = vol
        .decrypt_shift_plan(&wrong, &params(ResilienceChoice::Checksum))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    let mut big = params(ResilienceChoice::Journal);
    big.moved = Some(SHIFT);
    assert_eq!(params(ResilienceChoice::Checksum).moved, Some(SHIFT));
    let e = vol.decrypt_shift_plan(&key, &big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(img.snapshot() == b.img, "something was written");
}

/// The new header of a decryption started on `b` (checksum), edited into the state
/// cryptsetup leaves when killed between its key slot removals after the last
/// hotzone: one `linear` regular segment from 0, the backups and the reencryption
/// metadata still there, key slot 0 gone.
fn finished_without_key_slot(b: &Base) -> Vec<u8> {
    let img = Arc::new(MemDriver::new(b.img.clone()));
    let hmem = Arc::new(MemDriver::new(Vec::new()));
    let vol = Luks2Volume::open(img, false, &KdfLimits::default()).unwrap();
    let key = vol.unlock(PW, None).unwrap().volume_key;
    let next = vol
        .decrypt_shift_plan(&key, &params(ResilienceChoice::Checksum))
        .unwrap();
    drop(vol.decrypt_shift_start(hmem.clone(), next).unwrap());
    with_edited_metadata(&hmem.snapshot(), |v| {
        let backups: Vec<serde_json::Value> = v["segments"]
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s["flags"].as_array().is_some_and(|f| !f.is_empty()))
            .cloned()
            .collect();
        let mut segs = serde_json::Map::new();
        segs.insert(
            "0".into(),
            serde_json::json!({"type": "linear", "offset": "0", "size": "dynamic"}),
        );
        let mut bound = vec![];
        for (i, s) in backups.into_iter().enumerate() {
            if s["type"] == "crypt" {
                bound.push(serde_json::json!((i + 1).to_string()));
            }
            segs.insert((i + 1).to_string(), s);
        }
        v["segments"] = serde_json::Value::Object(segs);
        v["keyslots"].as_object_mut().unwrap().remove("0");
        for d in v["digests"].as_object_mut().unwrap().values_mut() {
            if d["keyslots"] == serde_json::json!(["0"]) {
                d["keyslots"] = serde_json::json!([]);
                d["segments"] = serde_json::Value::Array(bound.clone());
            }
        }
    })
}

/// `luks reencrypt --resume-only` (the job) on files, the data all shifted and
/// plaintext but no key slot left (see [`finished_without_key_slot`]): finished
/// without the key, reporting the data bytes, not the freed tail of the device.
#[test]
fn job_finishes_without_the_key_and_reports_the_data_bytes() {
    let b = base(4096, 23);
    let hdr = finished_without_key_slot(&b);
    let mut dev = b.img.clone();
    dev[..DATA as usize].copy_from_slice(&b.plain);
    let dir = tempfile::tempdir().unwrap();
    let (hp, dp) = (dir.path().join("new.hdr"), dir.path().join("d.img"));
    std::fs::write(&hp, &hdr).unwrap();
    std::fs::write(&dp, &dev).unwrap();
    let t = JobTarget {
        device: dp.to_str().unwrap().into(),
        header: Some(hp.to_str().unwrap().into()),
        limits: KdfLimits::default(),
    };
    let req = ReencryptRequest {
        resume_only: true,
        ..Default::default()
    };
    let r = reencrypt(&t, &req, &mut Pass(PW), &mut NoEvents).unwrap();
    assert!(r.finished && !r.started);
    let all = Position {
        done: DATA,
        total: DATA,
    };
    assert_eq!(r.position, all, "SHIFT = {SHIFT}");
    let (h, d) = (std::fs::read(&hp).unwrap(), std::fs::read(&dp).unwrap());
    check_done(&h, &d, &b.plain, 0, "finished without the key");
}
