//! LUKS2 decryption in place with a detached header, in cryptsetup's format (mode
//! `decrypt`, direction `backward`): [`Luks2Volume::decrypt_init`] starts one,
//! [`Decryption`] resumes and runs it hotzone by hotzone from the end of the data to
//! its start, and the last header write leaves what cryptsetup leaves: one `linear`
//! segment, no keyslots, no digests, no requirement.
//!
//! Each hotzone goes as in a volume-key change (see the parent module): read the
//! ciphertext, store its checksums or a journal copy in the `reencrypt` keyslot's area
//! and flush, write the header naming the hotzone a `linear` segment
//! `in-reencryption`, decrypt and write the data and flush, then write the header with
//! the hotzone joined to the plaintext. An interrupted hotzone is recovered from its
//! protection: a block whose checksum still matches is ciphertext and is decrypted,
//! any other is already plaintext; a journal copy is decrypted into place. The hotzone
//! at offset 0 goes straight to the final header write (cryptsetup would start over
//! on a header whose only regular segment is plaintext while the metadata remains).
//!
//! A header attached to the data (cryptsetup's data shift to a new detached header)
//! is handled by [`super::shift`].
use super::super::{Luks2Volume, verify_digest};
use super::init::largest_gap;
use super::{
    CHUNK, Position, ResilienceChoice, add_verification_digest, checksums, hotzone,
    remove_old_keyslots,
};
use crate::driver::BlockDriver;
use rayon::prelude::*;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::decrypt::BackStep;
use vmcrypt_format::luks2::reencrypt::{
    self, Layout, ReencryptKeyslot, ReencryptState, Resilience, linear_segment, segment_json,
};
use vmcrypt_format::luks2::{Luks2Header, SegmentSize};

/// How a decryption is started.
#[derive(Clone, Debug)]
pub struct DecryptParams {
    pub resilience: ResilienceChoice,
    /// Checksum hash (default sha256).
    pub hash: HashAlg,
    /// PBKDF2 iterations of the verification digest (None: about 1/8 s worth).
    pub digest_iterations: Option<u32>,
}

impl Luks2Volume {
    /// Start a decryption of the data (on a separate device: the header must be
    /// detached) with `old_key`, the volume key: one header write adds the
    /// `reencrypt` keyslot (mode `decrypt`, direction `backward`), the backup
    /// segments, the requirement and the verification digest.
    pub fn decrypt_init(
        &mut self,
        data: &dyn BlockDriver,
        old_key: &SecretBytes,
        p: &DecryptParams,
    ) -> Result<()> {
        self.requirements()?.check_writable()?;
        ensure!(
            self.is_detached(),
            Unsupported,
            "decrypting a LUKS2 device whose header is attached (moving the data over \
             it) is not supported; decrypt with a detached header (--header FILE)"
        );
        let old = self.data_segment()?;
        ensure!(
            old.kind == "crypt" && old.integrity.is_none() && old.iv_tweak == 0,
            Unsupported,
            "only a crypt data segment without integrity and IV tweak can be decrypted"
        );
        let layout = self.layout_on(data)?;
        let align = u64::from(old.sector_size).max(4096);
        ensure!(
            layout.data_size > 0 && layout.data_size.is_multiple_of(align),
            Unsupported,
            "data size {} is not a positive multiple of the decryption block ({align} bytes)",
            layout.data_size
        );
        let md = &self.hdr.metadata;
        let old_digest = self
            .digest_of_volume_key(old_key)?
            .ok_or_else(|| Error::wrong_key("the volume key does not match the header"))?;
        let mut next = self.hdr.clone();
        let (area_offset, area_size) = largest_gap(&next)?;
        let Some(rslot) = md.first_free_keyslot()? else {
            bail!(Busy, "no free LUKS2 keyslot for the decryption metadata");
        };
        let rk = ReencryptKeyslot {
            id: rslot,
            mode: "decrypt".into(),
            direction: "backward".into(),
            area_offset,
            area_size,
            resilience: match p.resilience {
                ResilienceChoice::Checksum => Resilience::Checksum {
                    hash: p.hash.name().into(),
                    sector_size: align as u32,
                },
                ResilienceChoice::Journal => Resilience::Journal,
                ResilienceChoice::None => Resilience::None,
            },
        };
        let nmd = &mut next.metadata;
        nmd.add_keyslot(rslot, rk.to_json())?;
        let mut reqs = nmd.config()?.mandatory_requirements;
        reqs.push(reencrypt::REQUIREMENT.into());
        nmd.set_mandatory_requirements(&reqs)?;
        let mut segs = serde_json::Map::new();
        segs.insert("0".into(), segment_json(&old, None));
        segs.insert("1".into(), segment_json(&old, Some("backup-previous")));
        segs.insert(
            "2".into(),
            linear_segment(layout.data_offset, None, Some("backup-final")),
        );
        nmd.set_segments(segs)?;
        nmd.set_digest_segments(old_digest, vec!["0".into(), "1".into()])?;
        let st =
            ReencryptState::load(nmd)?.ok_or_else(|| Error::internal("reencrypt keyslot lost"))?;
        let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes(), &[]));
        add_verification_digest(nmd, &vdata, rslot, p.digest_iterations)?;
        self.write_header_any(next)
    }

    /// Finish a decryption whose data is all plaintext without a key: cryptsetup
    /// removes the old key slots one header write at a time before its final write,
    /// so a kill there leaves the metadata without a key slot that opens. Returns the
    /// plaintext bytes (with a data shift, the device less the freed tail).
    pub fn decrypt_finish_done(&mut self, data: &dyn BlockDriver) -> Result<u64> {
        if let Some(st) = self.shift_decrypt_state()? {
            return super::shift::finish_done(self, data, &st);
        }
        let Some(st) = self.reencrypt_state()? else {
            bail!(Usage, "no LUKS2 reencryption is in progress");
        };
        let layout = self.layout_on(data)?;
        ensure!(
            st.is_backward_decrypt()
                && st.hot_segment().is_none()
                && st.decrypted_from(layout)? == 0,
            WrongKey,
            "the volume key is needed: the decryption is not finished"
        );
        finish_decrypt(self, st.old_digest, &st.keyslot, st.new.offset)?;
        Ok(layout.data_size)
    }
}

/// A decryption being run on an open volume.
pub struct Decryption<'a> {
    vol: &'a mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    st: ReencryptState,
    layout: Layout,
    old: SectorCipher,
    hotzone: u64,
    align: u64,
}

impl<'a> Decryption<'a> {
    /// Load the decryption state of `vol` (data on `data`), check the key against the
    /// old digest and the metadata against the verification digest.
    pub fn load(
        vol: &'a mut Luks2Volume,
        data: Arc<dyn BlockDriver>,
        old_key: &SecretBytes,
        hotzone: Option<u64>,
    ) -> Result<Self> {
        let Some(st) = vol.reencrypt_state()? else {
            bail!(Usage, "no LUKS2 reencryption is in progress");
        };
        ensure!(
            st.is_backward_decrypt(),
            Unsupported,
            "LUKS2 reencryption mode {} / direction {} / resilience {} is not a \
             decryption vmcrypt runs",
            st.keyslot.mode,
            st.keyslot.direction,
            st.keyslot.resilience.name()
        );
        ensure!(
            st.old.iv_tweak == 0 && st.old.offset == vol.layout_on(data.as_ref())?.data_offset,
            Unsupported,
            "LUKS2 decryption of a segment with an IV tweak or moved data"
        );
        if let Resilience::Other(t) = &st.keyslot.resilience {
            bail!(
                Unsupported,
                "LUKS2 decryption resilience \"{t}\" is not supported"
            );
        }
        check_keys(vol, &st, old_key)?;
        let spec = CipherSpec::from_luks2(&st.old.encryption, old_key.len())?;
        let old = SectorCipher::new(&spec, old_key.as_bytes())?;
        let (hotzone, align) = hotzone::size(
            &st.keyslot,
            u64::from(st.old.sector_size),
            CHUNK as u32,
            hotzone,
        )?;
        let layout = vol.layout_on(data.as_ref())?;
        ensure!(
            layout.data_size.is_multiple_of(align),
            Unsupported,
            "data size {} is not a multiple of the decryption block ({align} bytes)",
            layout.data_size
        );
        Ok(Decryption {
            vol,
            data,
            st,
            layout,
            old,
            hotzone,
            align,
        })
    }

    /// Bytes decrypted of the total (a hot state counts from the hotzone's end).
    pub fn position(&self) -> Result<Position> {
        let from = match self.st.hot_segment() {
            Some(h) => match h.size {
                SegmentSize::Bytes(n) => h.offset - self.layout.data_offset + n,
                SegmentSize::Dynamic => bail!(Corrupt, "LUKS2 hotzone segment has no size"),
            },
            None => self.st.decrypted_from(self.layout)?,
        };
        Ok(Position {
            done: self.layout.data_size - from.min(self.layout.data_size),
            total: self.layout.data_size,
        })
    }

    /// Run to the end (or until `keep_going` says stop after a hotzone), calling
    /// `progress` after each hotzone. Returns true when finished.
    pub fn run(
        &mut self,
        progress: &mut dyn FnMut(Position),
        keep_going: &dyn Fn() -> bool,
    ) -> Result<bool> {
        if let Some(h) = self.st.hot_segment().cloned() {
            let SegmentSize::Bytes(len) = h.size else {
                bail!(Corrupt, "LUKS2 hotzone segment has no size");
            };
            self.recover(h.offset - self.layout.data_offset, len)?;
            if self.vol.reencrypt_state()?.is_none() {
                return Ok(true);
            }
        }
        let mut from = self.st.decrypted_from(self.layout)?;
        if from == 0 {
            self.finish()?;
            return Ok(true);
        }
        let mut buf = Vec::new();
        while from > 0 {
            if !keep_going() {
                return Ok(false);
            }
            let len = self.hotzone.min(from);
            let offset = from - len;
            self.step(offset, len, &mut buf)?;
            from = offset;
            progress(Position {
                done: self.layout.data_size - from,
                total: self.layout.data_size,
            });
        }
        Ok(true)
    }

    fn commit(&mut self, step: BackStep) -> Result<()> {
        let mut next = self.vol.hdr.clone();
        self.st
            .apply_backward_decrypt(&mut next.metadata, self.layout, step)?;
        self.vol.write_header_any(next)?;
        self.st = self
            .vol
            .reencrypt_state()?
            .ok_or_else(|| Error::internal("decryption state lost"))?;
        Ok(())
    }

    /// One hotzone: read, protect, mark hot, decrypt and write, mark done.
    fn step(&mut self, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(len as usize, 0);
        let at = self.layout.data_offset + offset;
        let data = self.data.clone();
        buf.par_chunks_mut(CHUNK)
            .enumerate()
            .try_for_each(|(i, c)| {
                let off = at + (i * CHUNK) as u64;
                data.read_at(c, off)
                    .with_ctx(|| format!("reading the hotzone at {off}"))
            })?;
        if self.protect(buf)? {
            self.commit(BackStep::Hot { offset, len })?;
        }
        let this = &*self;
        buf.par_chunks_mut(CHUNK)
            .enumerate()
            .try_for_each(|(i, c)| {
                let rel = (i * CHUNK) as u64;
                this.decrypt(offset + rel, c)?;
                data.write_at(c, at + rel)
                    .with_ctx(|| format!("writing the hotzone at {}", at + rel))
            })?;
        self.data.flush()?;
        self.complete(offset)
    }

    /// Everything from `from` up is plaintext: commit, or finish at 0.
    fn complete(&mut self, from: u64) -> Result<()> {
        if from == 0 {
            self.finish()
        } else {
            self.commit(BackStep::Post { from })
        }
    }

    /// Store the hotzone's checksums or a journal copy; false for `none`.
    fn protect(&self, raw: &[u8]) -> Result<bool> {
        let k = &self.st.keyslot;
        let sums;
        let bytes: &[u8] = match &k.resilience {
            Resilience::Checksum { hash, sector_size } => {
                sums = checksums(HashAlg::from_name(hash)?, *sector_size as usize, raw);
                &sums
            }
            Resilience::Journal => raw,
            _ => return Ok(false),
        };
        self.vol.store_protection(k, bytes)?;
        Ok(true)
    }

    /// Decrypt `buf`, the ciphertext at `offset` from the data start.
    fn decrypt(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let o = &self.st.old;
        self.old
            .decrypt(o.iv_tweak + offset / 512, o.sector_size as usize, buf)
    }

    /// Finish an interrupted hotzone from its protection, then mark it done.
    fn recover(&mut self, offset: u64, len: u64) -> Result<()> {
        let k = self.st.keyslot.clone();
        let redo = |at: u64, c: &mut [u8]| self.decrypt(at, c);
        hotzone::recover(
            self.vol,
            self.data.as_ref(),
            &k,
            self.layout,
            self.align,
            offset,
            len,
            &redo,
        )?;
        self.complete(offset)
    }

    fn finish(&mut self) -> Result<()> {
        let st = &self.st;
        finish_decrypt(self.vol, st.old_digest, &st.keyslot, st.new.offset)
    }
}

/// `old_key` must match the old digest, and the metadata the verification digest.
fn check_keys(vol: &Luks2Volume, st: &ReencryptState, old_key: &SecretBytes) -> Result<()> {
    let digests = vol.hdr.metadata.digests()?;
    let digest = |id: Option<u32>| {
        id.and_then(|id| digests.iter().find(|d| d.id == id))
            .ok_or_else(|| Error::corrupt("a LUKS2 decryption digest is missing"))
    };
    ensure!(
        verify_digest(digest(st.old_digest)?, old_key, &vol.limits)?,
        WrongKey,
        "the volume key does not match the decryption's digest"
    );
    let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes(), &[]));
    ensure!(
        verify_digest(digest(st.verify_digest)?, &vdata, &vol.limits)?,
        Corrupt,
        "LUKS2 reencryption metadata is invalid (verification digest mismatch)"
    );
    Ok(())
}

/// The final header write: one `linear` segment over the data; the keyslots of the
/// old key, the `reencrypt` keyslot, the digests and the requirement gone. Then the
/// freed areas are wiped. `plain_at` is the offset of the plaintext.
pub(super) fn finish_decrypt(
    vol: &mut Luks2Volume,
    old_digest: Option<u32>,
    k: &ReencryptKeyslot,
    plain_at: u64,
) -> Result<()> {
    let mut next: Luks2Header = vol.hdr.clone();
    let md = &mut next.metadata;
    let wipe = remove_old_keyslots(md, old_digest, k.id)?;
    let mut segs = serde_json::Map::new();
    segs.insert("0".into(), linear_segment(plain_at, None, None));
    md.set_segments(segs)?;
    if let Some(d) = old_digest {
        md.set_digest_segments(d, vec![])?;
    }
    md.erase_unused_digests()?;
    let reqs: Vec<String> = md
        .config()?
        .mandatory_requirements
        .into_iter()
        .filter(|r| !r.starts_with("online-reencrypt"))
        .collect();
    md.set_mandatory_requirements(&reqs)?;
    vol.write_header_any(next)?;
    for (off, size) in wipe {
        vol.wipe_area(off, size)?;
    }
    vol.wipe_area(k.area_offset, k.area_size)?;
    vol.dev.flush()
}
