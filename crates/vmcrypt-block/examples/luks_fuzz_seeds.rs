//! Writes the template images of the `luks_driver` fuzz target (see fuzz/README.md):
//! small LUKS1 and LUKS2 images with passphrase "pw" in one PBKDF2 slot of 1000
//! iterations, and LUKS2 images left in a reencryption by vmcrypt's engine (each
//! resilience mode; a hotzone interrupted by an injected write failure, or a run paused
//! between hotzones). fuzz/seed_luks.sh runs it and adds cryptsetup-made images.
//!
//! Usage: `luks_fuzz_seeds OUTDIR`
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::reencrypt::init::{InitParams, NewEncryption};
use vmcrypt_block::drivers::luks::v2::reencrypt::{Reencryption, ResilienceChoice};
use vmcrypt_block::drivers::luks::{
    CreateParams, KdfKind, KeyslotParams, LuksDriver, Version, Volume,
};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};
use vmcrypt_error::{Error, Result};

const PW: &[u8] = b"pw";
/// Two 16 KiB header copies, then room for three 16-byte-key slots (64000 bytes each)
/// and a reencryption area.
const DATA_OFFSET: u64 = 288 << 10;
const DATA: u64 = 32 << 10;
const HOTZONE: u64 = 8 << 10;

fn pbkdf2() -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    }
}

/// A fresh image made with `p` (LUKS2: 16 KiB header copies, data at [`DATA_OFFSET`])
/// with patterned plaintext in its 32 KiB of data.
fn image(mut p: CreateParams) -> Result<Arc<MemDriver>> {
    let mem = Arc::new(MemDriver::new(Vec::new()));
    p.keyslot = pbkdf2();
    if p.version == Version::V2 {
        p.data_offset = Some(DATA_OFFSET);
        p.hdr_size = 16 << 10;
        p.keyslots_size = Some(DATA_OFFSET - (32 << 10));
    }
    Volume::create(mem.clone(), &p, PW)?;
    mem.resize(mem.size().max(DATA_OFFSET) + DATA)?;
    let d = LuksDriver::open(mem.clone(), None, Some(PW), None, &KdfLimits::default())?;
    let plain: Vec<u8> = (0..DATA).map(|i| (i * 7 + i / 512) as u8).collect();
    d.write_at(&plain, 0)?;
    d.flush()?;
    Ok(mem)
}

fn essiv() -> CipherSpec {
    CipherSpec::from_luks2("aes-cbc-essiv:sha256", 16).expect("a known cipher")
}

/// Start a reencryption of `mem` and run it through a node that fails after `budget`
/// writes (`None`: pause after the first hotzone instead).
fn reencrypt(mem: &Arc<MemDriver>, p: &InitParams, budget: Option<usize>) -> Result<()> {
    let dev: Arc<dyn BlockDriver> = match budget {
        Some(b) => Arc::new(FaultyDriver::new(mem.clone(), b)),
        None => mem.clone(),
    };
    let mut vol = Luks2Volume::open(dev.clone(), false, &KdfLimits::default())?;
    let old = vol.unlock(PW, None)?.volume_key;
    let (new, _) = vol.reencrypt_init(&old, PW, p)?;
    let steps = std::cell::Cell::new(0);
    let mut r = Reencryption::load(&mut vol, dev, &old, &new, Some(HOTZONE))?;
    r.run(&mut |_| steps.set(steps.get() + 1), &|| steps.get() < 1)?;
    Ok(())
}

/// The image after a reencryption in `res` was interrupted inside its second hotzone
/// (the smallest write budget that leaves a hotzone in the header, past the first).
fn interrupted(base: &[u8], res: ResilienceChoice, sector: Option<u32>) -> Result<Vec<u8>> {
    let p = InitParams {
        new: NewEncryption {
            sector_size: sector,
            ..Default::default()
        },
        resilience: res,
        hash: HashAlg::Sha256,
        keyslot: pbkdf2(),
    };
    let mut hot_seen = 0;
    for budget in 0..200 {
        let mem = Arc::new(MemDriver::new(base.to_vec()));
        if reencrypt(&mem, &p, Some(budget)).is_ok() {
            continue;
        }
        let img = mem.snapshot();
        let vol = Luks2Volume::open(
            Arc::new(MemDriver::new(img.clone())),
            false,
            &KdfLimits::default(),
        )?;
        if vol
            .reencrypt_state()?
            .is_some_and(|s| s.hot_segment().is_some())
        {
            hot_seen += 1;
            if hot_seen == 2 {
                return Ok(img);
            }
        }
    }
    Err(Error::usage(format!("{res:?}: no interrupted hotzone")))
}

fn run(out: &Path) -> Result<()> {
    let write = |name: &str, img: &[u8]| {
        std::fs::write(out.join(name), img)
            .map_err(|e| Error::usage(format!("writing {name}: {e}")))
    };
    write(
        "luks1.img",
        &image(CreateParams::luks1(essiv()))?.snapshot(),
    )?;
    let mut p2 = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 32)?);
    p2.sector_size = 4096;
    write("luks2.img", &image(p2)?.snapshot())?;
    let mut p512 = CreateParams::luks2(essiv());
    p512.sector_size = 512;
    let base = image(p512)?.snapshot();
    for (name, res, sector) in [
        ("reenc-checksum.img", ResilienceChoice::Checksum, None),
        ("reenc-journal.img", ResilienceChoice::Journal, None),
        (
            "reenc-checksum-to4096.img",
            ResilienceChoice::Checksum,
            Some(4096),
        ),
    ] {
        write(name, &interrupted(&base, res, sector)?)?;
    }
    let mem = Arc::new(MemDriver::new(base));
    let none = InitParams {
        new: NewEncryption::default(),
        resilience: ResilienceChoice::None,
        hash: HashAlg::Sha256,
        keyslot: pbkdf2(),
    };
    reencrypt(&mem, &none, None)?;
    write("reenc-none-paused.img", &mem.snapshot())
}

fn main() -> ExitCode {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: luks_fuzz_seeds OUTDIR");
        return ExitCode::from(2);
    };
    match run(Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luks_fuzz_seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
