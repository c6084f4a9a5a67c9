//! Key-slot jobs: add, remove, kill, change and test a passphrase (cryptsetup's
//! luksAddKey, luksRemoveKey, luksKillSlot, luksChangeKey, open --test-passphrase).
use super::{KeySource, Target};
use crate::drivers::luks::{ChangeReport, KdfKind, KeyslotParams, KillReport, Version};
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt};

/// How a new key slot derives its key, as asked for. LUKS1 slots are always PBKDF2
/// with the header's hash, so there `kdf` and `hash` are not even parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewKeyslot {
    /// argon2id (default), argon2i or pbkdf2.
    pub kdf: Option<String>,
    /// PBKDF2 / AF hash (default sha256).
    pub hash: Option<String>,
    /// Target unlock time (default 2000 ms).
    pub iter_time_ms: Option<u32>,
    /// Forced PBKDF2 iterations or Argon2 time cost.
    pub iterations: Option<u32>,
    pub memory_kib: Option<u32>,
    pub parallel: Option<u32>,
    /// `change-key` may rewrite a LUKS1 slot in place when none is free (see
    /// [`KeyslotParams::in_place`]).
    pub in_place: bool,
}

impl NewKeyslot {
    /// The key-slot parameters for a header of `version`.
    pub(crate) fn params(&self, version: Version) -> Result<KeyslotParams> {
        let base = KeyslotParams {
            iter_time_ms: self.iter_time_ms.unwrap_or(2000),
            iterations: self.iterations,
            in_place: self.in_place,
            ..KeyslotParams::default()
        };
        if version == Version::V1 {
            return Ok(base);
        }
        Ok(KeyslotParams {
            kdf: KdfKind::from_name(self.kdf.as_deref().unwrap_or("argon2id"))?,
            hash: HashAlg::from_name(self.hash.as_deref().unwrap_or("sha256"))?,
            memory_kib: self.memory_kib,
            parallel: self.parallel,
            ..base
        })
    }
}

/// `add-key`: a new passphrase for the volume key an existing passphrase (or the given
/// volume key) opens. Returns the new slot.
pub fn add_key(
    t: &Target,
    slot: Option<u32>,
    new: &NewKeyslot,
    keys: &mut dyn KeySource,
) -> Result<u32> {
    let mut vol = t.open_for_write()?;
    let volume_key = match keys.volume_key()? {
        Some(k) => k,
        None => {
            let pass = keys.existing()?;
            vol.unlock(pass.as_bytes(), None)?.volume_key
        }
    };
    let newpass = keys.new_passphrase()?;
    let params = new.params(vol.version())?;
    vol.add_key(&volume_key, newpass.as_bytes(), slot, &params)
}

/// What `remove-key` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveReport {
    pub slot: u32,
    pub kill: KillReport,
}

/// `remove-key`: remove the slot the existing passphrase opens (the last one only with
/// `allow_last`).
pub fn remove_key(t: &Target, allow_last: bool, keys: &mut dyn KeySource) -> Result<RemoveReport> {
    let mut vol = t.open_for_write()?;
    let pass = keys.existing()?;
    let (slot, kill) = vol.remove_key(pass.as_bytes(), allow_last)?;
    Ok(RemoveReport { slot, kill })
}

/// `kill-slot`: wipe `slot`. With `verify`, a passphrase is asked for first and must
/// open some slot (so the device stays usable).
pub fn kill_slot(
    t: &Target,
    slot: u32,
    verify: bool,
    allow_last: bool,
    keys: &mut dyn KeySource,
) -> Result<KillReport> {
    let mut vol = t.open_for_write()?;
    if verify {
        let pass = keys.existing()?;
        vol.unlock(pass.as_bytes(), None)
            .ctx("verifying a remaining passphrase")?;
    }
    vol.kill_slot(slot, allow_last)
}

/// `change-key`: replace the existing passphrase (in `slot` or any slot) by a new one.
pub fn change_key(
    t: &Target,
    slot: Option<u32>,
    new: &NewKeyslot,
    keys: &mut dyn KeySource,
) -> Result<ChangeReport> {
    let mut vol = t.open_for_write()?;
    let old = keys.existing()?;
    vol.unlock(old.as_bytes(), slot)?;
    let newpass = keys.new_passphrase()?;
    let params = new.params(vol.version())?;
    vol.change_key(old.as_bytes(), newpass.as_bytes(), slot, &params)
}

/// `test-key`: the slot the existing passphrase opens; nothing changes.
pub fn test_key(t: &Target, slot: Option<u32>, keys: &mut dyn KeySource) -> Result<u32> {
    let pass = keys.existing()?;
    Ok(t.open(true)?.unlock(pass.as_bytes(), slot)?.slot)
}
