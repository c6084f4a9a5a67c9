//! [`Volume`]: one LUKS header on its device, either version, behind one API. Callers
//! open, unlock and change key slots without knowing the version; each method
//! dispatches to [`super::v1`] or [`super::v2`]. Operations only LUKS2 has (tokens,
//! priorities, labels, repair) refuse a LUKS1 header with `Unsupported`.
use super::params::{ChangeReport, CreateParams, KeyslotParams, KillReport, Unlocked, Version};
use super::v1::{self, Luks1Volume};
use super::v2::Luks2Volume;
use crate::driver::BlockDriver;
use serde_json::Value;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, SecretBytes, SectorCipher};
use vmcrypt_error::{Error, ErrorKind, Reason, Result, bail, ensure};
use vmcrypt_format::luks1;
use vmcrypt_format::luks2::Priority;

/// The refusal to remove the only key slot without `-q` (both versions).
pub const LAST_SLOT: &str =
    "this is the last key slot; the device would become unusable (use -q to remove it anyway)";

/// An open LUKS header, either version.
pub struct Volume {
    inner: Inner,
}

enum Inner {
    V1(Box<Luks1Volume>),
    V2(Box<Luks2Volume>),
}

/// Which LUKS version the header device holds (by its first bytes; a LUKS2 device with
/// a damaged primary header is still LUKS2 if a secondary copy is found later).
pub fn probe_version(dev: &dyn BlockDriver) -> Result<u16> {
    let mut head = [0u8; 8];
    if dev.size() < 8 {
        bail!(
            Corrupt,
            "not a LUKS device: {} bytes is too small",
            dev.size()
        );
    }
    dev.read_at(&mut head, 0)?;
    Ok(luks1::version_of(&head).unwrap_or(2))
}

impl Volume {
    /// Open the LUKS header on `dev`, either version.
    pub fn open(dev: Arc<dyn BlockDriver>, detached: bool, limits: &KdfLimits) -> Result<Self> {
        let inner = match probe_version(dev.as_ref())? {
            1 => Inner::V1(Box::new(Luks1Volume::open(dev, detached, limits)?)),
            2 => match Luks2Volume::open(dev, detached, limits) {
                Ok(v) => Inner::V2(Box::new(v)),
                Err(e)
                    if e.kind() == ErrorKind::Corrupt && e.reason() == Some(Reason::BadMagic) =>
                {
                    return Err(Error::corrupt("not a LUKS device (no LUKS header found)")
                        .with_reason(Reason::BadMagic)
                        .with_source(e));
                }
                Err(e) => return Err(e),
            },
            v => bail!(Unsupported, "unsupported LUKS version {v}"),
        };
        Ok(Volume { inner })
    }

    /// Create a new volume of `params.version` on `dev` with `passphrase` in
    /// `params.slot`; returns it and its volume key.
    pub fn create(
        dev: Arc<dyn BlockDriver>,
        params: &CreateParams,
        passphrase: &[u8],
    ) -> Result<(Self, SecretBytes)> {
        Ok(match params.version {
            Version::V1 => {
                let (v, k) = Luks1Volume::create(dev, params, passphrase)?;
                (Volume::from(v), k)
            }
            Version::V2 => {
                let (v, k) = Luks2Volume::create(dev, params, passphrase)?;
                (Volume::from(v), k)
            }
        })
    }

    /// Write a header backup (either version, as found in `backup`) onto `dev`.
    pub fn restore(dev: &Arc<dyn BlockDriver>, backup: &[u8], limits: &KdfLimits) -> Result<()> {
        match backup_version(backup) {
            Version::V1 => v1::restore_header(dev, backup, limits),
            Version::V2 => Luks2Volume::restore(dev, backup, limits),
        }
    }

    pub fn version(&self) -> Version {
        match &self.inner {
            Inner::V1(_) => Version::V1,
            Inner::V2(_) => Version::V2,
        }
    }

    /// The LUKS1 header, if this is LUKS1.
    pub fn v1(&self) -> Option<&Luks1Volume> {
        match &self.inner {
            Inner::V1(v) => Some(v),
            Inner::V2(_) => None,
        }
    }

    /// The LUKS2 header, if this is LUKS2.
    pub fn v2(&self) -> Option<&Luks2Volume> {
        match &self.inner {
            Inner::V1(_) => None,
            Inner::V2(v) => Some(v),
        }
    }

    /// Refuse a LUKS1 header for a LUKS2-only command on device `name`.
    pub fn require_luks2(&self, name: &str) -> Result<()> {
        ensure!(
            self.version() == Version::V2,
            Unsupported,
            "{name} is LUKS1; this command needs LUKS2"
        );
        Ok(())
    }

    pub fn v2_mut(&mut self) -> Result<&mut Luks2Volume> {
        match &mut self.inner {
            Inner::V1(_) => Err(needs_luks2()),
            Inner::V2(v) => Ok(v),
        }
    }

    /// Refuse key-slot changes a LUKS2 header forbids (unmet requirements, reencryption).
    pub fn check_writable(&self) -> Result<()> {
        match &self.inner {
            Inner::V1(_) => Ok(()),
            Inner::V2(v) => v.requirements().and_then(|r| r.check_writable()),
        }
    }

    /// Try `passphrase` on `slot` (or every usable slot).
    pub fn unlock(&self, passphrase: &[u8], slot: Option<u32>) -> Result<Unlocked> {
        match &self.inner {
            Inner::V1(v) => v.unlock(passphrase, slot),
            Inner::V2(v) => v.unlock(passphrase, slot),
        }
    }

    /// The cipher of the data, keyed by the volume key `passphrase` opens, and the slot
    /// that opened it. A LUKS2 header in reencryption is refused before any KDF runs.
    pub fn data_cipher(&self, passphrase: &[u8], slot: Option<u32>) -> Result<(SectorCipher, u32)> {
        if let Inner::V2(v) = &self.inner {
            v.data_segment()?;
        }
        let u = self.unlock(passphrase, slot)?;
        ensure!(
            u.bound,
            WrongKey,
            "keyslot {} holds a key that is not bound to the data segment",
            u.slot
        );
        let spec: CipherSpec = match &self.inner {
            Inner::V1(v) => *v.spec(),
            Inner::V2(v) => v.data_spec(u.volume_key.len())?,
        };
        Ok((SectorCipher::new(&spec, u.volume_key.as_bytes())?, u.slot))
    }

    /// Whether `key` is this header's volume key.
    pub fn verify_volume_key(&self, key: &SecretBytes) -> Result<bool> {
        match &self.inner {
            Inner::V1(v) => Ok(v.verify_volume_key(key)),
            Inner::V2(v) => Ok(v.digest_of_volume_key(key)?.is_some()),
        }
    }

    /// Store `volume_key` under `passphrase` in `slot` (or the lowest free one).
    pub fn add_key(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        slot: Option<u32>,
        params: &KeyslotParams,
    ) -> Result<u32> {
        match &mut self.inner {
            Inner::V1(v) => {
                ensure!(
                    v.verify_volume_key(volume_key),
                    WrongKey,
                    "the volume key does not match the header"
                );
                v.add_key(volume_key, passphrase, slot, params)
            }
            Inner::V2(v) => v.add_key(volume_key, passphrase, slot, params),
        }
    }

    /// Number of key slots that hold a key.
    pub fn key_count(&self) -> Result<usize> {
        match &self.inner {
            Inner::V1(v) => Ok(v.active_slots()),
            Inner::V2(v) => v.key_count(),
        }
    }

    /// Remove key slot `id` and wipe its key material; the last one only with
    /// `allow_last` (else `Busy` with [`LAST_SLOT`]).
    pub fn kill_slot(&mut self, id: u32, allow_last: bool) -> Result<KillReport> {
        if let Inner::V2(v) = &self.inner {
            v.check_killable(id)?;
        }
        ensure!(
            allow_last || self.key_count()? > 1,
            Busy(LastKeySlot),
            "{LAST_SLOT}"
        );
        match &mut self.inner {
            Inner::V1(v) => v.kill_slot(id, true).map(|_| KillReport::default()),
            Inner::V2(v) => v.kill_slot(id, true),
        }
    }

    /// Remove the key slot `passphrase` opens; returns its id.
    pub fn remove_key(&mut self, passphrase: &[u8], allow_last: bool) -> Result<(u32, KillReport)> {
        let slot = self.unlock(passphrase, None)?.slot;
        Ok((slot, self.kill_slot(slot, allow_last)?))
    }

    /// Replace the passphrase `old` (in `slot` or any slot) by `new`.
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        slot: Option<u32>,
        params: &KeyslotParams,
    ) -> Result<ChangeReport> {
        match &mut self.inner {
            Inner::V1(v) => v.change_key(old, new, slot, params),
            Inner::V2(v) => {
                let s = v.change_key(old, new, slot, params)?;
                Ok(ChangeReport { from: s, to: None })
            }
        }
    }

    pub fn uuid(&self) -> &str {
        match &self.inner {
            Inner::V1(v) => &v.header().uuid,
            Inner::V2(v) => &v.header().binary.uuid,
        }
    }

    pub fn set_uuid(&mut self, uuid: &str) -> Result<()> {
        match &mut self.inner {
            Inner::V1(v) => v.set_uuid(uuid),
            Inner::V2(v) => v.set_uuid(uuid),
        }
    }

    /// The header area as a backup file holds it.
    pub fn backup(&self) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::V1(v) => v.backup(),
            Inner::V2(v) => v.backup(),
        }
    }

    /// cryptsetup's `luksDump` text (LUKS1 names the device `name`).
    pub fn dump_text(&self, name: &str, volume_key: Option<&SecretBytes>) -> Result<String> {
        match &self.inner {
            Inner::V1(v) => Ok(v1::dump::luks_dump_text(v, name, volume_key)),
            Inner::V2(v) => super::v2::dump::luks2_dump_text(v, volume_key),
        }
    }

    /// A JSON dump (LUKS1: our own shape, with the volume key if given; LUKS2: the
    /// metadata).
    pub fn dump_json(&self, volume_key: Option<&SecretBytes>) -> Value {
        match &self.inner {
            Inner::V1(v) => v1::dump::luks_dump_json(v, volume_key),
            Inner::V2(v) => super::v2::dump::luks2_dump_json(v),
        }
    }

    /// The `format-specific` block of `vmcrypt info`.
    pub fn info_json(&self) -> Value {
        match &self.inner {
            Inner::V1(v) => v1::dump::qemu_info_json(v),
            Inner::V2(v) => super::v2::dump::luks2_info_json(v),
        }
    }

    /// LUKS2: import a token; returns its id.
    pub fn token_import(&mut self, id: Option<u32>, json: &str) -> Result<u32> {
        self.v2_mut()?.token_import(id, json)
    }

    /// LUKS2: a token's JSON.
    pub fn token_export(&self, id: u32) -> Result<String> {
        match &self.inner {
            Inner::V1(_) => Err(needs_luks2()),
            Inner::V2(v) => v.token_export(id),
        }
    }

    /// LUKS2: remove a token.
    pub fn token_remove(&mut self, id: u32) -> Result<()> {
        self.v2_mut()?.token_remove(id)
    }

    /// LUKS2: set a keyslot's priority.
    pub fn set_priority(&mut self, id: u32, priority: Priority) -> Result<()> {
        self.v2_mut()?.set_priority(id, priority)
    }

    /// LUKS2: set the label and/or subsystem.
    pub fn set_label(&mut self, label: Option<&str>, subsystem: Option<&str>) -> Result<()> {
        self.v2_mut()?.set_label(label, subsystem)
    }

    /// LUKS2: rewrite both header copies from the trusted one; whether it was needed.
    pub fn repair(&mut self) -> Result<bool> {
        self.v2_mut()?.repair()
    }
}

impl From<Luks1Volume> for Volume {
    fn from(v: Luks1Volume) -> Self {
        Volume {
            inner: Inner::V1(Box::new(v)),
        }
    }
}

impl From<Luks2Volume> for Volume {
    fn from(v: Luks2Volume) -> Self {
        Volume {
            inner: Inner::V2(Box::new(v)),
        }
    }
}

fn needs_luks2() -> Error {
    Error::unsupported("this operation needs a LUKS2 header")
}

/// The version of a header backup file (LUKS1 by its version field, else LUKS2).
pub fn backup_version(backup: &[u8]) -> Version {
    if luks1::version_of(backup) == Some(1) {
        Version::V1
    } else {
        Version::V2
    }
}
