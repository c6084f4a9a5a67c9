//! `vmcrypt luks reencrypt`: a new volume key for a LUKS2 device, offline, in
//! cryptsetup's reencryption format (so either tool can resume the other's run).
//! The whole image is locked; the header and the data are rewritten in place.
use super::{Access, KeySource, Target};
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::Version;
use crate::drivers::luks::Volume;
use crate::drivers::luks::v2::reencrypt::init::{InitParams, NewEncryption};
use crate::drivers::luks::v2::reencrypt::{Position, Reencryption, ResilienceChoice};
use crate::jobs::Events;
use crate::jobs::luks::slots::NewKeyslot;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt, bail, ensure};

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

/// Run (start or resume) a reencryption of `t`.
pub fn reencrypt(
    t: &Target,
    req: &ReencryptRequest,
    keys: &mut dyn KeySource,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let h = t.header_device(Access::WholeImage)?;
    super::embedded::require_plain(h.container, &t.device, "reencrypt")?;
    let data: Arc<dyn BlockDriver> = match &t.header {
        Some(_) => Arc::new(FileDriver::open(Path::new(&t.device), false)?),
        None => h.dev.clone(),
    };
    let mut vol =
        Volume::open(h.dev, h.detached, &t.limits).with_ctx(|| format!("device {}", t.device))?;
    ensure!(
        vol.version() == Version::V2,
        Unsupported,
        "{}: reencryption needs a LUKS2 header (convert a LUKS1 header first)",
        t.device
    );
    let v2 = vol.v2_mut()?;
    let pass = keys.existing()?;
    let (mut started, mut new_slot) = (false, None);
    let (old_key, new_key) = match v2.reencrypt_state()? {
        Some(st) => (
            v2.unlock_digest(pass.as_bytes(), st.old_digest)?,
            v2.unlock_digest(pass.as_bytes(), st.new_digest)?,
        ),
        None => {
            ensure!(
                !req.resume_only,
                Usage,
                "{}: no LUKS2 reencryption is in progress",
                t.device
            );
            let old = v2.unlock(pass.as_bytes(), req.key_slot)?;
            let p = InitParams {
                new: req.new.clone(),
                resilience: ResilienceChoice::from_name(
                    req.resilience.as_deref().unwrap_or("checksum"),
                )?,
                hash: HashAlg::from_name(req.resilience_hash.as_deref().unwrap_or("sha256"))?,
                keyslot: req.keyslot.params(Version::V2)?,
            };
            let others = v2.key_count()?.saturating_sub(1);
            if others > 0 {
                events.warning(&format!(
                    "{others} other key slot(s) use the old volume key; they are removed when \
                     the reencryption finishes"
                ));
            }
            let (nk, slot) = v2.reencrypt_init(&old.volume_key, pass.as_bytes(), &p)?;
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
    events.progress(start.done, start.total);
    let steps = std::cell::Cell::new(0u64);
    let limit = req.max_hotzones;
    let finished = r.run(
        &mut |p| {
            steps.set(steps.get() + 1);
            events.progress(p.done, p.total);
        },
        &|| limit.is_none_or(|m| steps.get() < m),
    )?;
    let position = if finished {
        Position {
            done: start.total,
            total: start.total,
        }
    } else {
        r.position()?
    };
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
