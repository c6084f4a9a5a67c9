//! LUKS2 reencryption (a new volume key in cryptsetup's format), interrupted at every
//! write it makes (whole, and torn in the middle), for checksum and journal
//! resilience and 512- and 4096-byte sectors: the image left behind must load, and
//! both vmcrypt and `cryptsetup reencrypt --resume-only` must finish it to a header
//! without requirements whose data decrypts to the original plaintext.
mod common;
use common::{Rng, with_edited_metadata};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::reencrypt::init::{InitParams, NewEncryption};
use vmcrypt_block::drivers::luks::v2::reencrypt::{Reencryption, ResilienceChoice};
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LuksDriver};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::{Error, ErrorKind, Result};

const PW: &[u8] = b"pw";
const DATA_OFFSET: u64 = 2 << 20;
const SIZE: usize = 1 << 20;
const HOTZONE: u64 = 256 << 10;

fn pbkdf2() -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    }
}

/// A LUKS2 image with `sector` data sectors holding random plaintext.
fn base(sector: u32, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mem = Arc::new(MemDriver::new(Vec::new()));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.sector_size = sector;
    p.keyslot = pbkdf2();
    p.keyslots_size = Some(DATA_OFFSET - (32 << 10));
    p.data_offset = Some(DATA_OFFSET);
    Luks2Volume::create(mem.clone(), &p, PW).unwrap();
    mem.resize(DATA_OFFSET + SIZE as u64).unwrap();
    let mut rng = Rng(seed);
    let plain: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
    let d = LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap();
    d.write_at(&plain, 0).unwrap();
    d.flush().unwrap();
    (mem.snapshot(), plain)
}

fn params(res: ResilienceChoice, sector: Option<u32>) -> InitParams {
    InitParams {
        new: NewEncryption {
            sector_size: sector,
            ..Default::default()
        },
        resilience: res,
        hash: HashAlg::Sha256,
        keyslot: pbkdf2(),
    }
}

/// Start (when `init`) or resume a reencryption on `dev` and run it to the end.
fn reencrypt(dev: Arc<dyn BlockDriver>, init: Option<&InitParams>) -> Result<()> {
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default())?;
    let (old, new) = match (vol.reencrypt_state()?, init) {
        (Some(st), _) => (
            vol.unlock_digest(PW, st.old_digest.unwrap())?,
            vol.unlock_digest(PW, st.new_digest.unwrap())?,
        ),
        (None, Some(p)) => {
            let old = vol.unlock(PW, None)?.volume_key;
            let (nk, _) = vol.reencrypt_init(&old, PW, p)?;
            (old, nk)
        }
        (None, None) => return Ok(()),
    };
    Reencryption::load(&mut vol, dev, &old, &new, Some(HOTZONE))?.run(&mut |_| {}, &|| true)?;
    Ok(())
}

/// The plaintext of a finished (no requirement) image.
fn plaintext(img: Vec<u8>) -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(img));
    let vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
    assert!(
        vol.requirements().unwrap().mandatory.is_empty(),
        "requirements left: {:?}",
        vol.requirements().unwrap()
    );
    assert!(vol.reencrypt_state().unwrap().is_none());
    let d = LuksDriver::open(mem, None, Some(PW), None, &KdfLimits::default()).unwrap();
    let mut out = vec![0u8; SIZE];
    d.read_at(&mut out, 0).unwrap();
    out
}

/// (reencryption in progress, a hotzone was interrupted)
fn in_progress(img: &[u8]) -> (bool, bool) {
    let vol = Luks2Volume::open(
        Arc::new(MemDriver::new(img.to_vec())),
        false,
        &KdfLimits::default(),
    )
    .expect("an interrupted image must keep a valid header");
    match vol.reencrypt_state().unwrap() {
        Some(st) => (true, st.hot_segment().is_some()),
        None => (false, false),
    }
}

fn cryptsetup(args: &[&str], pw: &std::path::Path, img: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("cryptsetup")
        .args(args)
        .arg("--key-file")
        .arg(pw)
        .arg(img)
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Finish `img` with `cryptsetup reencrypt --resume-only` (after `cryptsetup repair`,
/// which cryptsetup asks for when a hotzone was interrupted); returns the image after.
fn cryptsetup_resume(img: &[u8], hot: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (path, pw) = (dir.path().join("img"), dir.path().join("pw"));
    std::fs::write(&path, img).unwrap();
    std::fs::write(&pw, PW).unwrap();
    if hot {
        let (ok, err) = cryptsetup(&["repair", "-q"], &pw, &path);
        assert!(ok, "cryptsetup could not recover the hotzone: {err}");
        let after = std::fs::read(&path).unwrap();
        let (running, hot) = in_progress(&after);
        assert!(!hot, "cryptsetup repair left a hotzone");
        if !running {
            return after;
        }
    }
    let (ok, err) = cryptsetup(
        &[
            "reencrypt",
            "--resume-only",
            "--force-offline-reencrypt",
            "-q",
        ],
        &pw,
        &path,
    );
    assert!(ok, "cryptsetup could not resume: {err}");
    std::fs::read(&path).unwrap()
}

/// Every write of a reencryption, interrupted whole and torn; both tools resume.
fn every_write(sector: u32, res: ResilienceChoice, new_sector: Option<u32>) {
    let (img, plain) = base(sector, u64::from(sector) + 7);
    let p = params(res, new_sector);
    let full = Arc::new(FaultyDriver::new(
        Arc::new(MemDriver::new(img.clone())),
        usize::MAX,
    ));
    reencrypt(full.clone(), Some(&p)).unwrap();
    let total = full.writes_done();
    assert!(total > 20, "only {total} writes for 4 hotzones");
    let mut resumed_by_cryptsetup = 0;
    for torn in [false, true] {
        for budget in 0..total {
            let what = format!("{sector}-byte sectors, {res:?}, torn {torn}, write #{budget}");
            let mem = Arc::new(MemDriver::new(img.clone()));
            let faulty = Arc::new(if torn {
                FaultyDriver::torn_half(mem.clone(), budget)
            } else {
                FaultyDriver::new(mem.clone(), budget)
            });
            assert!(reencrypt(faulty, Some(&p)).is_err(), "{what}: no fault hit");
            let left = mem.snapshot();
            let ours = Arc::new(MemDriver::new(left.clone()));
            reencrypt(ours.clone(), None).unwrap_or_else(|e| panic!("{what}: resume: {e}"));
            assert!(
                plaintext(ours.snapshot()) == plain,
                "{what}: vmcrypt resume"
            );
            let (running, hot) = in_progress(&left);
            if running {
                resumed_by_cryptsetup += 1;
                let theirs = cryptsetup_resume(&left, hot);
                assert!(plaintext(theirs) == plain, "{what}: cryptsetup resume");
            }
        }
    }
    assert!(
        resumed_by_cryptsetup > total,
        "too few interruptions in progress"
    );
}

#[test]
fn checksum_512_every_write() {
    every_write(512, ResilienceChoice::Checksum, None);
}

#[test]
fn checksum_4096_every_write() {
    every_write(4096, ResilienceChoice::Checksum, None);
}

#[test]
fn journal_512_every_write() {
    every_write(512, ResilienceChoice::Journal, None);
}

#[test]
fn journal_4096_every_write() {
    every_write(4096, ResilienceChoice::Journal, None);
}

#[test]
fn checksum_sector_size_change_every_write() {
    every_write(512, ResilienceChoice::Checksum, Some(4096));
}

/// Resilience `none` is not crash-safe inside a hotzone (nor in cryptsetup), but a
/// run paused between hotzones resumes in either tool.
#[test]
fn none_paused_resumes_in_both_tools() {
    for sector in [512, 4096] {
        let (img, plain) = base(sector, 3);
        let mem = Arc::new(MemDriver::new(img));
        let dev: Arc<dyn BlockDriver> = mem.clone();
        let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default()).unwrap();
        let old = vol.unlock(PW, None).unwrap().volume_key;
        let (nk, _) = vol
            .reencrypt_init(&old, PW, &params(ResilienceChoice::None, None))
            .unwrap();
        let steps = std::cell::Cell::new(0);
        let mut r = Reencryption::load(&mut vol, dev, &old, &nk, Some(HOTZONE)).unwrap();
        let done = r
            .run(&mut |_| steps.set(steps.get() + 1), &|| steps.get() < 2)
            .unwrap();
        assert!(!done);
        assert_eq!(r.position().unwrap().done, 2 * HOTZONE);
        let left = mem.snapshot();
        assert!(plaintext(cryptsetup_resume(&left, false)) == plain);
        let ours = Arc::new(MemDriver::new(left));
        reencrypt(ours.clone(), None).unwrap();
        assert!(plaintext(ours.snapshot()) == plain);
    }
}

/// A wrong passphrase or a tampered reencryption keyslot is refused before any write.
#[test]
fn tampered_metadata_is_refused() {
    let (img, _) = base(512, 5);
    let mem = Arc::new(MemDriver::new(img));
    let dev: Arc<dyn BlockDriver> = mem.clone();
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default()).unwrap();
    let old = vol.unlock(PW, None).unwrap().volume_key;
    let (nk, _) = vol
        .reencrypt_init(&old, PW, &params(ResilienceChoice::Checksum, None))
        .unwrap();
    drop(vol);
    // Flip the direction in both header copies' JSON (checksums recomputed).
    let edited = with_edited_metadata(&mem.snapshot(), |v| {
        for ks in v["keyslots"].as_object_mut().unwrap().values_mut() {
            if ks["type"] == "reencrypt" {
                ks["area"]["size"] = serde_json::Value::String("4096".into());
            }
        }
    });
    mem.write_at(&edited, 0).unwrap();
    let before = mem.snapshot();
    let dev: Arc<dyn BlockDriver> = mem.clone();
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default()).unwrap();
    let e = Reencryption::load(&mut vol, dev, &old, &nk, None)
        .err()
        .expect("tampered metadata accepted");
    assert!(e.to_string().contains("verification digest"), "{e}");
    assert!(mem.snapshot() == before, "a refused resume wrote");
    assert!(vol.unlock_digest(b"wrong", 0).is_err());
}

/// cryptsetup removes the old key slots one header write at a time before its final
/// write; killed in between, the old digest has no key slot left. vmcrypt finishes that
/// state from the new key alone, writing metadata only.
#[test]
fn finished_data_without_old_key_slots_is_finalised() {
    let (img, plain) = base(4096, 9);
    let mem = Arc::new(MemDriver::new(img));
    let dev: Arc<dyn BlockDriver> = mem.clone();
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default()).unwrap();
    let old = vol.unlock(PW, None).unwrap().volume_key;
    let (nk, _) = vol
        .reencrypt_init(&old, PW, &params(ResilienceChoice::Checksum, None))
        .unwrap();
    drop(vol);
    let started = mem.snapshot();
    // The data as a full run leaves it, from a copy with the same keys.
    let copy = Arc::new(MemDriver::new(started.clone()));
    let cdev: Arc<dyn BlockDriver> = copy.clone();
    let mut cvol = Luks2Volume::open(cdev.clone(), false, &KdfLimits::default()).unwrap();
    Reencryption::load(&mut cvol, cdev, &old, &nk, Some(HOTZONE))
        .unwrap()
        .run(&mut |_| {}, &|| true)
        .unwrap();
    let done = copy.snapshot();
    // cryptsetup's state: data all new, one new segment, old slot 0 gone.
    let edited = with_edited_metadata(&started, |v| {
        let segs = v["segments"].as_object().unwrap().clone();
        let new_seg = {
            let mut s = segs["2"].clone();
            s.as_object_mut().unwrap().remove("flags");
            s
        };
        v["segments"] = serde_json::json!({"0": new_seg, "1": segs["1"], "2": segs["2"]});
        v["keyslots"].as_object_mut().unwrap().remove("0");
        v["digests"]["0"]["keyslots"] = serde_json::json!([]);
        v["digests"]["0"]["segments"] = serde_json::json!(["1"]);
        v["digests"]["1"]["segments"] = serde_json::json!(["0", "2"]);
    });
    let mut img = done.clone();
    let n = 2 * (16 << 10);
    img[..n].copy_from_slice(&edited[..n]);
    let mem = Arc::new(MemDriver::new(img));
    let dev: Arc<dyn BlockDriver> = mem.clone();
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default()).unwrap();
    let st = vol.reencrypt_state().unwrap().unwrap();
    assert!(vol.unlock_digest(PW, st.old_digest.unwrap()).is_err());
    let new_key = vol.unlock_digest(PW, st.new_digest.unwrap()).unwrap();
    vol.reencrypt_finish_done(dev.as_ref(), &new_key).unwrap();
    assert!(plaintext(mem.snapshot()) == plain);
}

/// A node served through an online run from 4096- to 512-byte sectors aligns its
/// requests to 4096 bytes while the run goes and to 512 once it has finished (so
/// 512-byte writes are no longer read-modify-written); its size never changes and
/// every write reads back, as does the plaintext after a reopen.
#[test]
fn online_run_to_smaller_sectors_drops_the_request_sector_when_finished() {
    let (img, mut plain) = base(4096, 61);
    let mem = Arc::new(MemDriver::new(img));
    let d = LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap();
    let size = d.size();
    assert_eq!(d.sector_size(), 4096);
    let online = d
        .start_reencryption(PW, None, &params(ResilienceChoice::Journal, Some(512)))
        .expect("a LUKS node can reencrypt")
        .unwrap();
    assert_eq!(d.sector_size(), 4096, "while the run goes");
    online.start(Some(HOTZONE)).unwrap();
    online.wait_stopped();
    assert_eq!(online.status().state.name(), "finished");
    assert_eq!(d.sector_size(), 512, "once the run has finished");
    assert_eq!(d.size(), size);
    let piece = [0x5au8; 512];
    d.write_at(&piece, 512 * 7).unwrap();
    plain[512 * 7..512 * 8].copy_from_slice(&piece);
    let mut out = vec![0u8; SIZE];
    d.read_at(&mut out, 0).unwrap();
    assert!(out == plain, "the data through the finished node");
    d.flush().unwrap();
    assert!(
        plaintext(mem.snapshot()) == plain,
        "the data after a reopen"
    );
}

/// Writes into the 64 KiB stripes `k` owns (`k` of `of`), many not sector-aligned,
/// each read back at once and recorded in `model`, until `stop`.
fn stripe_writer(
    d: &LuksDriver,
    model: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
    n: &AtomicU64,
    k: u64,
    of: u64,
) {
    const STRIPE: u64 = 64 << 10;
    let mut rng = Rng(k * 7919 + 1);
    while !stop.load(Ordering::SeqCst) {
        let stripe = (rng.next() % (SIZE as u64 / STRIPE / of)) * of + k;
        let off = stripe * STRIPE + rng.next() % STRIPE;
        let len = (1 + rng.next() % 8192).min(STRIPE - off % STRIPE);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        d.write_at(&data, off).unwrap();
        let mut back = vec![0u8; len as usize];
        d.read_at(&mut back, off).unwrap();
        assert!(back == data, "write at {off}+{len} read back differently");
        model.lock().unwrap()[off as usize..(off + len) as usize].copy_from_slice(&data);
        n.fetch_add(1, Ordering::SeqCst);
    }
}

/// Wait until `n` has reached `at_least` (writers are making progress).
fn wait_for(n: &AtomicU64, at_least: u64) {
    let t = std::time::Instant::now();
    while n.load(Ordering::SeqCst) < at_least {
        assert!(t.elapsed().as_secs() < 60, "the writers stalled");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A node served through an online run (opened on an image in reencryption state, or
/// started while served), with writers from before the run starts until after it has
/// finished: once finished, the node has handed itself over to the new key. It no
/// longer serves through the run, the old key is no longer held, and it reports the
/// key slot, cipher and sector size a fresh open of the finished header reports. Every
/// write reads back through it as in the model, and it encrypts as a fresh open
/// does (what one writes, the other reads).
#[test]
fn finished_online_run_hands_the_node_over_to_the_new_key() {
    for (sector, new_sector, started_while_served) in [
        (4096, Some(512), true),
        (512, None, false),
        (512, Some(4096), false),
    ] {
        let what =
            format!("{sector} -> {new_sector:?}, started while served: {started_while_served}");
        let (img, plain) = base(sector, 71 + u64::from(sector));
        let mem = Arc::new(MemDriver::new(img));
        let p = params(ResilienceChoice::Checksum, new_sector);
        let open = || LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default());
        if !started_while_served {
            let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
            let old = vol.unlock(PW, None).unwrap().volume_key;
            vol.reencrypt_init(&old, PW, &p).unwrap();
        }
        let d = open().unwrap();
        let served_size = d.size();
        let online = match started_while_served {
            true => d.start_reencryption(PW, None, &p).unwrap().unwrap(),
            false => d.as_reencryption().expect("opened in reencryption state"),
        };
        assert!(d.serves_reencryption(), "{what}");
        assert!(online.status().old_key_held, "{what}");
        let meta_only = || LuksDriver::open(mem.clone(), None, None, None, &KdfLimits::default());
        let reqs = header_as_fresh(&d, &meta_only().unwrap(), &format!("{what}, run started"));
        assert!(
            reqs.iter().any(|r| r.starts_with("online-reencrypt")),
            "{what}: the live header is not in reencryption: {reqs:?}"
        );
        let old_slot = d.unlocked_slot();
        let model = Mutex::new(plain);
        let (stop, n) = (AtomicBool::new(false), AtomicU64::new(0));
        std::thread::scope(|s| {
            for k in 0..3 {
                let (d, model, stop, n) = (&d, &model, &stop, &n);
                s.spawn(move || stripe_writer(d, model, stop, n, k, 3));
            }
            wait_for(&n, 30);
            online.start(Some(HOTZONE)).unwrap();
            online.wait_stopped();
            wait_for(&n, n.load(Ordering::SeqCst) + 300);
            stop.store(true, Ordering::SeqCst);
        });
        let st = online.status();
        assert_eq!(st.state.name(), "finished", "{what}: {st:?}");
        assert!(
            !d.serves_reencryption(),
            "{what}: still serves through the run"
        );
        assert!(!st.old_key_held, "{what}: the old key is still held");

        let fresh = open().unwrap();
        assert!(!fresh.serves_reencryption() && fresh.as_reencryption().is_none());
        assert_eq!(st.header_error, None, "{what}");
        let reqs = header_as_fresh(&d, &fresh, &format!("{what}, finished"));
        assert!(reqs.is_empty(), "{what}: requirements left: {reqs:?}");
        finished_info(&d, &what);
        assert_ne!(
            d.unlocked_slot(),
            old_slot,
            "{what}: the old key's slot is gone"
        );
        assert_eq!(d.unlocked_slot(), fresh.unlocked_slot(), "{what}: key slot");
        assert_eq!(st.target.unwrap().key_slot, fresh.unlocked_slot(), "{what}");
        assert_eq!(d.data_spec(), fresh.data_spec(), "{what}: cipher");
        assert_eq!(d.sector_size(), fresh.sector_size(), "{what}: sector size");
        assert_eq!(d.size(), fresh.size(), "{what}: size");
        assert_eq!(
            d.size(),
            served_size,
            "{what}: the size changed while served"
        );
        let info = vmcrypt_block::jobs::info::image_info(&d);
        assert_eq!(info["virtual-size"], served_size, "{what}: info's size");

        let want = model.into_inner().unwrap();
        for (node, name) in [(&d, "the handed-over node"), (&fresh, "a fresh open")] {
            let mut out = vec![0u8; SIZE];
            node.read_at(&mut out, 0).unwrap();
            assert!(out == want, "{what}: {name} differs from the model");
        }
        // What one writes, the other reads: the same encryption.
        for (w, r, at) in [(&d, &fresh, 8192u64), (&fresh, &d, 20480)] {
            let piece: Vec<u8> = (0..4096u32).map(|i| (i * 13 + at as u32) as u8).collect();
            w.write_at(&piece, at).unwrap();
            let mut back = vec![0u8; piece.len()];
            r.read_at(&mut back, at).unwrap();
            assert!(
                back == piece,
                "{what}: a write at {at} reads back differently"
            );
        }
    }
}

/// The live node `d` describes its header as `fresh`, a new open of the same device,
/// does: the same metadata and sequence id, the same `info` block, and `check` finds
/// nothing. Returns the header's mandatory requirements.
#[track_caller]
fn header_as_fresh(d: &LuksDriver, fresh: &LuksDriver, what: &str) -> Vec<String> {
    let (ours, theirs) = (d.luks2().unwrap(), fresh.luks2().unwrap());
    assert_eq!(
        ours.header().metadata.to_value(),
        theirs.header().metadata.to_value(),
        "{what}: the live node's LUKS2 metadata is not the device's"
    );
    assert_eq!(ours.header().binary.seqid, theirs.header().binary.seqid);
    let info = |n: &LuksDriver| n.as_introspect().unwrap().format_specific().unwrap();
    assert_eq!(info(d), info(fresh), "{what}: info");
    assert_eq!(
        d.as_check().unwrap().check(),
        Vec::<String>::new(),
        "{what}"
    );
    ours.requirements().unwrap().mandatory
}

/// The live node's `info` block after a finished run names the new key's slot (and
/// only slots that open the new key: no `reencrypt` keyslot, not the old key's), the
/// new cipher and the new sector size, and no requirement.
#[track_caller]
fn finished_info(d: &LuksDriver, what: &str) {
    let info = d.as_introspect().unwrap().format_specific().unwrap();
    let ids: Vec<u64> = info["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["type"], "luks2", "{what}: {info}");
            k["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        [u64::from(d.unlocked_slot().unwrap())],
        "{what}: {info}"
    );
    let spec = d.data_spec().unwrap();
    assert_eq!(info["cipher"], spec.luks2_encryption(), "{what}: {info}");
    assert_eq!(info["sector-size"], d.sector_size(), "{what}: {info}");
    assert_eq!(
        info["requirements"],
        serde_json::json!([]),
        "{what}: {info}"
    );
}

/// A device whose header area stops answering reads once a header without the
/// reencryption requirement (a finished run's) has been written to it.
struct HeaderUnreadableAfterFinish {
    inner: Arc<MemDriver>,
    gone: AtomicBool,
}

impl BlockDriver for HeaderUnreadableAfterFinish {
    fn driver_name(&self) -> &'static str {
        "file"
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset < DATA_OFFSET && self.gone.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Io, "header area unreadable (test)"));
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let header = buf.starts_with(b"LUKS\xba\xbe") || buf.starts_with(b"SKUL\xba\xbe");
        let in_reencryption = buf.windows(16).any(|w| w == b"online-reencrypt");
        if header && !in_reencryption {
            self.gone.store(true, Ordering::SeqCst);
        }
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// When the header a finished run wrote cannot be read back, the hand-over still
/// happens (the node serves the new key, the old one is dropped) and the run's status
/// says why the node's header view is the one from before the finish; the data reads
/// and writes as before, and the header on the device is the finished one.
#[test]
fn unreadable_header_after_the_finish_is_reported_and_the_node_serves_on() {
    let (img, mut plain) = base(512, 81);
    let mem = Arc::new(MemDriver::new(img));
    let p = params(ResilienceChoice::Journal, None);
    let mut vol = Luks2Volume::open(mem.clone(), false, &KdfLimits::default()).unwrap();
    let old = vol.unlock(PW, None).unwrap().volume_key;
    vol.reencrypt_init(&old, PW, &p).unwrap();
    let dev = Arc::new(HeaderUnreadableAfterFinish {
        inner: mem.clone(),
        gone: AtomicBool::new(false),
    });
    let d = LuksDriver::open(dev.clone(), None, Some(PW), None, &KdfLimits::default()).unwrap();
    let online = d.as_reencryption().unwrap();
    online.start(Some(HOTZONE)).unwrap();
    online.wait_stopped();
    let st = online.status();
    assert!(
        dev.gone.load(Ordering::SeqCst),
        "the finished header was never written"
    );
    assert_eq!(st.state.name(), "finished", "{st:?}");
    assert!(!st.old_key_held && !d.serves_reencryption());
    let why = st
        .header_error
        .expect("the failed re-read is in the status");
    assert!(
        why.contains("could not be read back") && why.contains("header area unreadable"),
        "{why}"
    );
    assert!(
        d.luks2().unwrap().reencrypt_state().unwrap().is_some(),
        "the view stays the one from before the finish"
    );
    let piece = [0xa5u8; 4096];
    d.write_at(&piece, 8192).unwrap();
    plain[8192..8192 + 4096].copy_from_slice(&piece);
    let mut out = vec![0u8; SIZE];
    d.read_at(&mut out, 0).unwrap();
    assert!(out == plain, "the data through the node");
    d.flush().unwrap();
    assert_eq!(in_progress(&mem.snapshot()), (false, false));
    assert!(
        plaintext(mem.snapshot()) == plain,
        "the data after a reopen"
    );
}
