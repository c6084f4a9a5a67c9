//! LUKS2 volumes: open (either header copy, repair of the other), unlock by keyslot
//! priority, and crash-safe header writes. Key-slot and token changes are in
//! [`keyslots`], creation in [`create`].
//!
//! Header writes go copy by copy, each one write followed by a flush, the copy that is
//! not currently trusted first: an interruption leaves one valid copy with the old or
//! the new metadata, and the loader picks the valid copy with the higher seqid.
pub(crate) mod create;
pub(crate) mod dump;
pub(crate) mod keyslots;
pub mod reencrypt;

use super::params::Unlocked;
use crate::driver::BlockDriver;
use std::sync::Arc;
use vmcrypt_crypto::argon::{KdfLimits, SlotCost, UnlockBudget};
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, af, kdf};
use vmcrypt_error::{Error, ErrorKind, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::{
    self, CopyState, Digest, HeaderCopy, Kdf, KeyslotKind, LoadOptions, Luks2Header, Luks2Keyslot,
    Priority, Requirements, Segment,
};

/// Hash a LUKS2 header checksum names.
pub fn header_hasher(alg: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
    HashAlg::from_name(alg).ok().map(|h| h.digest_parts(parts))
}

/// An open LUKS2 header on its device.
pub struct Luks2Volume {
    dev: Arc<dyn BlockDriver>,
    hdr: Luks2Header,
    source: HeaderCopy,
    primary: CopyState,
    secondary: CopyState,
    json_repaired: bool,
    detached: bool,
    limits: KdfLimits,
}

/// Signatures of other formats that make an automatic repair ambiguous (as blkid sees
/// them): (offset, magic, name).
const FOREIGN_SIGNATURES: &[(u64, &[u8], &str)] =
    &[(512, b"LABELONE", "LVM2 PV"), (536, b"LVM2 001", "LVM2 PV")];

impl Luks2Volume {
    /// Read the header copies from `dev` and keep the newest valid one.
    /// A device with no LUKS2 magic where a header copy was looked for fails as
    /// `Corrupt` with [`Reason::BadMagic`](vmcrypt_error::Reason::BadMagic).
    pub fn open(dev: Arc<dyn BlockDriver>, detached: bool, limits: &KdfLimits) -> Result<Self> {
        let size = dev.size();
        let loaded = luks2::load_with(
            |off, len| read_clamped(dev.as_ref(), off, len),
            &header_hasher,
            LoadOptions {
                device_size: Some(size),
            },
        )?;
        let vol = Luks2Volume {
            dev: dev.clone(),
            hdr: loaded.header.clone(),
            source: loaded.source,
            primary: loaded.primary.clone(),
            secondary: loaded.secondary.clone(),
            json_repaired: loaded.json_repaired,
            detached,
            limits: *limits,
        };
        if vol.needs_repair() {
            vol.check_unambiguous()?;
        }
        Ok(vol)
    }

    fn check_unambiguous(&self) -> Result<()> {
        for &(off, magic, name) in FOREIGN_SIGNATURES {
            let mut buf = vec![0u8; magic.len()];
            if self.dev.size() >= off + magic.len() as u64
                && self.dev.read_at(&mut buf, off).is_ok()
                && buf == magic
            {
                bail!(
                    Corrupt,
                    "device contains ambiguous signatures (LUKS2 and {name}), cannot auto-recover LUKS2; \
                     the damaged header copy was not repaired"
                );
            }
        }
        Ok(())
    }

    pub fn header(&self) -> &Luks2Header {
        &self.hdr
    }
    pub fn device(&self) -> &Arc<dyn BlockDriver> {
        &self.dev
    }
    pub fn is_detached(&self) -> bool {
        self.detached
    }
    /// (primary, secondary) copy states as found at open.
    pub fn copy_states(&self) -> (&CopyState, &CopyState) {
        (&self.primary, &self.secondary)
    }

    /// The JSON needed cryptsetup's repair (stray KDF parameters) when it was read.
    pub fn json_needed_repair(&self) -> bool {
        self.json_repaired
    }

    /// A copy is damaged/outdated or the JSON needed cryptsetup's repair.
    pub fn needs_repair(&self) -> bool {
        self.primary != CopyState::Valid || self.secondary != CopyState::Valid || self.json_repaired
    }

    pub fn requirements(&self) -> Result<Requirements> {
        self.hdr.requirements()
    }

    /// The segment data I/O uses, after refusing headers in reencryption.
    pub fn data_segment(&self) -> Result<Segment> {
        let req = self.requirements()?;
        if req.reencryption_in_progress() {
            bail!(
                Unsupported,
                "LUKS2 reencryption is in progress ({}); finish it with \
                 `vmcrypt luks reencrypt --resume-only` (or `cryptsetup reencrypt --resume-only`) \
                 before accessing the data",
                req.reencryption.join(", ")
            );
        }
        self.hdr.metadata.default_segment()
    }

    /// The cipher of the data segment, for a volume key of `key_bytes`.
    pub fn data_spec(&self, key_bytes: usize) -> Result<CipherSpec> {
        let seg = self.data_segment()?;
        CipherSpec::from_luks2(&seg.encryption, key_bytes).ctx("LUKS2 data segment")
    }

    /// Keyslot ids in the order an unlock tries them: prefer, then normal (ignore-priority
    /// slots only when named).
    fn unlock_order(&self) -> Result<Vec<(u32, Luks2Keyslot)>> {
        let mut slots: Vec<(u32, Luks2Keyslot)> = self
            .hdr
            .metadata
            .keyslots()?
            .into_iter()
            .filter_map(|k| match k.kind {
                KeyslotKind::Luks2(l) => Some((k.id, l)),
                _ => None,
            })
            .collect();
        slots.retain(|(_, k)| k.priority != Priority::Ignore);
        slots.sort_by_key(|(id, k)| (k.priority != Priority::Prefer, *id));
        Ok(slots)
    }

    /// Try `passphrase` on `slot`, or on every keyslot bound to the data segment by priority.
    pub fn unlock(&self, passphrase: &[u8], slot: Option<u32>) -> Result<Unlocked> {
        let seg = self.hdr.metadata.default_segment().ok().map(|s| s.id);
        if let Some(id) = slot {
            let ks = match self.hdr.metadata.keyslot(id)? {
                Some(k) => k,
                None => bail!(WrongKey, "LUKS2 keyslot {id} is not active"),
            };
            let KeyslotKind::Luks2(l) = ks.kind else {
                bail!(
                    WrongKey,
                    "LUKS2 keyslot {id} is not a key slot that holds a key"
                );
            };
            return match self.try_keyslot(id, &l, passphrase)? {
                Some(u) => Ok(u),
                None => bail!(
                    WrongKey,
                    "no key available with this passphrase in keyslot {id}"
                ),
            };
        }
        let mut budget = UnlockBudget::new(&self.limits);
        // Keyslots we cannot use (a KDF, cipher or AF hash vmcrypt does not know) do not
        // stop the others; they are named if no other slot takes the passphrase.
        let mut unusable = Unusable::default();
        for (id, l) in self.unlock_order()? {
            let bound = self
                .hdr
                .metadata
                .digest_for_keyslot(id)?
                .is_some_and(|d| seg.is_some_and(|s| d.segments.contains(&s)));
            if !bound {
                continue;
            }
            unusable.candidates += 1;
            let tried = self
                .slot_cost(id, &l)
                .and_then(|cost| match budget.charge(id, cost) {
                    true => self.try_keyslot(id, &l, passphrase),
                    false => Ok(None),
                });
            match tried {
                Ok(Some(u)) => return Ok(u),
                Ok(None) => {}
                Err(e) if e.kind() == ErrorKind::Unsupported => unusable.add(id, &e),
                Err(e) => return Err(e),
            }
        }
        Err(unusable.error(budget.no_key()))
    }

    /// What trying keyslot `l` costs, after checking its KDF and its digest's against the
    /// per-slot caps (the same checks, in the same order, as [`Self::try_keyslot`]).
    fn slot_cost(&self, id: u32, l: &Luks2Keyslot) -> Result<SlotCost> {
        l.kdf
            .check_supported()
            .with_ctx(|| format!("LUKS2 keyslot {id}"))?;
        let digest_iterations = match self.hdr.metadata.digest_for_keyslot(id)? {
            Some(d) => {
                self.limits
                    .check_pbkdf2(d.iterations)
                    .with_ctx(|| format!("LUKS2 digest {}", d.id))?;
                u64::from(d.iterations)
            }
            None => 0,
        };
        let cost = match &l.kdf {
            Kdf::Pbkdf2 { iterations, .. } => {
                self.limits.check_pbkdf2(*iterations).map(|()| SlotCost {
                    pbkdf2_iterations: u64::from(*iterations),
                    argon2_work: 0,
                })
            }
            k @ (Kdf::Argon2 { .. } | Kdf::Unsupported { .. }) => {
                let c = keyslots::argon2_params(k).1;
                self.limits.check_argon2(c).map(|()| SlotCost {
                    pbkdf2_iterations: 0,
                    argon2_work: c.work(),
                })
            }
        }
        .with_ctx(|| format!("LUKS2 keyslot {id}"))?;
        Ok(SlotCost {
            pbkdf2_iterations: cost.pbkdf2_iterations + digest_iterations,
            ..cost
        })
    }

    /// Derive the key that decrypts keyslot `l`'s area.
    fn slot_key(&self, id: u32, l: &Luks2Keyslot, passphrase: &[u8]) -> Result<SecretBytes> {
        l.kdf
            .check_supported()
            .with_ctx(|| format!("LUKS2 keyslot {id}"))?;
        match &l.kdf {
            Kdf::Pbkdf2 { iterations, .. } => self.limits.check_pbkdf2(*iterations),
            k @ (Kdf::Argon2 { .. } | Kdf::Unsupported { .. }) => {
                self.limits.check_argon2(keyslots::argon2_params(k).1)
            }
        }
        .with_ctx(|| format!("LUKS2 keyslot {id}"))?;
        let mut key = SecretBytes::zeroed(l.area_key_size as usize);
        keyslots::derive(&l.kdf, passphrase, key.as_mut())?;
        Ok(key)
    }

    fn try_keyslot(
        &self,
        id: u32,
        l: &Luks2Keyslot,
        passphrase: &[u8],
    ) -> Result<Option<Unlocked>> {
        let Some(digest) = self.hdr.metadata.digest_for_keyslot(id)? else {
            return Ok(None);
        };
        self.limits
            .check_pbkdf2(digest.iterations)
            .with_ctx(|| format!("LUKS2 digest {}", digest.id))?;
        // Everything the header says about the area is checked before anything is
        // derived or allocated from it: a hostile key size must not cost memory or time.
        let spec = CipherSpec::from_luks2(&l.area_encryption, l.area_key_size as usize)
            .with_ctx(|| format!("LUKS2 keyslot {id} area"))?;
        let hash = HashAlg::from_name(&l.af_hash).with_ctx(|| format!("LUKS2 keyslot {id} af"))?;
        let len = material_len(l.key_size, l.af_stripes);
        ensure!(
            len <= l.area_size,
            Corrupt,
            "LUKS2 keyslot {id}: key material ({len} bytes) exceeds its area"
        );
        let slot_key = self.slot_key(id, l, passphrase)?;
        let mut material = SecretBytes::zeroed(len as usize);
        self.dev
            .read_at(material.as_mut(), l.area_offset)
            .with_ctx(|| format!("reading LUKS2 keyslot {id}"))?;
        SectorCipher::new(&spec, slot_key.as_bytes())?.decrypt(0, 512, material.as_mut())?;
        let key = af::merge(hash, material.as_bytes(), l.key_size as usize, l.af_stripes)?;
        if !verify_digest(&digest, &key, &self.limits)? {
            return Ok(None);
        }
        let seg = self.hdr.metadata.default_segment().ok().map(|s| s.id);
        let bound = seg.is_some_and(|s| digest.segments.contains(&s));
        Ok(Some(Unlocked {
            slot: id,
            digest: digest.id,
            volume_key: key,
            bound,
        }))
    }

    /// The digest (bound to the data segment) that `key` matches.
    pub fn digest_of_volume_key(&self, key: &SecretBytes) -> Result<Option<u32>> {
        for d in self.hdr.metadata.digests()? {
            if verify_digest(&d, key, &self.limits)? {
                return Ok(Some(d.id));
            }
        }
        Ok(None)
    }

    /// Write `next` as the new header (seqid + 1), both copies, crash-safely.
    pub fn write_header(&mut self, next: Luks2Header) -> Result<()> {
        self.requirements()?.check_writable()?;
        self.write_header_inner(next)
    }

    /// [`Self::write_header`] without the requirements check (reencryption).
    fn write_header_inner(&mut self, mut next: Luks2Header) -> Result<()> {
        ensure!(
            !self.dev.is_read_only(),
            ReadOnly,
            "the LUKS2 header device is open read-only"
        );
        let old_seqid = self.hdr.binary.seqid;
        next.binary.seqid = old_seqid + 1;
        let first = self.source.other();
        for copy in [first, first.other()] {
            let bytes = next.encode_copy(copy, &header_hasher)?;
            let off = match copy {
                HeaderCopy::Primary => 0,
                HeaderCopy::Secondary => next.hdr_size(),
            };
            // Until the write is done this copy may be torn: if it fails, a later write
            // on this object must start with it (never with the only good copy) and
            // `repair` must know it is damaged.
            *self.state_mut(copy) = CopyState::Invalid {
                reason: "a header write to this copy failed".into(),
            };
            self.dev
                .write_at(&bytes, off)
                .with_ctx(|| format!("writing the {} LUKS2 header", copy.name()))?;
            self.dev.flush()?;
            if copy == first {
                // `first` now holds the newest header; a retry must outnumber it.
                *self.state_mut(copy) = CopyState::Valid;
                *self.state_mut(copy.other()) = CopyState::Outdated { seqid: old_seqid };
                self.source = copy;
                self.hdr.binary.seqid = next.binary.seqid;
            }
        }
        self.hdr = next;
        self.primary = CopyState::Valid;
        self.secondary = CopyState::Valid;
        self.json_repaired = false;
        Ok(())
    }

    fn state_mut(&mut self, copy: HeaderCopy) -> &mut CopyState {
        match copy {
            HeaderCopy::Primary => &mut self.primary,
            HeaderCopy::Secondary => &mut self.secondary,
        }
    }

    /// Rewrite both copies from the trusted one (`vmcrypt luks repair`). Returns whether
    /// anything needed repair.
    pub fn repair(&mut self) -> Result<bool> {
        if !self.needs_repair() {
            return Ok(false);
        }
        self.check_unambiguous()?;
        let mut next = self.hdr.clone();
        for salt in [&mut next.primary_salt, &mut next.secondary_salt] {
            vmcrypt_crypto::random::fill(salt)?;
        }
        self.write_header(next)?;
        Ok(true)
    }
}

impl Luks2Volume {
    /// Bytes of a header backup: both copies and the keyslots area (cryptsetup's size).
    pub fn backup_len(&self) -> Result<u64> {
        self.hdr.metadata.hdr_and_areas_size()
    }

    /// Read the header area for a backup file.
    pub fn backup(&self) -> Result<Vec<u8>> {
        let len = self.backup_len()?.min(self.dev.size());
        let mut buf = vec![0u8; len as usize];
        self.dev.read_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Restore a LUKS2 header backup onto `dev`. The backup must load; if `dev` holds a
    /// LUKS2 header, its data offset and metadata sizes must match the backup's.
    pub fn restore(dev: &Arc<dyn BlockDriver>, backup: &[u8], limits: &KdfLimits) -> Result<()> {
        let loaded =
            luks2::load(backup, &header_hasher, LoadOptions::default()).ctx("header backup")?;
        let md = &loaded.header.metadata;
        let len = md.hdr_and_areas_size()?;
        ensure!(
            backup.len() as u64 >= len,
            Corrupt,
            "header backup is truncated: {} bytes, need {len}",
            backup.len()
        );
        if let Ok(cur) = Luks2Volume::open(dev.clone(), false, limits) {
            let c = &cur.hdr.metadata;
            ensure!(
                c.data_offset()? == md.data_offset()? && c.hdr_and_areas_size()? == len,
                Usage,
                "data offset or metadata size differs on device and backup, restore refused"
            );
        }
        dev.write_at(&backup[..len as usize], 0)
            .ctx("restoring the LUKS2 header")?;
        dev.flush()
    }

    /// Set a new UUID (both copies).
    pub fn set_uuid(&mut self, uuid: &str) -> Result<()> {
        crate::drivers::luks::fresh::validate_uuid(uuid)?;
        let mut next = self.hdr.clone();
        next.binary.uuid = uuid.to_string();
        self.write_header(next)
    }

    /// Set the label and/or subsystem (both copies).
    pub fn set_label(&mut self, label: Option<&str>, subsystem: Option<&str>) -> Result<()> {
        let mut next = self.hdr.clone();
        for (field, v) in [
            (&mut next.binary.label, label),
            (&mut next.binary.subsystem, subsystem),
        ] {
            if let Some(v) = v {
                ensure!(v.len() < 48, Usage, "'{v}' is longer than 47 bytes");
                *field = v.to_string();
            }
        }
        self.write_header(next)
    }
}

/// Up to `len` bytes at `off` of `dev` (fewer at its end): the reader `luks2::load_with`
/// wants.
pub(crate) fn read_clamped(dev: &dyn BlockDriver, off: u64, len: usize) -> Result<Vec<u8>> {
    let n = (len as u64).min(dev.size().saturating_sub(off)) as usize;
    let mut buf = vec![0u8; n];
    if n > 0 {
        dev.read_at(&mut buf, off)?;
    }
    Ok(buf)
}

/// The keyslots an unlock could not use at all (a KDF, cipher or AF hash vmcrypt does
/// not know), grouped by reason, out of the `candidates` it considered.
#[derive(Default)]
struct Unusable {
    candidates: usize,
    reasons: Vec<(String, Vec<u32>)>,
}

impl Unusable {
    fn add(&mut self, id: u32, e: &Error) {
        let why = e.message().to_string();
        match self.reasons.iter_mut().find(|(r, _)| *r == why) {
            Some((_, ids)) => ids.push(id),
            None => self.reasons.push((why, vec![id])),
        }
    }

    /// `no_key` (no slot took the passphrase), naming the unusable keyslots; when no
    /// keyslot could be used at all, an `Unsupported` error instead of a wrong key.
    fn error(self, no_key: Error) -> Error {
        let count: usize = self.reasons.iter().map(|(_, ids)| ids.len()).sum();
        if count == 0 {
            return no_key;
        }
        let list: Vec<String> = self
            .reasons
            .iter()
            .map(|(why, ids)| {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                let s = if ids.len() > 1 { "s" } else { "" };
                format!("keyslot{s} {}: {why}", ids.join(", "))
            })
            .collect();
        if count == self.candidates {
            return Error::unsupported(format!(
                "no LUKS2 keyslot can be used: {}",
                list.join("; ")
            ));
        }
        Error::new(
            no_key.kind(),
            format!(
                "{}; not tried, cannot be used: {}",
                no_key.message(),
                list.join("; ")
            ),
        )
    }
}

/// Key material bytes of a keyslot: key_size * stripes, rounded up to 512.
pub fn material_len(key_size: u32, stripes: u32) -> u64 {
    (u64::from(key_size) * u64::from(stripes)).div_ceil(512) * 512
}

/// Largest digest a LUKS2 PBKDF2 digest may store: the longest hash output (SHA-512),
/// as cryptsetup, which verifies into a buffer of that size.
pub const DIGEST_MAX: usize = 64;

/// Whether `key` matches `digest` (PBKDF2 with the digest's hash, salt and iterations).
/// The digest's cost comes from the header, so it is bounded before any work: its
/// iterations by `limits` (as a key slot's), its length by [`DIGEST_MAX`] (PBKDF2 runs
/// every iteration once per hash-sized block of output).
pub fn verify_digest(digest: &Digest, key: &SecretBytes, limits: &KdfLimits) -> Result<bool> {
    let hash =
        HashAlg::from_name(&digest.hash).with_ctx(|| format!("LUKS2 digest {}", digest.id))?;
    if digest.digest.is_empty() {
        return Err(Error::corrupt(format!(
            "LUKS2 digest {} is empty",
            digest.id
        )));
    }
    ensure!(
        digest.digest.len() <= DIGEST_MAX,
        Corrupt,
        "LUKS2 digest {} is {} bytes long; a PBKDF2 digest has at most {DIGEST_MAX}",
        digest.id,
        digest.digest.len()
    );
    limits
        .check_pbkdf2(digest.iterations)
        .with_ctx(|| format!("LUKS2 digest {}", digest.id))?;
    let mut out = vec![0u8; digest.digest.len()];
    kdf::pbkdf2(
        hash,
        key.as_bytes(),
        &digest.salt,
        digest.iterations,
        &mut out,
    );
    Ok(out
        .iter()
        .zip(&digest.digest)
        .fold(0u8, |a, (x, y)| a | (x ^ y))
        == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(iterations: u32, len: usize) -> Digest {
        Digest {
            id: 3,
            kind: "pbkdf2".into(),
            keyslots: vec![0],
            segments: vec![0],
            hash: "sha256".into(),
            iterations,
            salt: vec![1; 32],
            digest: vec![2; len],
        }
    }

    /// Found by the `luks_driver` fuzz target: a digest's iterations (and length) come
    /// from the header and were not bounded, so a hostile reencryption digest of
    /// 33 million iterations held an open for many seconds (up to hours at 2^32).
    #[test]
    fn digest_cost_is_bounded_before_any_work() {
        let limits = KdfLimits {
            max_pbkdf2_iterations: 1000,
            ..KdfLimits::default()
        };
        let key = SecretBytes::new(vec![7; 32]);
        let e = verify_digest(&digest(1001, 32), &key, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
        assert!(e.to_string().contains("LUKS2 digest 3"), "{e}");
        let e = verify_digest(&digest(1000, DIGEST_MAX + 1), &key, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("65 bytes"), "{e}");
        // Within both bounds it runs and compares: a wrong digest does not match.
        assert!(!verify_digest(&digest(1000, DIGEST_MAX), &key, &limits).unwrap());
        let mut right = digest(1000, 32);
        kdf::pbkdf2(
            HashAlg::Sha256,
            key.as_bytes(),
            &right.salt,
            1000,
            &mut right.digest,
        );
        assert!(verify_digest(&right, &key, &limits).unwrap());
    }
}
