//! Header jobs: dump, header backup and restore, UUID, isLuks and in-place conversion
//! between LUKS1 and LUKS2 (cryptsetup's luksDump, luksHeaderBackup,
//! luksHeaderRestore, luksUUID, isLuks, convert).
use super::{Access, KeySource, Target};
use crate::drivers::luks::convert::{ConvertReport, convert_to};
use crate::drivers::luks::embedded::require_plain;
use crate::drivers::luks::{Version, Volume, backup_version};
use serde_json::Value;
use std::path::Path;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Error, Result, ResultExt, ensure};
use vmcrypt_format::luks1;

/// A header description, in the shape asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum DumpReport {
    /// cryptsetup's `luksDump` text.
    Text(String),
    /// A JSON dump (LUKS1: the header and, if asked for, the volume key; LUKS2: the
    /// metadata).
    Json(Value),
}

/// `dump`: describe the header; with `volume_key`, unlock (`slot` or any) and include
/// the volume key.
pub fn dump(
    t: &Target,
    json: bool,
    volume_key: bool,
    slot: Option<u32>,
    keys: &mut dyn KeySource,
) -> Result<DumpReport> {
    let vol = t.open(true)?;
    let vk = if volume_key {
        let pass = keys.existing()?;
        Some(vol.unlock(pass.as_bytes(), slot)?.volume_key)
    } else {
        None
    };
    Ok(if json {
        DumpReport::Json(vol.dump_json(vk.as_ref()))
    } else {
        DumpReport::Text(vol.dump_text(&t.device, vk.as_ref())?)
    })
}

/// `header-backup`: save the header and key material to the new file `file`.
pub fn backup(t: &Target, file: &str) -> Result<()> {
    ensure!(
        !Path::new(file).exists(),
        Busy,
        "requested header backup file '{file}' already exists"
    );
    let bytes = t.open(true)?.backup()?;
    write_new_file(file, &bytes)
}

/// `header-restore`: write the backup in `file` over the header (under the image lock).
/// A LUKS1 backup must fit the header region and is checked with the default limits;
/// a LUKS2 backup cannot go into a qcow2 image.
pub fn restore(t: &Target, file: &str) -> Result<()> {
    let backup =
        std::fs::read(file).map_err(|e| Error::io(e, format!("reading backup '{file}'")))?;
    let h = t.header_device(Access::WholeImage)?;
    let device = &t.device;
    let limits = match backup_version(&backup) {
        Version::V1 => {
            ensure!(
                backup.len() as u64 <= h.dev.size(),
                Usage,
                "the backup ({} bytes) does not fit the LUKS header region of {device} ({} bytes)",
                backup.len(),
                h.dev.size()
            );
            KdfLimits::default()
        }
        Version::V2 => {
            require_plain(h.container, device, "restoring a LUKS2 header backup")?;
            t.limits
        }
    };
    Volume::restore(&h.dev, &backup, &limits).with_ctx(|| format!("device {device}"))
}

/// `uuid`: the header's UUID, or set it to `new` (then `None` is returned).
pub fn uuid(t: &Target, new: Option<&str>) -> Result<Option<String>> {
    let mut vol = t.open(new.is_none())?;
    match new {
        None => Ok(Some(vol.uuid().to_string())),
        Some(u) => vol.set_uuid(u).map(|_| None),
    }
}

/// `is-luks`: whether the device starts with a LUKS magic (either version).
pub fn is_luks(t: &Target) -> Result<bool> {
    let dev = t.header_device(Access::Header { read_only: true })?.dev;
    let mut head = [0u8; 8];
    Ok(dev.size() >= 8 && dev.read_at(&mut head, 0).is_ok() && luks1::has_magic(&head))
}

/// `convert`: rewrite the header in place as `to` (under the image lock).
pub fn convert(t: &Target, to: Version) -> Result<ConvertReport> {
    let h = t.header_device(Access::WholeImage)?;
    require_plain(h.container, &t.device, "converting the header")?;
    convert_to(h.dev, to.number(), h.detached, &t.limits)
        .with_ctx(|| format!("device {}", t.device))
}

/// Write `bytes` to the new file `path`, read-only for its owner (0400, as cryptsetup
/// creates header backups: they hold every key slot).
fn write_new_file(path: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| Error::io(e, format!("creating '{path}'")))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(e, format!("writing '{path}'")))
}
