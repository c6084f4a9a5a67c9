//! LUKS2 key-slot and token changes, each crash-safe:
//! * add: key material into a free area (flush), then the header naming it;
//! * kill: the header without the slot (and tokens bound only to it), then wipe the area;
//! * change: new material into a free area, then the header pointing the same slot id
//!   at it (one atomic switch), then wipe the old area;
//! * tokens and priorities: one header write.
use super::{Luks2Volume, material_len};
use crate::drivers::luks::params::{KdfKind, KeyslotParams, KillReport};
use std::time::Duration;
use vmcrypt_crypto::argon::{
    Argon2Cost, Argon2Type, argon2, calibrate_argon2, default_argon2_lanes,
    default_argon2_memory_kib,
};
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, af, kdf, random};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::{KEYSLOTS_MAX, Kdf, KeyslotKind, Luks2Keyslot, Priority};

/// The smallest PBKDF2 iteration count written (cryptsetup's).
const MIN_PBKDF2: u32 = 1000;

impl KeyslotParams {
    /// The KDF (with a fresh salt) for a key of `key_len` bytes.
    pub fn make_kdf(&self, key_len: usize) -> Result<Kdf> {
        let mut salt = vec![0u8; 32];
        random::fill(&mut salt)?;
        let target = Duration::from_millis(u64::from(self.iter_time_ms));
        Ok(match self.kdf {
            KdfKind::Pbkdf2 => {
                let iterations = match self.iterations {
                    Some(i) => i,
                    None => {
                        let per_sec = kdf::pbkdf2_iterations_per_second(
                            self.hash,
                            key_len,
                            Duration::from_millis(250),
                        );
                        (per_sec.saturating_mul(u64::from(self.iter_time_ms)) / 1000)
                            .clamp(u64::from(MIN_PBKDF2), u64::from(u32::MAX))
                            as u32
                    }
                };
                ensure!(
                    iterations >= MIN_PBKDF2,
                    Usage,
                    "PBKDF2 iterations {iterations} below the minimum {MIN_PBKDF2}"
                );
                Kdf::Pbkdf2 {
                    hash: self.hash.name().into(),
                    iterations,
                    salt,
                }
            }
            KdfKind::Argon2i | KdfKind::Argon2id => {
                let ty = if self.kdf == KdfKind::Argon2id {
                    Argon2Type::Argon2id
                } else {
                    Argon2Type::Argon2i
                };
                let memory = self.memory_kib.unwrap_or_else(default_argon2_memory_kib);
                let lanes = self.parallel.unwrap_or_else(default_argon2_lanes);
                ensure!(
                    memory >= 32 && (1..=16).contains(&lanes),
                    Usage,
                    "invalid Argon2 cost: memory {memory} KiB, {lanes} threads"
                );
                let cost = match self.iterations {
                    Some(t) => Argon2Cost {
                        time: t,
                        memory_kib: memory,
                        lanes,
                    },
                    None => calibrate_argon2(ty, target, memory, lanes, key_len),
                };
                ensure!(cost.time >= 1, Usage, "Argon2 time cost must be at least 1");
                Kdf::Argon2 {
                    id: ty == Argon2Type::Argon2id,
                    time: cost.time,
                    memory: cost.memory_kib,
                    cpus: cost.lanes,
                    salt,
                }
            }
        })
    }
}

/// The Argon2 type and cost of an Argon2 `kdf` (time 0 for PBKDF2 and KDFs we cannot
/// run).
pub(super) fn argon2_params(kdf_: &Kdf) -> (Argon2Type, Argon2Cost) {
    match kdf_ {
        Kdf::Argon2 {
            id,
            time,
            memory,
            cpus,
            ..
        } => (
            if *id {
                Argon2Type::Argon2id
            } else {
                Argon2Type::Argon2i
            },
            Argon2Cost {
                time: *time,
                memory_kib: *memory,
                lanes: *cpus,
            },
        ),
        Kdf::Pbkdf2 { .. } | Kdf::Unsupported { .. } => (
            Argon2Type::Argon2id,
            Argon2Cost {
                time: 0,
                memory_kib: 0,
                lanes: 0,
            },
        ),
    }
}

/// Derive a keyslot key with `kdf` (the caller has checked the cost against its limits
/// and refused unsupported KDFs naming the keyslot).
pub(super) fn derive(kdf_: &Kdf, passphrase: &[u8], out: &mut [u8]) -> Result<()> {
    match kdf_ {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => {
            kdf::pbkdf2(
                HashAlg::from_name(hash)?,
                passphrase,
                salt,
                *iterations,
                out,
            );
            Ok(())
        }
        Kdf::Argon2 { salt, .. } => {
            let (ty, cost) = argon2_params(kdf_);
            argon2(ty, passphrase, salt, cost, out)
        }
        Kdf::Unsupported { .. } => kdf_.check_supported(),
    }
}

/// Bytes of keyslots area a key of `key_len` bytes takes (4000 stripes, 4 KiB aligned).
pub fn area_size(key_len: usize) -> u64 {
    material_len(key_len as u32, 4000).div_ceil(4096) * 4096
}

/// Derive a keyslot key from `passphrase`, AF-split `volume_key`, encrypt the material with
/// `spec` (the data segment's cipher, as cryptsetup does) and write it at `offset` of `dev`.
pub fn write_sealed(
    dev: &dyn crate::BlockDriver,
    spec: &CipherSpec,
    volume_key: &SecretBytes,
    passphrase: &[u8],
    params: &KeyslotParams,
    offset: u64,
) -> Result<Luks2Keyslot> {
    let key_size = volume_key.len() as u32;
    let len = material_len(key_size, 4000);
    let kdf_ = params.make_kdf(volume_key.len())?;
    let mut slot_key = SecretBytes::zeroed(volume_key.len());
    derive(&kdf_, passphrase, slot_key.as_mut())?;
    let split = af::split(params.hash, volume_key.as_bytes(), 4000)?;
    let mut material = SecretBytes::zeroed(len as usize);
    material.as_mut()[..split.len()].copy_from_slice(split.as_bytes());
    SectorCipher::new(spec, slot_key.as_bytes())?.encrypt(0, 512, material.as_mut())?;
    dev.write_at(material.as_bytes(), offset)
        .ctx("writing LUKS2 key material")?;
    dev.flush()?;
    Ok(Luks2Keyslot {
        key_size,
        af_stripes: 4000,
        af_hash: params.hash.name().into(),
        area_offset: offset,
        area_size: area_size(volume_key.len()),
        area_encryption: spec.luks2_encryption(),
        area_key_size: key_size,
        kdf: kdf_,
        priority: params.priority,
    })
}

impl Luks2Volume {
    /// Area ranges in use by any keyslot (all types).
    fn used_areas(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .hdr
            .metadata
            .keyslots()?
            .iter()
            .map(|k| (k.area_offset, k.area_offset + k.area_size))
            .collect())
    }

    /// First-fit allocation of `len` bytes (4 KiB aligned) in the keyslots area.
    pub fn allocate_area(&self, len: u64, also_used: &[(u64, u64)]) -> Result<u64> {
        let cfg = self.hdr.metadata.config()?;
        let start = 2 * self.hdr.hdr_size();
        let end = start + cfg.keyslots_size;
        let len = len.div_ceil(4096) * 4096;
        let mut used = self.used_areas()?;
        used.extend_from_slice(also_used);
        used.sort();
        let mut cur = start;
        for (a, b) in used {
            if a >= cur + len {
                break;
            }
            cur = cur.max(b.div_ceil(4096) * 4096);
        }
        ensure!(
            cur + len <= end,
            Busy,
            "no space left in the LUKS2 keyslots area ({} bytes) for a {len}-byte key slot",
            cfg.keyslots_size
        );
        Ok(cur)
    }

    fn check_slot_id(id: u32) -> Result<()> {
        ensure!(
            id < KEYSLOTS_MAX,
            Usage,
            "keyslot {id} is out of range (LUKS2 has keyslots 0-31)"
        );
        Ok(())
    }

    /// Encrypt `volume_key` under `passphrase` into a newly allocated area; returns the
    /// keyslot description (not yet in the header). Writes and flushes the material.
    fn seal(
        &self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        params: &KeyslotParams,
        also_used: &[(u64, u64)],
    ) -> Result<Luks2Keyslot> {
        let seg = self.data_segment()?;
        let spec = CipherSpec::from_luks2(&seg.encryption, volume_key.len())?;
        let offset = self.allocate_area(area_size(volume_key.len()), also_used)?;
        write_sealed(
            self.dev.as_ref(),
            &spec,
            volume_key,
            passphrase,
            params,
            offset,
        )
    }

    /// Add `passphrase` for `volume_key` in `slot` (or the lowest free one).
    pub fn add_key(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        slot: Option<u32>,
        params: &KeyslotParams,
    ) -> Result<u32> {
        self.requirements()?.check_writable()?;
        let digest = self
            .digest_of_volume_key(volume_key)?
            .ok_or_else(|| Error::wrong_key("volume key does not match this header"))?;
        let id = match slot {
            Some(s) => {
                Self::check_slot_id(s)?;
                ensure!(
                    self.hdr.metadata.keyslot(s)?.is_none(),
                    Busy,
                    "keyslot {s} is in use; choose another one"
                );
                s
            }
            None => self
                .hdr
                .metadata
                .first_free_keyslot()?
                .ok_or_else(|| Error::busy("all 32 LUKS2 keyslots are in use"))?,
        };
        let ks = self.seal(volume_key, passphrase, params, &[])?;
        let mut next = self.hdr.clone();
        next.metadata.add_keyslot(id, ks.to_json())?;
        next.metadata.bind_digest(id, digest)?;
        self.write_header(next)?;
        Ok(id)
    }

    /// The keyslot `id`, if the header may change and the slot exists.
    pub(crate) fn check_killable(&self, id: u32) -> Result<vmcrypt_format::luks2::Keyslot> {
        self.requirements()?.check_writable()?;
        Self::check_slot_id(id)?;
        self.hdr
            .metadata
            .keyslot(id)?
            .ok_or_else(|| Error::not_found(format!("keyslot {id} is not active")))
    }

    /// Number of keyslots that hold a key.
    pub fn key_count(&self) -> Result<usize> {
        Ok(self
            .hdr
            .metadata
            .keyslots()?
            .iter()
            .filter(|k| matches!(k.kind, KeyslotKind::Luks2(_)))
            .count())
    }

    /// Remove keyslot `id` and wipe its area; tokens bound only to it go too.
    pub fn kill_slot(&mut self, id: u32, allow_last: bool) -> Result<KillReport> {
        let ks = self.check_killable(id)?;
        ensure!(
            allow_last || self.key_count()? > 1,
            Busy(LastKeySlot),
            "keyslot {id} is the last key slot; killing it makes the volume unusable (use -q to do it anyway)"
        );
        let dropped: Vec<u32> = self
            .hdr
            .metadata
            .tokens()?
            .into_iter()
            .filter(|t| t.keyslots == [id])
            .map(|t| t.id)
            .collect();
        let mut next = self.hdr.clone();
        next.metadata.remove_keyslot(id)?;
        for t in &dropped {
            next.metadata.remove_token(*t)?;
        }
        next.metadata.erase_unused_digests()?;
        self.write_header(next)?;
        self.wipe_area(ks.area_offset, ks.area_size)?;
        Ok(KillReport {
            dropped_tokens: dropped,
        })
    }

    pub(crate) fn wipe_area(&self, offset: u64, size: u64) -> Result<()> {
        let mut noise = vec![0u8; size as usize];
        random::fill(&mut noise)?;
        self.dev
            .write_at(&noise, offset)
            .ctx("wiping LUKS2 key material")?;
        self.dev.flush()
    }

    /// Remove the keyslot `passphrase` opens.
    pub fn remove_key(&mut self, passphrase: &[u8], allow_last: bool) -> Result<(u32, KillReport)> {
        let u = self.unlock(passphrase, None)?;
        let r = self.kill_slot(u.slot, allow_last)?;
        Ok((u.slot, r))
    }

    /// Replace `old` (in `slot` or any slot) by `new`, keeping the keyslot id and priority.
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        slot: Option<u32>,
        params: &KeyslotParams,
    ) -> Result<u32> {
        self.requirements()?.check_writable()?;
        let u = self.unlock(old, slot)?;
        let Some(KeyslotKind::Luks2(cur)) = self.hdr.metadata.keyslot(u.slot)?.map(|k| k.kind)
        else {
            bail!(Internal, "keyslot {} vanished", u.slot);
        };
        let p = KeyslotParams {
            priority: cur.priority,
            ..*params
        };
        let ks = self.seal(&u.volume_key, new, &p, &[])?;
        let mut next = self.hdr.clone();
        next.metadata.remove_keyslot(u.slot)?;
        let tokens = self.hdr.metadata.tokens()?;
        next.metadata.add_keyslot(u.slot, ks.to_json())?;
        next.metadata.bind_digest(u.slot, u.digest)?;
        // remove_keyslot dropped the slot from tokens: put those references back.
        for t in tokens.iter().filter(|t| t.keyslots.contains(&u.slot)) {
            next.metadata.remove_token(t.id)?;
            next.metadata
                .add_token(Some(t.id), serde_json::Value::Object(t.json.clone()), true)?;
        }
        self.write_header(next)?;
        self.wipe_area(cur.area_offset, cur.area_size)?;
        Ok(u.slot)
    }

    /// Set a keyslot's priority.
    pub fn set_priority(&mut self, id: u32, priority: Priority) -> Result<()> {
        let mut next = self.hdr.clone();
        next.metadata.set_priority(id, priority)?;
        self.write_header(next)
    }

    /// Import a token (JSON object text). Types starting with "luks2-" are refused.
    pub fn token_import(&mut self, id: Option<u32>, json: &str) -> Result<u32> {
        let v: serde_json::Value = serde_json::from_str(json.trim())
            .map_err(|e| Error::usage(format!("token is not valid JSON: {e}")))?;
        let mut next = self.hdr.clone();
        let id = next.metadata.add_token(id, v, false)?;
        self.write_header(next)?;
        Ok(id)
    }

    /// The token's JSON, compact, as cryptsetup's `token export` prints it.
    pub fn token_export(&self, id: u32) -> Result<String> {
        let t = self
            .hdr
            .metadata
            .tokens()?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| Error::not_found(format!("token {id} does not exist")))?;
        serde_json::to_string(&t.json).map_err(|e| Error::internal(format!("token JSON: {e}")))
    }

    /// Remove a token.
    pub fn token_remove(&mut self, id: u32) -> Result<()> {
        let mut next = self.hdr.clone();
        next.metadata.remove_token(id)?;
        self.write_header(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_names() {
        assert_eq!(KdfKind::from_name("argon2id").unwrap(), KdfKind::Argon2id);
        assert!(KdfKind::from_name("scrypt").is_err());
    }

    #[test]
    fn forced_pbkdf2_cost_is_kept() {
        let p = KeyslotParams {
            kdf: KdfKind::Pbkdf2,
            iterations: Some(1234),
            ..Default::default()
        };
        match p.make_kdf(64).unwrap() {
            Kdf::Pbkdf2 {
                iterations, salt, ..
            } => {
                assert_eq!(iterations, 1234);
                assert_eq!(salt.len(), 32);
            }
            other => panic!("{other:?}"),
        }
    }
}
