//! `vmcrypt luks reencrypt`: a new volume key for a LUKS2 device, offline, in
//! cryptsetup's reencryption format (so either tool can resume the other's run).
//! The whole image is locked; the header and the data are rewritten in place.
//!
//! A LUKS1 header goes through LUKS2 and back: it is converted in place (crash-safe,
//! `luks convert`), marked with a [`LUKS1_MARK`] token (cryptsetup ignores token types
//! it does not know), reencrypted with a LUKS1-compatible new key slot (PBKDF2 with
//! the header's hash), and converted back once finished. An interruption leaves a
//! LUKS2 image that `--resume-only` finishes, conversion back included; only one
//! between the last reencryption write and the conversion leaves a re-keyed LUKS2
//! image without the mark (`luks convert --type luks1` finishes it).
use super::{Access, KeySource, Target};
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::Version;
use crate::drivers::luks::convert::convert_to;
use crate::drivers::luks::v2::reencrypt::init::{InitParams, NewEncryption};
use crate::drivers::luks::v2::reencrypt::{Position, Reencryption, ResilienceChoice};
use crate::drivers::luks::{Luks2Volume, Unlocked, Volume, is_data_sector_size};
use crate::jobs::Events;
use crate::jobs::luks::slots::NewKeyslot;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_error::{ErrorKind, Result, ResultExt, bail, ensure};

/// What to do.
#[derive(Clone, Debug, Default)]
pub struct ReencryptRequest {
    pub new: NewEncryption,
    /// "checksum" (default), "journal" or "none".
    pub resilience: Option<String>,
    /// Checksum hash (default sha256).
    pub resilience_hash: Option<String>,
    /// Bytes per hotzone (default 64 MiB, bounded by the resilience area).
    pub hotzone_size: Option<u64>,
    /// Only continue a reencryption already in progress.
    pub resume_only: bool,
    /// Only write the reencryption metadata (start nothing).
    pub init_only: bool,
    /// The key slot whose passphrase is used (others are dropped at the end).
    pub key_slot: Option<u32>,
    pub keyslot: NewKeyslot,
    /// Stop cleanly after this many hotzones (tests, pausing).
    pub max_hotzones: Option<u64>,
    /// Decrypt (a LUKS2 device with a detached header) instead of a new volume key.
    pub decrypt: bool,
}

impl ReencryptRequest {
    /// The options that apply to resuming an encryption in place.
    fn as_encrypt(&self) -> super::encrypt::EncryptRequest {
        super::encrypt::EncryptRequest {
            resilience: self.resilience.clone(),
            hotzone_size: self.hotzone_size,
            init_only: self.init_only,
            max_hotzones: self.max_hotzones,
            ..Default::default()
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencryptReport {
    /// The reencryption was started by this run (else resumed).
    pub started: bool,
    /// Finished (else paused; resume with `--resume-only`).
    pub finished: bool,
    pub position: Position,
    /// Key slot of the new volume key (when started here).
    pub new_slot: Option<u32>,
}

/// Type of the token that marks a LUKS1 image being re-keyed through LUKS2.
pub const LUKS1_MARK: &str = "vmcrypt-luks1-rekey";

/// Run (start or resume) a reencryption of `t`.
pub fn reencrypt(
    t: &Target,
    req: &ReencryptRequest,
    keys: &mut dyn KeySource,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    precheck(req)?;
    if req.decrypt && super::decrypt::precheck(t)? {
        return super::decrypt_shift::start(t, req, keys, events);
    }
    let h = t.header_device(Access::WholeImage)?;
    super::embedded::require_plain(h.container, &t.device, "reencrypt")?;
    let data: Arc<dyn BlockDriver> = match &t.header {
        Some(_) => Arc::new(FileDriver::open(Path::new(&t.device), false)?),
        None => h.dev.clone(),
    };
    let open = || {
        Volume::open(h.dev.clone(), h.detached, &t.limits)
            .with_ctx(|| format!("device {}", t.device))
    };
    let mut vol = open()?;
    ensure!(
        !(req.decrypt && vol.version() == Version::V1),
        Unsupported,
        "{}: decrypting a LUKS1 device is not supported (convert it to LUKS2 first)",
        t.device
    );
    let decrypting = req.decrypt
        || vol.v2().is_some_and(|v| {
            v.reencrypt_state()
                .ok()
                .flatten()
                .is_some_and(|st| st.keyslot.mode == "decrypt")
        });
    let pass = keys.existing()?;
    if decrypting {
        return super::decrypt::decrypt_v2(t, req, vol.v2_mut()?, data, pass.as_bytes(), events);
    }
    let mut req = req.clone();
    if vol.version() == Version::V1 {
        vol.unlock(pass.as_bytes(), req.key_slot)?;
        ensure!(
            !req.resume_only,
            Usage,
            "{}: no LUKS2 reencryption is in progress (the header is LUKS1)",
            t.device
        );
        ensure!(
            req.new.sector_size.is_none_or(|s| s == 512),
            Usage,
            "LUKS1 has 512-byte sectors only"
        );
        let (hash, spec) = match vol.v1() {
            Some(v) => (v.hash(), *v.spec()),
            None => bail!(Internal, "LUKS1 volume expected"),
        };
        let cipher = req.new.cipher.clone().unwrap_or(spec.luks2_encryption());
        CipherSpec::from_luks2(&cipher, req.new.key_size.unwrap_or(spec.key_bytes))
            .ctx("new encryption")?;
        req.keyslot.kdf = Some("pbkdf2".into());
        req.keyslot.hash = Some(hash.name().into());
        // The start parameters (the checksum kernel too) before the conversion writes.
        init_params(&req)?;
        convert_to(h.dev.clone(), 2, h.detached, &t.limits)
            .with_ctx(|| format!("{}: converting LUKS1 to LUKS2 for the re-key", t.device))?;
        vol = open()?;
        vol.token_import(None, &format!(r#"{{"type":"{LUKS1_MARK}","keyslots":[]}}"#))?;
        events.warning("LUKS1 header: re-keyed through LUKS2, converted back when finished");
    }
    let report = reencrypt_v2(t, &req, vol.v2_mut()?, data, pass.as_bytes(), events)?;
    if report.finished {
        back_to_luks1(t, &h.dev, h.detached, open()?)?;
    }
    Ok(report)
}

/// A runner's `run` (progress callback, keep-going test) -> finished.
pub(super) type RunFn<'a> =
    dyn FnMut(&mut dyn FnMut(Position), &dyn Fn() -> bool) -> Result<bool> + 'a;

/// A runner's `run` from `start`, reporting progress to `events` and stopping cleanly
/// after `limit` hotzones; whether it finished.
pub(super) fn run_steps(
    events: &mut dyn Events,
    start: Position,
    limit: Option<u64>,
    run: &mut RunFn<'_>,
) -> Result<bool> {
    events.progress(start.done, start.total);
    let steps = std::cell::Cell::new(0u64);
    run(
        &mut |p| {
            steps.set(steps.get() + 1);
            events.progress(p.done, p.total);
        },
        &|| limit.is_none_or(|m| steps.get() < m),
    )
}

/// Where a run ended: all of it when finished, else where the runner stands (`now`).
pub(super) fn end_position(
    finished: bool,
    start: Position,
    now: impl FnOnce() -> Result<Position>,
) -> Result<Position> {
    match finished {
        true => Ok(Position {
            done: start.total,
            total: start.total,
        }),
        false => now(),
    }
}

/// Whether any keyslot is still bound to the old digest `old`.
pub(super) fn old_key_listed(v2: &Luks2Volume, old: Option<u32>) -> Result<bool> {
    Ok(v2
        .header()
        .metadata
        .digests()?
        .iter()
        .any(|d| Some(d.id) == old && !d.keyslots.is_empty()))
}

/// The old key for a run about to start on `v2` (nothing is in progress, which
/// `--resume-only` refuses), opened with `pass` in `req`'s key slot or any.
pub(super) fn unlock_to_start(
    t: &Target,
    req: &ReencryptRequest,
    v2: &Luks2Volume,
    pass: &[u8],
) -> Result<Unlocked> {
    ensure!(
        !req.resume_only,
        Usage,
        "{}: no LUKS2 reencryption is in progress",
        t.device
    );
    v2.unlock(pass, req.key_slot)
}

/// The report of a run that a key-less finish (`*_finish_done`) completed: nothing
/// started, all of its `total` data bytes (as the finish counts them) done.
pub(super) fn finished_report(total: u64) -> ReencryptReport {
    ReencryptReport {
        started: false,
        finished: true,
        position: Position { done: total, total },
        new_slot: None,
    }
}

/// Refuse bad options before anything is opened for writing.
fn precheck(req: &ReencryptRequest) -> Result<()> {
    if let Some(z) = req.hotzone_size {
        ensure!(
            z > 0 && z.is_multiple_of(4096),
            Usage,
            "--hotzone-size {z} is not a positive multiple of 4096 bytes"
        );
    }
    if let Some(ss) = req.new.sector_size {
        ensure!(
            is_data_sector_size(ss),
            Usage,
            "sector size {ss} is not 512, 1024, 2048 or 4096"
        );
    }
    // Names only: a run in progress keeps its stored resilience, whose checksum kernel
    // its engine checks when it loads the run.
    ResilienceChoice::from_name(req.resilience.as_deref().unwrap_or("checksum"))?;
    ResilienceChoice::None.hash(req.resilience_hash.as_deref())?;
    req.keyslot.params(Version::V2)?;
    Ok(())
}

/// How a LUKS2 reencryption of `req` is started (offline here, or online by a server).
pub fn init_params(req: &ReencryptRequest) -> Result<InitParams> {
    precheck(req)?;
    let resilience = ResilienceChoice::from_name(req.resilience.as_deref().unwrap_or("checksum"))?;
    Ok(InitParams {
        new: req.new.clone(),
        resilience,
        hash: resilience.hash(req.resilience_hash.as_deref())?,
        keyslot: req.keyslot.params(Version::V2)?,
    })
}

/// Convert back to LUKS1 if the header carries [`LUKS1_MARK`].
fn back_to_luks1(
    t: &Target,
    dev: &Arc<dyn BlockDriver>,
    detached: bool,
    mut vol: Volume,
) -> Result<()> {
    let Some(v2) = vol.v2() else { return Ok(()) };
    let mark = v2
        .header()
        .metadata
        .tokens()?
        .into_iter()
        .find(|tk| tk.kind == LUKS1_MARK);
    if let Some(tk) = mark {
        vol.token_remove(tk.id)?;
        convert_to(dev.clone(), 1, detached, &t.limits)
            .with_ctx(|| format!("{}: converting back to LUKS1 after the re-key", t.device))?;
    }
    Ok(())
}

/// The LUKS2 part: start or resume, run, report.
fn reencrypt_v2(
    t: &Target,
    req: &ReencryptRequest,
    v2: &mut crate::drivers::luks::Luks2Volume,
    data: Arc<dyn BlockDriver>,
    pass: &[u8],
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    if v2.encrypt_state()?.is_some() {
        return super::encrypt::resume(v2, data, pass, &req.as_encrypt(), events);
    }
    let (mut started, mut new_slot) = (false, None);
    let (old_key, new_key) = match v2.reencrypt_state()? {
        Some(st) => {
            let (old_digest, new_digest) = st.key_digests()?;
            let new_key = v2.unlock_digest(pass, new_digest)?;
            match v2.unlock_digest(pass, old_digest) {
                Ok(old) => (old, new_key),
                Err(e) if e.kind() == ErrorKind::WrongKey => {
                    // cryptsetup was stopped while removing the old key slots: either
                    // they are gone from the metadata, or their key material is wiped
                    // and the metadata still lists them. Only a finished run may end
                    // here without the old key (checked by reencrypt_finish_done); with
                    // old slots still listed, its refusal reports the wrong passphrase.
                    let listed = old_key_listed(v2, st.old_digest)?;
                    let total = v2
                        .reencrypt_finish_done(data.as_ref(), &new_key)
                        .map_err(|f| if listed { e } else { f })?;
                    return Ok(finished_report(total));
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            let old = unlock_to_start(t, req, v2, pass)?;
            let p = init_params(req)?;
            let others = v2.key_count()?.saturating_sub(1);
            if others > 0 {
                events.warning(&format!(
                    "{others} other key slot(s) use the old volume key; they are removed when \
                     the reencryption finishes"
                ));
            }
            let (nk, slot) = v2.reencrypt_init(&old.volume_key, pass, &p)?;
            started = true;
            new_slot = Some(slot);
            (old.volume_key, nk)
        }
    };
    if req.init_only {
        let r = Reencryption::load(v2, data, &old_key, &new_key, req.hotzone_size)?;
        return Ok(ReencryptReport {
            started,
            finished: false,
            position: r.position()?,
            new_slot,
        });
    }
    if req.resilience.is_some() && !started {
        events.warning("the resilience of a reencryption in progress is kept as stored");
    }
    let mut r = Reencryption::load(v2, data, &old_key, &new_key, req.hotzone_size)?;
    let start = r.position()?;
    let finished = run_steps(events, start, req.max_hotzones, &mut |p, k| r.run(p, k))?;
    let position = end_position(finished, start, || r.position())?;
    if !finished && position.done >= position.total {
        bail!(
            Internal,
            "reencryption stopped at its end without finishing"
        );
    }
    Ok(ReencryptReport {
        started,
        finished,
        position,
        new_slot,
    })
}
