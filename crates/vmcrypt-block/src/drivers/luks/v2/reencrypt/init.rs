//! Starting a LUKS2 reencryption (a new volume key, optionally a new cipher, key size or
//! sector size) in cryptsetup's format: the new key's keyslot material is written and
//! flushed first, then one header write adds the new keyslot and digest, the
//! `reencrypt` keyslot, the backup segments, the requirement and the verification
//! digest. An interruption before that write leaves the header as it was (the new
//! material sits in an unused area); after it, the reencryption resumes.
use super::super::Luks2Volume;
use super::super::keyslots::{area_size, write_sealed};
use super::{ResilienceChoice, new_digest};
use crate::drivers::luks::params::{KdfKind, KeyslotParams};
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, random};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::{self, ReencryptKeyslot, ReencryptState, Resilience, Step};
use vmcrypt_format::luks2::{Segment, SegmentSize};

/// What the new encryption looks like (None: as the old one).
#[derive(Clone, Debug, Default)]
pub struct NewEncryption {
    /// LUKS2 cipher name ("aes-xts-plain64").
    pub cipher: Option<String>,
    /// Volume key size in bytes.
    pub key_size: Option<usize>,
    pub sector_size: Option<u32>,
}

/// How a reencryption is started.
#[derive(Clone, Debug)]
pub struct InitParams {
    pub new: NewEncryption,
    pub resilience: ResilienceChoice,
    /// Checksum hash (default sha256).
    pub hash: HashAlg,
    /// The new key slot's KDF.
    pub keyslot: KeyslotParams,
}

impl Luks2Volume {
    /// Start a reencryption: the old volume key `old_key` (opened by `slot` with
    /// `passphrase`) is replaced by a fresh key, sealed under the same passphrase in a
    /// new keyslot. Returns the new key and the new keyslot id.
    pub fn reencrypt_init(
        &mut self,
        old_key: &SecretBytes,
        passphrase: &[u8],
        p: &InitParams,
    ) -> Result<(SecretBytes, u32)> {
        self.requirements()?.check_writable()?;
        let old = self.data_segment()?;
        ensure!(
            old.kind == "crypt" && old.integrity.is_none(),
            Unsupported,
            "only a crypt data segment without integrity can be reencrypted"
        );
        let cipher = p.new.cipher.clone().unwrap_or(old.encryption.clone());
        let key_len = p.new.key_size.unwrap_or(old_key.len());
        let ss = p.new.sector_size.unwrap_or(old.sector_size);
        ensure!(
            crate::drivers::luks::is_data_sector_size(ss),
            Usage,
            "sector size {ss} is not 512, 1024, 2048 or 4096"
        );
        let spec = CipherSpec::from_luks2(&cipher, key_len).ctx("new encryption")?;
        check_data_alignment(self.layout()?.data_size, old.sector_size, ss, &p.resilience)?;
        let mut new_key = SecretBytes::zeroed(key_len);
        random::fill(new_key.as_mut())?;

        let md0 = &self.hdr.metadata;
        let Some(slot) = md0.first_free_keyslot()? else {
            bail!(Busy, "no free LUKS2 keyslot for the new volume key");
        };
        let off = self.allocate_area(area_size(key_len), &[])?;
        let ks = write_sealed(
            self.dev.as_ref(),
            &spec,
            &new_key,
            passphrase,
            &p.keyslot,
            off,
        )?;
        let mut md = md0.clone();
        md.add_keyslot(slot, ks.to_json())?;
        let new_digest_id = md.first_free_digest()?;
        let forced = match p.keyslot.kdf {
            KdfKind::Pbkdf2 => p.keyslot.iterations,
            _ => None,
        };
        let d = new_digest(
            p.keyslot.hash,
            new_key.as_bytes(),
            new_digest_id,
            slot,
            forced,
        )?;
        md.set_digest(new_digest_id, d.to_json())?;

        let mut next = self.hdr.clone();
        next.metadata = md;
        let (area_offset, area_len) = largest_gap(&next)?;
        let resilience = match p.resilience {
            ResilienceChoice::Checksum => Resilience::Checksum {
                hash: p.hash.name().into(),
                sector_size: old.sector_size.max(ss).max(4096),
            },
            ResilienceChoice::Journal => Resilience::Journal,
            ResilienceChoice::None => Resilience::None,
        };
        let Some(rslot) = next.metadata.first_free_keyslot()? else {
            bail!(Busy, "no free LUKS2 keyslot for the reencryption metadata");
        };
        let rk = ReencryptKeyslot {
            id: rslot,
            mode: "reencrypt".into(),
            direction: "forward".into(),
            area_offset,
            area_size: area_len,
            resilience,
        };
        next.metadata.add_keyslot(rslot, rk.to_json())?;
        let mut reqs = next.metadata.config()?.mandatory_requirements;
        reqs.push(reencrypt::REQUIREMENT.into());
        next.metadata.set_mandatory_requirements(&reqs)?;
        let old_digest = self
            .hdr
            .metadata
            .digests()?
            .into_iter()
            .find(|d| d.segments.contains(&old.id))
            .map(|d| d.id)
            .ok_or_else(|| vmcrypt_error::Error::corrupt("the data segment has no digest"))?;
        let new_seg = Segment {
            id: 0,
            kind: "crypt".into(),
            offset: old.offset,
            size: SegmentSize::Dynamic,
            flags: vec![],
            iv_tweak: old.iv_tweak,
            encryption: spec.luks2_encryption(),
            sector_size: ss,
            integrity: None,
        };
        let draft = ReencryptState {
            keyslot: rk,
            version: reencrypt::VERSION,
            old: old.clone(),
            old_digest: Some(old_digest),
            new: new_seg,
            new_digest: Some(new_digest_id),
            verify_digest: None,
            segments: vec![],
        };
        let layout = self.layout()?;
        draft.apply(&mut next.metadata, layout, Step::Post { done: 0 })?;
        let st = ReencryptState::load(&next.metadata)?
            .ok_or_else(|| vmcrypt_error::Error::internal("reencrypt keyslot lost"))?;
        let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes(), new_key.as_bytes()));
        let vid = next.metadata.first_free_digest()?;
        let vd = new_digest(HashAlg::Sha256, vdata.as_bytes(), vid, rslot, forced)?;
        next.metadata.set_digest(vid, vd.to_json())?;
        next.metadata
            .set_digest_segments(vid, vec![])
            .ctx("verification digest")?;
        self.write_header_any(next)?;
        Ok((new_key, slot))
    }
}

/// The data must be whole sectors of the old and the new size and, for checksum
/// resilience, whole checksum blocks (the larger sector size, at least 4096 bytes), or
/// the run could not be loaded once started; checked before anything is written
/// (cryptsetup refuses the same: "not aligned to encryption sector size").
pub(crate) fn check_data_alignment(
    size: u64,
    old_ss: u32,
    new_ss: u32,
    resilience: &ResilienceChoice,
) -> Result<()> {
    let mut block = u64::from(old_ss.max(new_ss));
    if matches!(resilience, ResilienceChoice::Checksum) {
        block = block.max(4096);
    }
    ensure!(
        size.is_multiple_of(block),
        Unsupported,
        "the image has {size} bytes of data, not a multiple of {block} bytes (the sector \
         size {new_ss}, or the checksum block): it cannot be reencrypted so"
    );
    Ok(())
}

/// The largest free stretch of the keyslots area (4 KiB aligned), as cryptsetup picks
/// for the reencrypt keyslot.
pub(super) fn largest_gap(h: &vmcrypt_format::luks2::Luks2Header) -> Result<(u64, u64)> {
    let start = 2 * h.hdr_size();
    let end = start + h.metadata.config()?.keyslots_size;
    let mut used: Vec<(u64, u64)> = h
        .metadata
        .keyslots()?
        .iter()
        .map(|k| (k.area_offset, k.area_offset + k.area_size))
        .collect();
    used.sort();
    let (mut best, mut cur) = ((0, 0), start);
    for (a, b) in used.into_iter().chain([(end, end)]) {
        if a > cur && a - cur > best.1 {
            best = (cur, a - cur);
        }
        cur = cur.max(b.div_ceil(4096) * 4096);
    }
    ensure!(
        best.1 >= 4096,
        Busy,
        "no free space in the LUKS2 keyslots area for the reencryption metadata"
    );
    Ok(best)
}
