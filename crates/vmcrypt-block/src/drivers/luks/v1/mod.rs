//! LUKS1 volumes: unlock, create and key-slot management on the device that holds the
//! header (the image itself, or a detached header file).
//!
//! Every change is ordered so that an interruption after any single write leaves a
//! header that opens with the old or the new key set:
//! * add: key material goes into a disabled slot's area first (flushed), then the slot's
//!   48-byte header record is written (flushed);
//! * kill: the slot record is disabled first (flushed), then its key material is wiped;
//! * change: add the new key in a free slot, then kill the old one.
pub(crate) mod dump;

use super::fresh::{new_uuid, new_volume_key, validate_uuid};
use super::params::{ChangeReport, CreateParams, KeyslotParams, Unlocked};
use crate::driver::BlockDriver;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_crypto::argon::{KdfLimits, SlotCost, UnlockBudget};
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, af, kdf, random};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{
    self, DIGEST_LEN, HEADER_SIZE, KEY_DISABLED, KEY_ENABLED, Keyslot, Limits, Luks1Header,
    NUM_KEYSLOTS, SALT_LEN, STRIPES,
};

/// The codec's iteration cap from the KDF limits.
pub(crate) fn codec_limits(limits: &KdfLimits) -> Limits {
    Limits {
        max_iterations: limits.max_pbkdf2_iterations,
    }
}

/// The smallest iteration count we ever write (cryptsetup's minimum for LUKS1).
pub const MIN_ITERATIONS: u32 = 1000;
/// cryptsetup spends 1/16 of `iter-time` on the master-key digest (125 ms of 2 s).
const MK_DIGEST_FRACTION: u64 = 16;

impl KeyslotParams {
    fn slot_iterations(&self, hash: HashAlg, key_bytes: usize) -> u32 {
        self.iterations
            .unwrap_or_else(|| calibrate(hash, key_bytes, u64::from(self.iter_time_ms)))
    }

    fn digest_iterations(&self, hash: HashAlg) -> u32 {
        self.iterations.unwrap_or_else(|| {
            calibrate(
                hash,
                DIGEST_LEN,
                u64::from(self.iter_time_ms) / MK_DIGEST_FRACTION,
            )
        })
    }
}

/// PBKDF2 iterations that take about `ms` milliseconds here, at least [`MIN_ITERATIONS`].
/// The speed is measured once per hash and key size in a process, for up to 250 ms
/// (less for short targets: a 10 ms target needs no quarter-second benchmark).
fn calibrate(hash: HashAlg, key_bytes: usize, ms: u64) -> u32 {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static SPEED: Mutex<Option<HashMap<(HashAlg, usize), u64>>> = Mutex::new(None);
    let budget = Duration::from_millis(ms.clamp(40, 250));
    let mut speeds = SPEED.lock().unwrap_or_else(|e| e.into_inner());
    let per_sec = *speeds
        .get_or_insert_with(HashMap::new)
        .entry((hash, key_bytes))
        .or_insert_with(|| kdf::pbkdf2_iterations_per_second(hash, key_bytes, budget));
    let iters = per_sec.saturating_mul(ms) / 1000;
    iters.clamp(u64::from(MIN_ITERATIONS), u64::from(u32::MAX)) as u32
}

/// A LUKS1 header on its device.
pub struct Luks1Volume {
    dev: Arc<dyn BlockDriver>,
    header: Luks1Header,
    spec: CipherSpec,
    hash: HashAlg,
    detached: bool,
    limits: KdfLimits,
}

impl Luks1Volume {
    /// Read and validate the header at offset 0 of `dev`.
    pub fn open(dev: Arc<dyn BlockDriver>, detached: bool, limits: &KdfLimits) -> Result<Self> {
        let size = dev.size();
        ensure!(
            size >= HEADER_SIZE as u64,
            Corrupt,
            "not a LUKS device: {size} bytes is smaller than a LUKS header"
        );
        let mut buf = [0u8; HEADER_SIZE];
        dev.read_at(&mut buf, 0)?;
        let header = Luks1Header::decode(&buf)?;
        header.validate(size, detached, &codec_limits(limits))?;
        let spec = CipherSpec::from_luks(
            &header.cipher_name,
            &header.cipher_mode,
            header.key_bytes as usize,
        )
        .ctx("LUKS1 header")?;
        let hash = HashAlg::from_name(&header.hash_spec).ctx("LUKS1 header hash-spec")?;
        Ok(Luks1Volume {
            dev,
            header,
            spec,
            hash,
            detached,
            limits: *limits,
        })
    }

    pub fn header(&self) -> &Luks1Header {
        &self.header
    }
    pub fn spec(&self) -> &CipherSpec {
        &self.spec
    }
    pub fn hash(&self) -> HashAlg {
        self.hash
    }
    pub fn is_detached(&self) -> bool {
        self.detached
    }
    pub fn device(&self) -> &Arc<dyn BlockDriver> {
        &self.dev
    }

    /// Payload start in bytes (on the data device).
    pub fn payload_offset(&self) -> u64 {
        self.header.payload_offset_bytes()
    }

    /// Try `passphrase` on `slot`, or on every enabled slot in order.
    pub fn unlock(&self, passphrase: &[u8], slot: Option<u32>) -> Result<Unlocked> {
        if let Some(id) = slot {
            let s = slot_index(id)?;
            ensure!(
                self.header.keyslots[s].is_enabled(),
                WrongKey,
                "key slot {s} is not active"
            );
            return match self.try_slot(s, passphrase)? {
                Some(volume_key) => Ok(unlocked(s, volume_key)),
                None => bail!(
                    WrongKey,
                    "no key available with this passphrase in key slot {s}"
                ),
            };
        }
        let mut budget = UnlockBudget::new(&self.limits);
        for s in 0..NUM_KEYSLOTS {
            let ks = &self.header.keyslots[s];
            if !ks.is_enabled() {
                continue;
            }
            let cost = SlotCost {
                pbkdf2_iterations: u64::from(ks.iterations) + u64::from(self.header.mk_digest_iter),
                argon2_work: 0,
            };
            if !budget.charge(s as u32, cost) {
                continue;
            }
            if let Some(volume_key) = self.try_slot(s, passphrase)? {
                return Ok(unlocked(s, volume_key));
            }
        }
        Err(budget.no_key())
    }

    fn try_slot(&self, s: usize, passphrase: &[u8]) -> Result<Option<SecretBytes>> {
        let ks = &self.header.keyslots[s];
        let key_bytes = self.header.key_bytes as usize;
        let mut slot_key = SecretBytes::zeroed(key_bytes);
        kdf::pbkdf2(
            self.hash,
            passphrase,
            &ks.salt,
            ks.iterations,
            slot_key.as_mut(),
        );
        let mut material = SecretBytes::zeroed(self.header.material_len(s) as usize);
        self.dev
            .read_at(material.as_mut(), ks.material_offset_bytes())
            .with_ctx(|| format!("reading key material of slot {s}"))?;
        SectorCipher::new(&self.spec, slot_key.as_bytes())?.decrypt(0, 512, material.as_mut())?;
        let candidate = af::merge(self.hash, material.as_bytes(), key_bytes, ks.stripes)
            .with_ctx(|| format!("key slot {s}"))?;
        Ok(self.verify_volume_key(&candidate).then_some(candidate))
    }

    /// Whether `key` matches the header's master-key digest.
    pub fn verify_volume_key(&self, key: &SecretBytes) -> bool {
        if key.len() != self.header.key_bytes as usize {
            return false;
        }
        let mut digest = [0u8; DIGEST_LEN];
        kdf::pbkdf2(
            self.hash,
            key.as_bytes(),
            &self.header.mk_digest_salt,
            self.header.mk_digest_iter,
            &mut digest,
        );
        digest
            .iter()
            .zip(self.header.mk_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The lowest disabled slot.
    pub fn free_slot(&self) -> Option<u32> {
        (0..NUM_KEYSLOTS)
            .find(|&s| !self.header.keyslots[s].is_enabled())
            .map(|s| s as u32)
    }

    /// Number of enabled slots.
    pub fn active_slots(&self) -> usize {
        self.header
            .keyslots
            .iter()
            .filter(|k| k.is_enabled())
            .count()
    }

    /// Store `volume_key` under `passphrase` in `slot` (or the first free one).
    pub fn add_key(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        slot: Option<u32>,
        kdf: &KeyslotParams,
    ) -> Result<u32> {
        self.ensure_writable()?;
        ensure!(
            self.verify_volume_key(volume_key),
            WrongKey,
            "volume key does not match this header"
        );
        let s = match slot {
            Some(id) => {
                let s = slot_index(id)?;
                ensure!(
                    !self.header.keyslots[s].is_enabled(),
                    Busy,
                    "key slot {s} is full; choose another one"
                );
                s
            }
            None => self
                .free_slot()
                .ok_or_else(|| Error::busy("all key slots full; remove a key first"))?
                as usize,
        };
        let iterations = kdf.slot_iterations(self.hash, self.header.key_bytes as usize);
        let mut record = self.header.keyslots[s].clone();
        random::fill(&mut record.salt)?;
        record.iterations = iterations;
        record.stripes = STRIPES;
        self.write_material(s, &record, volume_key, passphrase)?;
        record.active = KEY_ENABLED;
        self.write_slot_record(s, record)?;
        Ok(s as u32)
    }

    fn write_material(
        &self,
        s: usize,
        record: &Keyslot,
        volume_key: &SecretBytes,
        passphrase: &[u8],
    ) -> Result<()> {
        let key_bytes = self.header.key_bytes as usize;
        let mut slot_key = SecretBytes::zeroed(key_bytes);
        kdf::pbkdf2(
            self.hash,
            passphrase,
            &record.salt,
            record.iterations,
            slot_key.as_mut(),
        );
        let split = af::split(self.hash, volume_key.as_bytes(), STRIPES)?;
        let mut material = SecretBytes::zeroed(self.header.material_len(s) as usize);
        material.as_mut()[..split.len()].copy_from_slice(split.as_bytes());
        SectorCipher::new(&self.spec, slot_key.as_bytes())?.encrypt(0, 512, material.as_mut())?;
        self.dev
            .write_at(material.as_bytes(), record.material_offset_bytes())
            .with_ctx(|| format!("writing key material of slot {s}"))?;
        self.dev.flush()
    }

    /// Write one 48-byte key-slot record (a single write, then flush).
    fn write_slot_record(&mut self, s: usize, record: Keyslot) -> Result<()> {
        let mut next = self.header.clone();
        next.keyslots[s] = record;
        let bytes = next.encode();
        let (start, end) = luks1::keyslot_record_range(s);
        self.dev
            .write_at(&bytes[start..end], start as u64)
            .with_ctx(|| format!("writing header record of key slot {s}"))?;
        self.dev.flush()?;
        self.header = next;
        Ok(())
    }

    /// Disable `slot` and wipe its key material. Refuses to kill the last slot unless
    /// `allow_last`.
    pub fn kill_slot(&mut self, id: u32, allow_last: bool) -> Result<()> {
        self.ensure_writable()?;
        let s = slot_index(id)?;
        ensure!(
            self.header.keyslots[s].is_enabled(),
            NotFound,
            "key slot {s} is not active"
        );
        ensure!(
            allow_last || self.active_slots() > 1,
            Busy,
            "key slot {s} is the last active key slot; killing it makes the volume unusable \
             (use --force to do it anyway)"
        );
        let mut record = self.header.keyslots[s].clone();
        record.active = KEY_DISABLED;
        record.iterations = 0;
        record.salt = [0; SALT_LEN];
        self.write_slot_record(s, record)?;
        let mut wipe = vec![0u8; self.header.material_len(s) as usize];
        random::fill(&mut wipe)?;
        self.dev
            .write_at(&wipe, self.header.keyslots[s].material_offset_bytes())
            .with_ctx(|| format!("wiping key material of slot {s}"))?;
        self.dev.flush()
    }

    /// Remove the key slot that `passphrase` opens.
    pub fn remove_key(&mut self, passphrase: &[u8], allow_last: bool) -> Result<u32> {
        let u = self.unlock(passphrase, None)?;
        self.kill_slot(u.slot, allow_last)?;
        Ok(u.slot)
    }

    /// Replace the passphrase `old` (in `slot` or any slot) by `new`. The new key goes
    /// into a free slot before the old slot is killed; with no free slot the old slot is
    /// rewritten in place (not crash-safe, as in cryptsetup).
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        slot: Option<u32>,
        kdf: &KeyslotParams,
    ) -> Result<ChangeReport> {
        self.ensure_writable()?;
        let u = self.unlock(old, slot)?;
        let to = match self.free_slot() {
            Some(free) => {
                let ns = self.add_key(&u.volume_key, new, Some(free), kdf)?;
                self.kill_slot(u.slot, true)?;
                ns
            }
            None => {
                let s = u.slot as usize;
                ensure!(
                    kdf.in_place,
                    Busy,
                    "no free key slot for a crash-safe change of key slot {s}: remove a key \
                     slot first, or pass --force-in-place to rewrite key slot {s} in place \
                     (if that is interrupted, neither passphrase opens key slot {s})"
                );
                let mut record = self.header.keyslots[s].clone();
                random::fill(&mut record.salt)?;
                record.iterations = kdf.slot_iterations(self.hash, self.header.key_bytes as usize);
                self.write_material(s, &record, &u.volume_key, new)?;
                self.write_slot_record(s, record)?;
                u.slot
            }
        };
        Ok(ChangeReport {
            from: u.slot,
            to: Some(to),
        })
    }

    /// Set a new UUID (one header write).
    pub fn set_uuid(&mut self, uuid: &str) -> Result<()> {
        self.ensure_writable()?;
        validate_uuid(uuid)?;
        let mut next = self.header.clone();
        next.uuid = uuid.to_string();
        self.dev.write_at(&next.encode(), 0)?;
        self.dev.flush()?;
        self.header = next;
        Ok(())
    }

    fn ensure_writable(&self) -> Result<()> {
        ensure!(
            !self.dev.is_read_only(),
            ReadOnly,
            "the LUKS header device is open read-only"
        );
        Ok(())
    }

    /// Create a new LUKS1 volume on `dev`, with `passphrase` in `params.slot`.
    /// Writes: zeros over the header area, the key material, then the binary header.
    pub fn create(
        dev: Arc<dyn BlockDriver>,
        params: &CreateParams,
        passphrase: &[u8],
    ) -> Result<(Self, SecretBytes)> {
        let s = slot_index(params.slot)?;
        let key_bytes = params.spec.key_bytes;
        let hash = params.keyslot.hash;
        let volume_key = new_volume_key(params.volume_key.as_ref(), key_bytes)?;
        let (offsets, payload) =
            luks1::plan_layout(key_bytes as u32, params.layout, params.detached);
        let payload = params.payload_sectors()?.unwrap_or(payload);
        let uuid = new_uuid(params.uuid.as_deref())?;
        let mut header = Luks1Header {
            version: 1,
            cipher_name: params.spec.luks_cipher_name().to_string(),
            cipher_mode: params.spec.luks_cipher_mode(),
            hash_spec: hash.name().to_string(),
            payload_offset: payload,
            key_bytes: key_bytes as u32,
            mk_digest: [0; DIGEST_LEN],
            mk_digest_salt: [0; SALT_LEN],
            mk_digest_iter: params.keyslot.digest_iterations(hash),
            uuid,
            keyslots: std::array::from_fn(|i| Keyslot::disabled(offsets[i])),
        };
        random::fill(&mut header.mk_digest_salt)?;
        kdf::pbkdf2(
            hash,
            volume_key.as_bytes(),
            &header.mk_digest_salt,
            header.mk_digest_iter,
            &mut header.mk_digest,
        );
        let area_end = header.header_area_end().max(header.payload_offset_bytes());
        dev.write_zeroes(0, area_end)
            .ctx("clearing the LUKS header area")?;
        let mut vol = Luks1Volume {
            dev,
            header,
            spec: params.spec,
            hash,
            detached: params.detached,
            limits: KdfLimits::default(),
        };
        let mut record = vol.header.keyslots[s].clone();
        random::fill(&mut record.salt)?;
        record.iterations = params.keyslot.slot_iterations(hash, key_bytes);
        vol.write_material(s, &record, &volume_key, passphrase)?;
        record.active = KEY_ENABLED;
        vol.header.keyslots[s] = record;
        vol.dev
            .write_at(&vol.header.encode(), 0)
            .ctx("writing the LUKS header")?;
        vol.dev.flush()?;
        Ok((vol, volume_key))
    }

    /// Bytes a header backup holds: the binary header and all key material, rounded up
    /// to 4 KiB, exactly as cryptsetup's luksHeaderBackup writes it.
    pub fn backup_len(&self) -> u64 {
        self.header.header_area_end().div_ceil(4096) * 4096
    }

    /// Read the header area for a backup file.
    pub fn backup(&self) -> Result<Vec<u8>> {
        let len = self.backup_len().min(self.dev.size());
        let mut buf = vec![0u8; len as usize];
        self.dev.read_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// Restore a header backup (`backup` bytes, as written by us or cryptsetup's
/// luksHeaderBackup) onto `dev`. If `dev` already holds a LUKS1 header, its payload
/// offset and key size must match the backup's, as cryptsetup requires.
pub fn restore_header(dev: &Arc<dyn BlockDriver>, backup: &[u8], limits: &KdfLimits) -> Result<()> {
    let hdr = Luks1Header::decode(backup).ctx("header backup")?;
    hdr.validate(backup.len() as u64, true, &codec_limits(limits))
        .ctx("header backup")?;
    let mut cur = [0u8; HEADER_SIZE];
    if dev.size() >= HEADER_SIZE as u64 {
        dev.read_at(&mut cur, 0)?;
        if luks1::version_of(&cur) == Some(1)
            && let Ok(old) = Luks1Header::decode(&cur)
        {
            ensure!(
                old.payload_offset == hdr.payload_offset && old.key_bytes == hdr.key_bytes,
                Usage,
                "data offset or key size differs on device and backup, restore refused"
            );
        }
    }
    let len = hdr
        .header_area_end()
        .max(hdr.payload_offset_bytes())
        .min(backup.len() as u64);
    ensure!(
        hdr.payload_offset == 0 || dev.size() >= hdr.payload_offset_bytes(),
        OutOfRange,
        "device is smaller than the backup's payload offset"
    );
    dev.write_at(&backup[..len as usize], 0)
        .ctx("restoring the LUKS header")?;
    dev.flush()
}

/// The array index of key slot `id`, refusing ids past the eighth slot.
fn slot_index(id: u32) -> Result<usize> {
    ensure!(
        (id as usize) < NUM_KEYSLOTS,
        Usage,
        "key slot {id} is out of range (LUKS1 has slots 0-7)"
    );
    Ok(id as usize)
}

fn unlocked(s: usize, volume_key: SecretBytes) -> Unlocked {
    Unlocked {
        slot: s as u32,
        digest: 0,
        volume_key,
        bound: true,
    }
}
