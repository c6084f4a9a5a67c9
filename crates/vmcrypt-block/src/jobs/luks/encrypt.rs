//! `vmcrypt luks reencrypt --encrypt`: encrypt a plain device in place, offline, in
//! cryptsetup's LUKS2 reencryption format, so that either tool can resume the other's
//! run. With `--reduce-device-size` the header goes into the freed space at the start
//! (the data is shifted, resilience `datashift`); with `--header FILE` the header is a
//! new detached file and the data stays in place (resilience checksum, journal or none).
//! The device is locked as an image for the whole run.
use super::reencrypt::{ReencryptReport, end_position, run_steps};
use super::slots::NewKeyslot;
use super::{KeySource, Target};
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::params::{CreateParams, DEFAULT_DATA_OFFSET, DEFAULT_HDR_SIZE};
use crate::drivers::luks::v2::reencrypt::ResilienceChoice;
use crate::drivers::luks::v2::reencrypt::encrypt::Encryption;
use crate::drivers::luks::v2::reencrypt::encrypt_init::{
    EncryptParams, encrypt_init, has_luks_magic, plan,
};
use crate::drivers::luks::{Luks2Volume, Version};
use crate::jobs::Events;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, SecretBytes};
use vmcrypt_error::{Result, ResultExt, ensure};

/// cryptsetup's defaults for `reencrypt --encrypt`.
const DEFAULT_CIPHER: &str = "aes-xts-plain64";
const DEFAULT_SECTOR: u32 = 512;

/// What to encrypt and how.
#[derive(Clone, Debug, Default)]
pub struct EncryptRequest {
    /// LUKS2 cipher name (default aes-xts-plain64).
    pub cipher: Option<String>,
    /// Volume key size in bytes (default 64 for XTS, else 32).
    pub key_size: Option<usize>,
    /// Encryption sector size (default 512, as cryptsetup's encryption).
    pub sector_size: Option<u32>,
    /// `--reduce-device-size` in bytes (else a detached header is required).
    pub reduce: Option<u64>,
    /// Resilience of a detached-header run: checksum (default), journal or none; a
    /// shifted run takes only datashift.
    pub resilience: Option<String>,
    pub resilience_hash: Option<String>,
    pub hotzone_size: Option<u64>,
    pub init_only: bool,
    pub keyslot: NewKeyslot,
    pub max_hotzones: Option<u64>,
}

/// Refuse bad options before anything is opened: returns the start parameters.
fn params(t: &Target, req: &EncryptRequest) -> Result<EncryptParams> {
    ensure!(
        req.reduce.is_some() != t.header.is_some(),
        Usage,
        "--encrypt needs either --reduce-device-size (header in the device) or --header \
         (a detached header file), not both"
    );
    let resilience = match (req.reduce, req.resilience.as_deref()) {
        // Unused: a shift is protected by datashift, which hashes nothing.
        (Some(_), None | Some("datashift")) => ResilienceChoice::None,
        (Some(_), Some(r)) => vmcrypt_error::bail!(
            Usage,
            "--reduce-device-size uses resilience datashift, not \"{r}\""
        ),
        (None, r) => ResilienceChoice::from_name(r.unwrap_or("checksum"))?,
    };
    let cipher = req.cipher.as_deref().unwrap_or(DEFAULT_CIPHER);
    let key_size = req
        .key_size
        .unwrap_or(if cipher.contains("-xts-") { 64 } else { 32 });
    let spec = CipherSpec::from_luks2(cipher, key_size)
        .with_ctx(|| format!("cipher '{cipher}' with a {}-bit key", key_size * 8))?;
    let mut create = CreateParams::luks2(spec);
    create.sector_size = req.sector_size.unwrap_or(DEFAULT_SECTOR);
    create.hdr_size = DEFAULT_HDR_SIZE;
    create.keyslot = req.keyslot.params(Version::V2)?;
    if let Some(z) = req.hotzone_size {
        ensure!(
            z > 0 && z.is_multiple_of(4096),
            Usage,
            "--hotzone-size {z} is not a positive multiple of 4096 bytes"
        );
    }
    Ok(EncryptParams {
        create,
        resilience,
        hash: resilience.hash(req.resilience_hash.as_deref())?,
        reduce: req.reduce,
    })
}

/// Start and run an encryption of the plain device `t.device`.
pub fn encrypt(
    t: &Target,
    req: &EncryptRequest,
    keys: &mut dyn KeySource,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let p = params(t, req)?;
    let data: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(Path::new(&t.device), false)?);
    ensure!(
        !has_luks_magic(data.as_ref())?,
        Usage,
        "{}: the device already has a LUKS header (it is encrypted; use reencrypt without \
         --encrypt for a new volume key)",
        t.device
    );
    let pl = plan(data.size(), &p).with_ctx(|| format!("device {}", t.device))?;
    let hdev: Arc<dyn BlockDriver> = match &t.header {
        None => data.clone(),
        Some(h) => {
            if Path::new(h).exists() {
                let old = FileDriver::open(Path::new(h), true)?;
                ensure!(
                    !has_luks_magic(&old)?,
                    Usage,
                    "{h}: the header file already holds a LUKS header"
                );
            }
            Arc::new(FileDriver::create_private(
                Path::new(h),
                DEFAULT_DATA_OFFSET,
            )?)
        }
    };
    let pass = keys.new_passphrase()?;
    let key = encrypt_init(hdev.clone(), data.as_ref(), &p, pl, pass.as_bytes())
        .with_ctx(|| format!("device {}", t.device))?;
    let mut vol = Luks2Volume::open(hdev, t.header.is_some(), &t.limits)?;
    let mut report = run(&mut vol, data, &key, req, events)?;
    report.started = true;
    report.new_slot = Some(0);
    Ok(report)
}

/// Resume the encryption in progress on `vol` (data on `data`) with `pass`.
pub fn resume(
    vol: &mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    pass: &[u8],
    req: &EncryptRequest,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let Some(st) = vol.encrypt_state()? else {
        vmcrypt_error::bail!(Usage, "no LUKS2 encryption is in progress");
    };
    let key = vol.unlock_digest(pass, st.new_digest)?;
    if req.resilience.is_some() {
        events.warning("the resilience of an encryption in progress is kept as stored");
    }
    run(vol, data, &key, req, events)
}

fn run(
    vol: &mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    key: &SecretBytes,
    req: &EncryptRequest,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let mut r = Encryption::load(vol, data, key, req.hotzone_size)?;
    let start = r.position()?;
    let report = |finished, position| ReencryptReport {
        started: false,
        finished,
        position,
        new_slot: None,
    };
    if req.init_only {
        return Ok(report(false, start));
    }
    let finished = run_steps(events, start, req.max_hotzones, &mut |p, k| r.run(p, k))?;
    let position = end_position(finished, start, || r.position())?;
    Ok(report(finished, position))
}
