//! LUKS2 decryption with a detached header (cryptsetup's `reencrypt --decrypt`
//! format), interrupted at every write to the header device (metadata and resilience
//! area) and at every write to the data device, whole and torn in the middle, for
//! checksum and journal resilience and 512- and 4096-byte sectors: the header left
//! behind must load, and both vmcrypt and `cryptsetup reencrypt --resume-only` must
//! finish it to plaintext with cryptsetup's final header.
mod common;
use common::{Pass, Rng, with_edited_metadata};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::reencrypt::ResilienceChoice;
use vmcrypt_block::drivers::luks::v2::reencrypt::decrypt::{DecryptParams, Decryption};
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::jobs::NoEvents;
use vmcrypt_block::jobs::luks::Target as JobTarget;
use vmcrypt_block::jobs::luks::reencrypt::{ReencryptRequest, reencrypt};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::{ErrorKind, Result};

const PW: &[u8] = b"pw";
const SIZE: usize = 1 << 20;
const HOTZONE: u64 = 256 << 10;

/// A detached LUKS2 header and its data device holding random plaintext encrypted.
struct Base {
    hdr: Vec<u8>,
    data: Vec<u8>,
    plain: Vec<u8>,
}

fn base(sector: u32, seed: u64) -> Base {
    let hmem = Arc::new(MemDriver::new(Vec::new()));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.sector_size = sector;
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    };
    p.detached = true;
    p.data_offset = Some(0);
    p.keyslots_size = Some(1 << 20);
    Luks2Volume::create(hmem.clone(), &p, PW).unwrap();
    let dmem = Arc::new(MemDriver::new(vec![0; SIZE]));
    let mut rng = Rng(seed);
    let plain: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
    let d = LuksDriver::open(
        dmem.clone(),
        Some(hmem.clone()),
        Some(PW),
        None,
        &KdfLimits::default(),
    )
    .unwrap();
    d.write_at(&plain, 0).unwrap();
    d.flush().unwrap();
    let data = dmem.snapshot();
    assert!(data != plain);
    Base {
        hdr: hmem.snapshot(),
        data,
        plain,
    }
}

fn params(res: ResilienceChoice) -> DecryptParams {
    DecryptParams {
        resilience: res,
        hash: HashAlg::Sha256,
        digest_iterations: Some(1000),
    }
}

/// Start (when `init`) or resume a decryption and run it to the end.
fn decrypt(
    hdr: Arc<dyn BlockDriver>,
    data: Arc<dyn BlockDriver>,
    init: Option<&DecryptParams>,
) -> Result<()> {
    let mut vol = Luks2Volume::open(hdr, true, &KdfLimits::default())?;
    let key = match (vol.reencrypt_state()?, init) {
        (Some(st), _) => vol.unlock_digest(PW, st.old_digest.unwrap())?,
        (None, Some(p)) => {
            let k = vol.unlock(PW, None)?.volume_key;
            vol.decrypt_init(data.as_ref(), &k, p)?;
            k
        }
        (None, None) => return Ok(()),
    };
    Decryption::load(&mut vol, data, &key, Some(HOTZONE))?.run(&mut |_| {}, &|| true)?;
    Ok(())
}

/// The header is cryptsetup's final one and the data the plaintext.
#[track_caller]
fn check_done(hdr: &[u8], data: &[u8], plain: &[u8], what: &str) {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let v = vol.header().metadata.to_value();
    assert_eq!(
        v["segments"],
        serde_json::json!({"0": {"type": "linear", "offset": "0", "size": "dynamic"}}),
        "{what}"
    );
    assert_eq!(v["keyslots"], serde_json::json!({}), "{what}");
    assert_eq!(v["digests"], serde_json::json!({}), "{what}");
    assert!(vol.requirements().unwrap().mandatory.is_empty(), "{what}");
    assert!(data == plain, "{what}: not the plaintext");
}

/// (decryption in progress, a hotzone was interrupted); the header must load.
fn in_progress(hdr: &[u8]) -> (bool, bool) {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    )
    .expect("an interrupted header must stay valid");
    match vol.reencrypt_state().unwrap() {
        Some(st) => (true, st.hot_segment().is_some()),
        None => (false, false),
    }
}

fn cryptsetup(args: &[&str], dir: &Path) -> (bool, String) {
    let out = std::process::Command::new("cryptsetup")
        .args(args)
        .arg("--key-file")
        .arg(dir.join("pw"))
        .arg("--header")
        .arg(dir.join("hdr"))
        .arg(dir.join("data"))
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether every regular segment is `linear` while the metadata remains: what
/// `cryptsetup repair` leaves after recovering the last hotzone (at offset 0).
/// cryptsetup 2.6.1's `--resume-only` then takes the plaintext for ciphertext and
/// decrypts it again (it computes the next hotzone from the end of a lone segment);
/// vmcrypt finishes this state with its final header write.
fn all_plaintext(hdr: &[u8]) -> bool {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(hdr.to_vec())),
        true,
        &KdfLimits::default(),
    )
    .unwrap();
    vol.reencrypt_state()
        .unwrap()
        .is_some_and(|st| st.segments.iter().all(|s| s.kind == "linear"))
}

/// Finish with `cryptsetup repair` (for a hot state) and `reencrypt --resume-only`;
/// returns (header, data) after. A state [`all_plaintext`] after the repair is
/// finished by vmcrypt instead.
fn cryptsetup_resume(hdr: &[u8], data: &[u8], hot: bool) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hdr"), hdr).unwrap();
    std::fs::write(d.join("data"), data).unwrap();
    std::fs::write(d.join("pw"), PW).unwrap();
    let read = || {
        (
            std::fs::read(d.join("hdr")).unwrap(),
            std::fs::read(d.join("data")).unwrap(),
        )
    };
    if hot {
        let (ok, err) = cryptsetup(&["repair", "-q"], d);
        assert!(ok, "cryptsetup could not recover the hotzone: {err}");
        let (h, data) = read();
        let (running, hot) = in_progress(&h);
        assert!(!hot, "cryptsetup repair left a hotzone");
        if !running {
            return (h, data);
        }
        if all_plaintext(&h) {
            let (hm, dm) = (Arc::new(MemDriver::new(h)), Arc::new(MemDriver::new(data)));
            decrypt(hm.clone(), dm.clone(), None).unwrap();
            return (hm.snapshot(), dm.snapshot());
        }
    }
    let args = [
        "reencrypt",
        "--resume-only",
        "--force-offline-reencrypt",
        "-q",
    ];
    let (ok, err) = cryptsetup(&args, d);
    assert!(ok, "cryptsetup could not resume: {err}");
    read()
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Header,
    Data,
}

/// A run with a fault on `target` after `budget` writes (None: no fault); returns the
/// run's result, the header and data left, and the writes done on `target`.
fn faulty_run(
    b: &Base,
    p: &DecryptParams,
    target: Target,
    budget: Option<(usize, bool)>,
) -> (Result<()>, Vec<u8>, Vec<u8>, usize) {
    let on_header = matches!(target, Target::Header);
    common::faulty_pair(b.hdr.clone(), b.data.clone(), on_header, budget, |h, d| {
        decrypt(h, d, Some(p))
    })
}

/// Every write of a decryption, interrupted whole and torn; both tools resume.
fn every_write(sector: u32, res: ResilienceChoice) {
    let b = base(sector, u64::from(sector) + 11);
    let p = params(res);
    let mut resumed_by_cryptsetup = 0;
    let mut hot_states = 0;
    for target in [Target::Header, Target::Data] {
        let (r, h, d, total) = faulty_run(&b, &p, target, None);
        r.unwrap();
        check_done(&h, &d, &b.plain, "uninterrupted");
        assert!(total >= 4, "only {total} writes on {target:?}");
        for torn in [false, true] {
            for budget in 0..total {
                let what = format!("{sector}, {res:?}, {target:?} write #{budget}, torn {torn}");
                let (r, h, d, _) = faulty_run(&b, &p, target, Some((budget, torn)));
                assert!(r.is_err(), "{what}: no fault hit");
                let (running, hot) = in_progress(&h);
                hot_states += u32::from(hot);
                let (hm, dm) = (
                    Arc::new(MemDriver::new(h.clone())),
                    Arc::new(MemDriver::new(d.clone())),
                );
                decrypt(hm.clone(), dm.clone(), None)
                    .unwrap_or_else(|e| panic!("{what}: vmcrypt resume: {e}"));
                if running {
                    check_done(&hm.snapshot(), &dm.snapshot(), &b.plain, &what);
                    resumed_by_cryptsetup += 1;
                    let (th, td) = cryptsetup_resume(&h, &d, hot);
                    check_done(&th, &td, &b.plain, &format!("{what}: cryptsetup"));
                } else {
                    // Interrupted before the start or after the end.
                    let done = in_progress(&hm.snapshot()) == (false, false);
                    assert!(done, "{what}");
                    if dm.snapshot() != b.data {
                        check_done(&hm.snapshot(), &dm.snapshot(), &b.plain, &what);
                    }
                }
            }
        }
    }
    assert!(
        resumed_by_cryptsetup > 8,
        "too few interruptions in progress"
    );
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

/// Resilience `none`: paused between hotzones, either tool finishes.
#[test]
fn none_paused_resumes_in_both_tools() {
    for sector in [512, 4096] {
        let b = base(sector, 3);
        let (hmem, dmem) = (
            Arc::new(MemDriver::new(b.hdr.clone())),
            Arc::new(MemDriver::new(b.data.clone())),
        );
        let mut vol = Luks2Volume::open(hmem.clone(), true, &KdfLimits::default()).unwrap();
        let k = vol.unlock(PW, None).unwrap().volume_key;
        vol.decrypt_init(dmem.as_ref(), &k, &params(ResilienceChoice::None))
            .unwrap();
        let steps = std::cell::Cell::new(0);
        let mut r = Decryption::load(&mut vol, dmem.clone(), &k, Some(HOTZONE)).unwrap();
        let done = r
            .run(&mut |_| steps.set(steps.get() + 1), &|| steps.get() < 2)
            .unwrap();
        assert!(!done);
        assert_eq!(r.position().unwrap().done, 2 * HOTZONE);
        let (h, d) = (hmem.snapshot(), dmem.snapshot());
        let (th, td) = cryptsetup_resume(&h, &d, false);
        check_done(&th, &td, &b.plain, "none, cryptsetup");
        let (hm, dm) = (Arc::new(MemDriver::new(h)), Arc::new(MemDriver::new(d)));
        decrypt(hm.clone(), dm.clone(), None).unwrap();
        check_done(&hm.snapshot(), &dm.snapshot(), &b.plain, "none, vmcrypt");
    }
}

/// With `finished`, the header cryptsetup writes after its last hotzone (the data
/// plaintext, one `linear` regular segment, the metadata still there), else the one
/// of a decryption just started; with `drop_slot`, key slot 0 also gone (cryptsetup
/// removes the key slots one header write at a time).
fn state(b: &Base, finished: bool, drop_slot: bool) -> Vec<u8> {
    let (hmem, dmem) = (
        Arc::new(MemDriver::new(b.hdr.clone())),
        Arc::new(MemDriver::new(b.data.clone())),
    );
    let mut vol = Luks2Volume::open(hmem.clone(), true, &KdfLimits::default()).unwrap();
    let k = vol.unlock(PW, None).unwrap().volume_key;
    vol.decrypt_init(dmem.as_ref(), &k, &params(ResilienceChoice::Checksum))
        .unwrap();
    let e = vol.decrypt_finish_done(dmem.as_ref()).unwrap_err();
    assert!(e.to_string().contains("not finished"), "{e}");
    drop(vol);
    with_edited_metadata(&hmem.snapshot(), |v| {
        let segs = v["segments"].as_object().unwrap().clone();
        if finished {
            v["segments"] = serde_json::json!({
                "0": {"type": "linear", "offset": "0", "size": "dynamic"},
                "1": segs["1"], "2": segs["2"]
            });
            v["digests"]["0"]["segments"] = serde_json::json!(["1"]);
        }
        if drop_slot {
            v["keyslots"].as_object_mut().unwrap().remove("0");
            v["digests"]["0"]["keyslots"] = serde_json::json!([]);
        }
    })
}

/// Killed between cryptsetup's key slot removals, no key slot opens. vmcrypt finishes
/// that state without a key (metadata only), and refuses it while data is encrypted.
#[test]
fn finished_data_without_key_slots_is_finalised() {
    let b = base(4096, 9);
    let hm = Arc::new(MemDriver::new(state(&b, true, true)));
    let dm = Arc::new(MemDriver::new(b.plain.clone()));
    let mut vol = Luks2Volume::open(hm.clone(), true, &KdfLimits::default()).unwrap();
    let st = vol.reencrypt_state().unwrap().unwrap();
    assert!(vol.unlock_digest(PW, st.old_digest.unwrap()).is_err());
    vol.decrypt_finish_done(dm.as_ref()).unwrap();
    check_done(
        &hm.snapshot(),
        &dm.snapshot(),
        &b.plain,
        "finished without key",
    );
}

/// `luks reencrypt --resume-only` (the job) on files: a key slot whose material
/// cryptsetup wiped before removing it from the metadata (so it is still listed), or
/// one already removed, after the last hotzone: finished without the key. With data
/// still encrypted the same wiped slot is a wrong-passphrase error and nothing changes.
#[test]
fn job_finishes_after_cryptsetup_wiped_or_removed_the_key_slot() {
    let b = base(4096, 13);
    for (drop_slot, data) in [(false, &b.plain), (true, &b.plain), (false, &b.data)] {
        let what = format!("slot removed {drop_slot}, data plain {}", *data == b.plain);
        let mut hdr = state(&b, *data == b.plain, drop_slot);
        if !drop_slot {
            let vol = Luks2Volume::open(
                Arc::new(MemDriver::new(hdr.clone())),
                true,
                &KdfLimits::default(),
            )
            .unwrap();
            let k = &vol.header().metadata.keyslots().unwrap()[0];
            let (off, len) = (k.area_offset as usize, k.area_size as usize);
            hdr[off..off + len].fill(0);
        }
        let dir = tempfile::tempdir().unwrap();
        let (hp, dp) = (dir.path().join("hdr"), dir.path().join("data"));
        std::fs::write(&hp, &hdr).unwrap();
        std::fs::write(&dp, data).unwrap();
        let t = JobTarget {
            device: dp.to_str().unwrap().into(),
            header: Some(hp.to_str().unwrap().into()),
            limits: KdfLimits::default(),
        };
        let req = ReencryptRequest {
            resume_only: true,
            ..Default::default()
        };
        let r = reencrypt(&t, &req, &mut Pass(PW), &mut NoEvents);
        let (h, d) = (std::fs::read(&hp).unwrap(), std::fs::read(&dp).unwrap());
        if *data == b.plain {
            assert!(r.unwrap().finished, "{what}");
            check_done(&h, &d, &b.plain, &what);
        } else {
            let e = r.err().unwrap_or_else(|| panic!("{what}: finished"));
            assert_eq!(e.kind(), ErrorKind::WrongKey, "{what}: {e}");
            assert!(h == hdr && d == *data, "{what}: a refused resume wrote");
        }
    }
}

/// A tampered decryption keyslot is refused before any write.
#[test]
fn tampered_metadata_is_refused() {
    let b = base(512, 5);
    let (hmem, dmem) = (
        Arc::new(MemDriver::new(b.hdr.clone())),
        Arc::new(MemDriver::new(b.data.clone())),
    );
    let mut vol = Luks2Volume::open(hmem.clone(), true, &KdfLimits::default()).unwrap();
    let k = vol.unlock(PW, None).unwrap().volume_key;
    vol.decrypt_init(dmem.as_ref(), &k, &params(ResilienceChoice::Journal))
        .unwrap();
    drop(vol);
    let edited = with_edited_metadata(&hmem.snapshot(), |v| {
        for ks in v["keyslots"].as_object_mut().unwrap().values_mut() {
            if ks["type"] == "reencrypt" {
                ks["area"]["size"] = serde_json::Value::String("4096".into());
            }
        }
    });
    hmem.write_at(&edited, 0).unwrap();
    let before = (hmem.snapshot(), dmem.snapshot());
    let mut vol = Luks2Volume::open(hmem.clone(), true, &KdfLimits::default()).unwrap();
    let e = Decryption::load(&mut vol, dmem.clone(), &k, None)
        .err()
        .expect("tampered metadata accepted");
    assert!(e.to_string().contains("verification digest"), "{e}");
    assert!(
        (hmem.snapshot(), dmem.snapshot()) == before,
        "a refused load wrote"
    );
}
