//! Running an encryption in place (`cryptsetup reencrypt --encrypt`) in cryptsetup's
//! format ([`vmcrypt_format::luks2::encrypt`]); [`super::encrypt_init`] starts one.
//!
//! Each hotzone goes: read its plaintext (at its place, or the moved copy for the
//! first bytes); store its protection (checksums or a journal copy in the `reencrypt`
//! area, flushed; nothing for `datashift`, whose source is never overwritten by its own
//! hotzone); write the header naming the hotzone `in-reencryption`; encrypt, write and
//! flush the data; write the header with the hotzone in the encrypted segment. An
//! interruption leaves the previous header (nothing changed) or the hot one, from
//! which the hotzone is redone: datashift re-reads the intact source, a journal holds
//! the plaintext, a checksum that still matches marks a block not yet encrypted.
//!
//! The last hotzone goes straight to the final header (cryptsetup cannot resume a
//! header whose only segment is the encrypted one while the reencryption metadata
//! remains); then the moved copy of the first plaintext bytes is overwritten with
//! random data and the resilience area cleared. An interruption between the final
//! header and that wipe leaves the copy (plaintext that was on the device anyway) in
//! the unused tail; the encrypted data is complete.
use super::{Position, checksums, hotzone, new_digest};
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::{Luks2Volume, verify_digest};
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, random};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::Metadata;
use vmcrypt_format::luks2::encrypt::EncryptState;
use vmcrypt_format::luks2::reencrypt::{ReencryptKeyslot, Resilience};

/// An encryption being run on an open volume.
pub struct Encryption<'a> {
    vol: &'a mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    st: EncryptState,
    cipher: SectorCipher,
    total: u64,
    hotzone: u64,
}

/// The verification digest of `md`'s encryption state for `key` (`vid` in `rslot`).
pub(crate) fn verification_digest(
    md: &Metadata,
    key: &SecretBytes,
    vid: u32,
    forced: Option<u32>,
) -> Result<vmcrypt_format::luks2::Digest> {
    let st = EncryptState::load(md)?
        .ok_or_else(|| Error::internal("the encryption keyslot is missing"))?;
    let vdata = SecretBytes::new(st.verification_data(key.as_bytes()));
    new_digest(
        HashAlg::Sha256,
        vdata.as_bytes(),
        vid,
        st.keyslot.id,
        forced,
    )
}

impl Luks2Volume {
    /// The encryption in progress, if any.
    pub fn encrypt_state(&self) -> Result<Option<EncryptState>> {
        EncryptState::load(&self.hdr.metadata)
    }

    /// Write a hotzone's protection `bytes` into the `reencrypt` keyslot's area, flushed.
    pub(super) fn store_protection(&self, k: &ReencryptKeyslot, bytes: &[u8]) -> Result<()> {
        ensure!(
            bytes.len() as u64 <= k.area_size,
            Internal,
            "hotzone protection does not fit the reencryption area"
        );
        self.dev
            .write_at(bytes, k.area_offset)
            .ctx("writing the reencryption resilience area")?;
        self.dev.flush()
    }

    /// Whether `key` matches digest `id`.
    pub(crate) fn digest_matches(&self, id: u32, key: &SecretBytes) -> Result<bool> {
        let digests = self.hdr.metadata.digests()?;
        match digests.iter().find(|d| d.id == id) {
            Some(d) => verify_digest(d, key, &self.limits),
            None => bail!(Corrupt, "LUKS2 digest {id} is missing"),
        }
    }

    /// Refuse reencryption metadata whose verification digest `vid` does not match
    /// `vdata` (a tampered area or segment), before anything is written.
    pub(crate) fn check_verification(&self, vid: Option<u32>, vdata: &SecretBytes) -> Result<()> {
        let vid = vid.ok_or_else(|| Error::corrupt("LUKS2 reencryption digest is missing"))?;
        ensure!(
            self.digest_matches(vid, vdata)?,
            Corrupt,
            "LUKS2 reencryption metadata is invalid (verification digest mismatch)"
        );
        Ok(())
    }

    /// Read the journal copy of an interrupted hotzone (`buf.len()` bytes).
    pub(super) fn load_journal(&self, k: &ReencryptKeyslot, buf: &mut [u8]) -> Result<()> {
        ensure!(
            buf.len() as u64 <= k.area_size,
            Corrupt,
            "LUKS2 hotzone is larger than its journal"
        );
        self.dev.read_at(buf, k.area_offset)
    }
}

impl<'a> Encryption<'a> {
    /// Load the encryption state of `vol` (data on `data`) and check `key` against the
    /// new digest and the metadata against the verification digest.
    pub fn load(
        vol: &'a mut Luks2Volume,
        data: Arc<dyn BlockDriver>,
        key: &SecretBytes,
        hotzone: Option<u64>,
    ) -> Result<Self> {
        let Some(st) = vol.encrypt_state()? else {
            bail!(Usage, "no LUKS2 encryption is in progress");
        };
        ensure!(
            vol.digest_matches(st.new_digest, key)?,
            WrongKey,
            "the volume key does not match the encryption digest"
        );
        let vdata = SecretBytes::new(st.verification_data(key.as_bytes()));
        vol.check_verification(st.verify_digest, &vdata)?;
        let spec = CipherSpec::from_luks2(&st.last.encryption, key.len())?;
        let cipher = SectorCipher::new(&spec, key.as_bytes())?;
        let device = data.size().saturating_sub(st.data_offset());
        let total = st.total(device)?;
        let (hotzone, _) = hotzone::size(
            &st.keyslot,
            u64::from(st.last.sector_size),
            u32::MAX,
            hotzone,
        )?;
        ensure!(
            total.is_multiple_of(u64::from(st.last.sector_size))
                && st.shift.is_multiple_of(u64::from(st.last.sector_size)),
            Unsupported,
            "data size {total} or shift {} is not a multiple of the sector size",
            st.shift
        );
        Ok(Encryption {
            vol,
            data,
            st,
            cipher,
            total,
            hotzone,
        })
    }

    /// Total and encrypted bytes.
    pub fn position(&self) -> Result<Position> {
        let mut done = self.st.done(self.total)?;
        if let Some((_, len)) = self.st.hot_zone()? {
            done -= len;
        }
        Ok(Position {
            done,
            total: self.total,
        })
    }

    /// Run to the end (or until `keep_going` says stop after a hotzone), calling
    /// `progress` after each hotzone. Returns true when finished.
    pub fn run(
        &mut self,
        progress: &mut dyn FnMut(Position),
        keep_going: &dyn Fn() -> bool,
    ) -> Result<bool> {
        if let Some((offset, len)) = self.st.hot_zone()? {
            self.recover(offset, len)?;
            if self.vol.encrypt_state()?.is_none() {
                return Ok(true);
            }
            progress(self.position()?);
        }
        let mut buf = Vec::new();
        loop {
            let Some((offset, len)) = self.st.next(self.total, self.hotzone)? else {
                self.finish()?;
                return Ok(true);
            };
            if !keep_going() {
                return Ok(false);
            }
            if self.step(offset, len, &mut buf)? {
                return Ok(true);
            }
            progress(self.position()?);
        }
    }

    fn commit(&mut self, md: Metadata) -> Result<()> {
        let mut next = self.vol.hdr.clone();
        next.metadata = md;
        self.vol.write_header_any(next)?;
        self.st = self
            .vol
            .encrypt_state()?
            .ok_or_else(|| Error::internal("encryption state lost"))?;
        Ok(())
    }

    /// The metadata naming hotzone `[offset, offset + len)` `in-reencryption`.
    fn hot_metadata(&self, offset: u64, len: u64) -> Result<Metadata> {
        let mut md = self.vol.hdr.metadata.clone();
        self.st
            .set_segments(&mut md, self.st.hot_segments(offset, len, self.total)?)?;
        Ok(md)
    }

    /// One hotzone; true if it finished the encryption.
    fn step(&mut self, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<bool> {
        buf.resize(len as usize, 0);
        let src = self.st.source(offset);
        self.data
            .read_at(buf, src)
            .with_ctx(|| format!("reading the plaintext at {src}"))?;
        let hot = self.hot_metadata(offset, len)?;
        if self.protect(buf)? {
            self.commit(hot.clone())?;
        }
        self.write_encrypted(offset, buf)?;
        let hot_st =
            EncryptState::load(&hot)?.ok_or_else(|| Error::internal("encryption state lost"))?;
        self.complete(&hot_st)
    }

    /// Encrypt `buf` (plaintext of hotzone `offset`) in place and write it.
    fn write_encrypted(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let l = &self.st.last;
        self.cipher
            .encrypt(l.iv_tweak + offset / 512, l.sector_size as usize, buf)?;
        let at = self.st.data_offset() + offset;
        self.data
            .write_at(buf, at)
            .with_ctx(|| format!("writing the hotzone at {at}"))?;
        self.data.flush()
    }

    /// Store the protection of a hotzone whose plaintext is `raw`; false when
    /// nothing protects it (`none`, or `datashift` whose header is the protection:
    /// the hot header is written in both cases except `none`).
    fn protect(&self, raw: &[u8]) -> Result<bool> {
        let k = &self.st.keyslot;
        let sums;
        let bytes: &[u8] = match &k.resilience {
            Resilience::Checksum { hash, sector_size } => {
                sums = checksums(HashAlg::from_name(hash)?, *sector_size as usize, raw);
                &sums
            }
            Resilience::Journal => raw,
            Resilience::None => return Ok(false),
            Resilience::Other(_) => return Ok(true),
        };
        self.vol.store_protection(k, bytes)?;
        Ok(true)
    }

    /// Move the hotzone of `hot` (a hot state, on disk or in memory) into the encrypted
    /// segment, or write the final header; true if finished.
    fn complete(&mut self, hot: &EncryptState) -> Result<bool> {
        match hot.post_segments(self.total)? {
            Some(post) => {
                let mut md = self.vol.hdr.metadata.clone();
                hot.set_segments(&mut md, post)?;
                self.commit(md)?;
                Ok(false)
            }
            None => {
                self.finish()?;
                Ok(true)
            }
        }
    }

    /// Redo an interrupted hotzone from its protection, then complete it.
    fn recover(&mut self, offset: u64, len: u64) -> Result<()> {
        ensure!(
            offset + len <= self.total,
            Corrupt,
            "LUKS2 hotzone ({offset}+{len}) is beyond the data ({} bytes)",
            self.total
        );
        let k = self.st.keyslot.clone();
        let at = self.st.data_offset() + offset;
        let mut buf = vec![0u8; len as usize];
        match &k.resilience {
            Resilience::Other(_) => {
                self.data.read_at(&mut buf, self.st.source(offset))?;
                self.write_encrypted(offset, &mut buf)?;
            }
            Resilience::Journal => {
                self.vol.load_journal(&k, &mut buf)?;
                self.write_encrypted(offset, &mut buf)?;
            }
            Resilience::Checksum { hash, sector_size } => {
                let sums = (hash.as_str(), *sector_size);
                let l = &self.st.last;
                hotzone::redo_unwritten(
                    self.vol,
                    self.data.as_ref(),
                    &k,
                    sums,
                    at,
                    &mut buf,
                    |rel, blk| {
                        let iv = l.iv_tweak + (offset + rel) / 512;
                        self.cipher.encrypt(iv, l.sector_size as usize, blk)
                    },
                )?;
                self.data
                    .write_at(&buf, at)
                    .ctx("writing the recovered hotzone")?;
                self.data.flush()?;
            }
            Resilience::None => bail!(
                Corrupt,
                "an interrupted hotzone at {at} cannot be recovered with resilience \"none\""
            ),
        }
        let st = self.st.clone();
        self.complete(&st)?;
        Ok(())
    }

    /// The final header (one crypt segment, no reencryption metadata), then overwrite
    /// the moved plaintext copy with noise and clear the resilience area.
    fn finish(&mut self) -> Result<()> {
        let mut next = self.vol.hdr.clone();
        self.st.finish(&mut next.metadata)?;
        self.vol.write_header_any(next)?;
        if let Some(m) = &self.st.moved {
            let len = match m.size {
                vmcrypt_format::luks2::SegmentSize::Bytes(n) => n,
                vmcrypt_format::luks2::SegmentSize::Dynamic => 0,
            };
            wipe_random(self.data.as_ref(), m.offset, len)?;
        }
        let k = &self.st.keyslot;
        self.vol.dev.write_zeroes(k.area_offset, k.area_size)?;
        self.vol.dev.flush()
    }
}

/// Overwrite `[offset, offset + len)` of `dev` with random bytes, 1 MiB at a time.
pub(super) fn wipe_random(dev: &dyn BlockDriver, offset: u64, len: u64) -> Result<()> {
    let mut noise = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(noise.len() as u64) as usize;
        random::fill(&mut noise[..n])?;
        dev.write_at(&noise[..n], offset + done)
            .ctx("wiping the moved plaintext copy")?;
        done += n as u64;
    }
    dev.flush()
}
