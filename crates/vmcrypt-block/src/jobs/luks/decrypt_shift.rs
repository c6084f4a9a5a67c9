//! `vmcrypt luks reencrypt --decrypt --header NEW.hdr IMG` of a LUKS2 device whose
//! header is attached, as cryptsetup does it: the header moves into the new file
//! NEW.hdr and the data is shifted left over the old header, so IMG ends up holding
//! the plaintext from offset 0 (`drivers/luks/v2/reencrypt/shift*.rs`).
use super::decrypt::drive;
use super::reencrypt::{ReencryptReport, ReencryptRequest, unlock_to_start};
use super::{Access, KeySource, Target};
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::embedded::require_plain;
use crate::drivers::luks::v2::reencrypt::ResilienceChoice;
use crate::drivers::luks::v2::reencrypt::shift::ShiftDecryption;
use crate::drivers::luks::v2::reencrypt::shift_init::ShiftParams;
use crate::drivers::luks::{Luks2Volume, Version, Volume};
use crate::jobs::Events;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Result, ResultExt, ensure};

/// Start (and unless `--init-only`, run) the decryption of `t.device`, whose header
/// is attached, into the new header file `t.header`.
pub(super) fn start(
    t: &Target,
    req: &ReencryptRequest,
    keys: &mut dyn KeySource,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let Some(new_hdr) = t.header.as_deref() else {
        vmcrypt_error::bail!(Internal, "no header file");
    };
    let dev_t = Target {
        device: t.device.clone(),
        header: None,
        limits: t.limits,
    };
    let h = dev_t.header_device(Access::WholeImage)?;
    require_plain(h.container, &t.device, "decrypt")?;
    let mut vol = Volume::open(h.dev.clone(), false, &t.limits)
        .with_ctx(|| format!("device {}", t.device))?;
    ensure!(
        vol.version() == Version::V2,
        Unsupported,
        "{}: decrypting a LUKS1 device is not supported (convert it to LUKS2 first)",
        t.device
    );
    let v2 = vol.v2_mut()?;
    let pass = keys.existing()?;
    let old = unlock_to_start(t, req, v2, pass.as_bytes())?;
    let resilience = ResilienceChoice::from_name(req.resilience.as_deref().unwrap_or("checksum"))?;
    let p = ShiftParams {
        resilience,
        hash: resilience.hash(req.resilience_hash.as_deref())?,
        moved: req.hotzone_size,
        digest_iterations: req.keyslot.iterations,
    };
    let next = v2.decrypt_shift_plan(&old.volume_key, &p)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(Path::new(new_hdr))
        .map_err(|e| vmcrypt_error::Error::io(e, format!("creating the header file {new_hdr}")))?;
    let hdr: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(Path::new(new_hdr), false)?);
    let mut nv = v2.decrypt_shift_start(hdr, next)?;
    run(&mut nv, h.dev.clone(), &old.volume_key, req, true, events)
}

/// Run (or with `--init-only`, only load) the decryption in progress on `v2`.
pub(super) fn run(
    v2: &mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    old_key: &SecretBytes,
    req: &ReencryptRequest,
    started: bool,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let mut d = ShiftDecryption::load(v2, data, old_key)?;
    drive(&mut d, req, started, events)
}
