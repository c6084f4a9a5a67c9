//! Running a decryption that moves the data over its old header (cryptsetup's
//! `reencrypt --decrypt --header NEW.hdr` of an attached-header device; started by
//! [`super::shift_init`], metadata in [`vmcrypt_format::luks2::reencrypt::shift`]).
//!
//! Forward hotzones of `S` bytes (the shift) or what is left: write the header naming
//! the hotzone `in-reencryption`, read its ciphertext at `S + pos`, decrypt it and
//! write it at `pos`, flush, write the header with the hotzone joined to the
//! plaintext. Source and target never overlap and the source is only overwritten by
//! a later hotzone, so an interrupted hotzone is redone from its source.
//!
//! Last, the moved segment (the first `M` bytes, copied to the start when the run
//! began) is decrypted in place like a detached-header hotzone: its checksums or a
//! journal copy go to the `reencrypt` area (flushed), the header names it hot, the
//! plaintext is written and flushed; recovery is the shared one in [`super::hotzone`].
//! Then the final header (one `linear` segment from 0, no key slots, digests or
//! requirement; cryptsetup would start over on a lone `linear` segment while the
//! metadata remains), and the freed tail of the device (`S` bytes after the
//! plaintext, shifted copies of it) and the freed areas are overwritten with noise.
use super::super::Luks2Volume;
use super::chunks::Chunks;
use super::decrypt::finish_decrypt;
use super::encrypt::wipe_random;
use super::{Position, checksum_hash, checksums, hotzone};
use crate::driver::BlockDriver;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::shift::{ShiftDecryptState, ShiftPhase, ShiftStep};
use vmcrypt_format::luks2::reencrypt::{Layout, Resilience};

impl Luks2Volume {
    /// The data-shifting decryption in progress, if any.
    pub fn shift_decrypt_state(&self) -> Result<Option<ShiftDecryptState>> {
        ShiftDecryptState::load(&self.hdr.metadata)
    }
}

/// Plaintext bytes of `st` on `data`: the device less the shift.
fn data_size(st: &ShiftDecryptState, data: &dyn BlockDriver) -> u64 {
    data.size().saturating_sub(st.shift)
}

/// Finish a data-shifting decryption whose data is all plaintext without a key
/// (cryptsetup removes the key slots one header write at a time at its end); the
/// plaintext bytes (the freed tail wiped after them is not data).
pub(super) fn finish_done(
    vol: &mut Luks2Volume,
    data: &dyn BlockDriver,
    st: &ShiftDecryptState,
) -> Result<u64> {
    let plain = data_size(st, data);
    ensure!(
        st.phase(plain)? == ShiftPhase::Done,
        WrongKey,
        "the volume key is needed: the decryption is not finished"
    );
    finish(vol, data, st)?;
    Ok(plain)
}

/// The final header, then the freed tail of the data and the freed areas wiped.
fn finish(vol: &mut Luks2Volume, data: &dyn BlockDriver, st: &ShiftDecryptState) -> Result<()> {
    finish_decrypt(vol, Some(st.old_digest), &st.keyslot, 0)?;
    let end = data_size(st, data);
    wipe_random(data, end, data.size() - end).ctx("wiping the freed end of the device")
}

/// A data-shifting decryption being run on an open volume (the new header file).
pub struct ShiftDecryption<'a> {
    vol: &'a mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    st: ShiftDecryptState,
    total: u64,
    old: SectorCipher,
    align: u64,
}

impl<'a> ShiftDecryption<'a> {
    /// Load the state, check `old_key` against the old digest and the metadata
    /// against the verification digest.
    pub fn load(
        vol: &'a mut Luks2Volume,
        data: Arc<dyn BlockDriver>,
        old_key: &SecretBytes,
    ) -> Result<Self> {
        let st = vol
            .shift_decrypt_state()?
            .ok_or_else(|| Error::usage("no LUKS2 decryption with a data shift is in progress"))?;
        ensure!(
            vol.digest_matches(st.old_digest, old_key)?,
            WrongKey,
            "the volume key does not match the decryption's digest"
        );
        let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes()));
        vol.check_verification(st.verify_digest, &vdata)?;
        checksum_hash(&st.protect)?;
        let p = &st.previous;
        let old = SectorCipher::new(
            &CipherSpec::from_luks2(&p.encryption, old_key.len())?,
            old_key.as_bytes(),
        )?;
        let mut align = u64::from(p.sector_size).max(4096);
        if let Resilience::Checksum { sector_size, .. } = &st.protect {
            align = align.max(u64::from(*sector_size));
        }
        let total = data_size(&st, data.as_ref());
        ensure!(
            total.is_multiple_of(u64::from(p.sector_size))
                && st.shift.is_multiple_of(u64::from(p.sector_size))
                && st.moved_len()?.is_multiple_of(align),
            Unsupported,
            "data size {total}, shift {} or moved segment is not a multiple of the sector size",
            st.shift
        );
        st.phase(total)?;
        Ok(ShiftDecryption {
            vol,
            data,
            st,
            total,
            old,
            align,
        })
    }

    /// Bytes decrypted of the total (the moved segment counts last).
    pub fn position(&self) -> Result<Position> {
        let m = self.st.moved_len()?;
        let done = match self.st.phase(self.total)? {
            ShiftPhase::Shift { pos } | ShiftPhase::ShiftHot { pos, .. } => pos - m,
            ShiftPhase::MovedHot => self.total - m,
            ShiftPhase::Done => self.total,
        };
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
        let mut pos = match self.st.phase(self.total)? {
            ShiftPhase::ShiftHot { pos, len } => {
                self.shift_data(pos, len)?;
                self.commit(ShiftStep::Clean { pos: pos + len })?;
                progress(self.position()?);
                pos + len
            }
            ShiftPhase::MovedHot => {
                self.recover_moved()?;
                return self.finish().map(|_| true);
            }
            ShiftPhase::Done => return self.finish().map(|_| true),
            ShiftPhase::Shift { pos } => pos,
        };
        while let Some((p, len)) = self.st.next(pos, self.total) {
            if !keep_going() {
                return Ok(false);
            }
            self.commit(ShiftStep::Hot { pos: p, len })?;
            self.shift_data(p, len)?;
            pos = p + len;
            self.commit(ShiftStep::Clean { pos })?;
            progress(self.position()?);
        }
        if !keep_going() {
            return Ok(false);
        }
        self.moved_step()?;
        self.finish()?;
        Ok(true)
    }

    fn commit(&mut self, step: ShiftStep) -> Result<()> {
        let mut next = self.vol.hdr.clone();
        let regular = self.st.regular(step, self.total)?;
        self.st.set_segments(&mut next.metadata, regular)?;
        self.vol.write_header_any(next)?;
        self.st = self
            .vol
            .shift_decrypt_state()?
            .ok_or_else(|| Error::internal("decryption state lost"))?;
        Ok(())
    }

    /// Decrypt `buf`, the ciphertext of logical offset `offset`.
    fn decrypt(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let ss = self.st.previous.sector_size as usize;
        self.old.decrypt(offset / 512, ss, buf)
    }

    /// Read `[pos, pos + len)` at `S + pos`, decrypt, write it at `pos`, flush.
    fn shift_data(&self, pos: u64, len: u64) -> Result<()> {
        ensure!(
            len <= self.st.shift && pos + len <= self.total,
            Corrupt,
            "LUKS2 decryption hotzone {pos}+{len} is beyond the data or the shift"
        );
        let data = self.data.as_ref();
        Chunks::new(data, self.st.shift + pos, len).try_for_each(|rel, buf| {
            self.decrypt(pos + rel, buf)?;
            data.write_at(buf, pos + rel)
                .with_ctx(|| format!("writing the hotzone at {}", pos + rel))
        })?;
        self.data.flush()
    }

    /// The moved segment: protect, mark hot, decrypt in place.
    fn moved_step(&mut self) -> Result<()> {
        let m = self.st.moved_len()?;
        let mut buf = vec![0u8; m as usize];
        self.data
            .read_at(&mut buf, 0)
            .ctx("reading the moved segment")?;
        let k = self.st.protection_keyslot();
        let sums;
        let bytes: &[u8] = match &k.resilience {
            Resilience::Checksum { hash, sector_size } => {
                sums = checksums(HashAlg::from_name(hash)?, *sector_size as usize, &buf);
                &sums
            }
            Resilience::Journal => &buf,
            other => bail!(Corrupt, "LUKS2 decryption protection {}", other.name()),
        };
        self.vol.store_protection(&k, bytes)?;
        self.commit(ShiftStep::MovedHot)?;
        self.decrypt(0, &mut buf)?;
        self.data
            .write_at(&buf, 0)
            .ctx("writing the moved segment")?;
        self.data.flush()
    }

    /// Finish an interrupted moved segment from its protection.
    fn recover_moved(&mut self) -> Result<()> {
        let k = self.st.protection_keyslot();
        let layout = Layout {
            data_offset: 0,
            data_size: self.total,
        };
        let redo = |at: u64, c: &mut [u8]| self.decrypt(at, c);
        let m = self.st.moved_len()?;
        hotzone::recover(
            self.vol,
            self.data.as_ref(),
            &k,
            layout,
            self.align,
            0,
            m,
            &redo,
        )
    }

    fn finish(&mut self) -> Result<()> {
        finish(self.vol, self.data.as_ref(), &self.st)
    }
}
