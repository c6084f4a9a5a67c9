//! Starting a decryption of a LUKS2 device whose header is attached, as
//! `cryptsetup reencrypt --decrypt --header NEW.hdr` does (metadata in
//! [`vmcrypt_format::luks2::reencrypt::shift`]): the header moves to a new detached
//! file and the data will be shifted left over it.
//!
//! [`Luks2Volume::decrypt_shift_plan`] checks everything and builds the first header
//! without writing. [`Luks2Volume::decrypt_shift_start`] then, each step flushed:
//! 1. copies the header and keyslots area to the new file;
//! 2. clears the LUKS magic of both header copies on the device (from here the new
//!    file is the header: a detached header of the unchanged data);
//! 3. copies the first `M` bytes of ciphertext to the start of the device (over the
//!    old header, which the file now holds);
//! 4. writes the first header in the file (reencryption state, the moved segment).
//!
//! An interruption before 2 leaves the device as it was (and a partial new file);
//! between 2 and 4 the new file is a valid detached header of the old layout.
use super::super::Luks2Volume;
use super::init::largest_gap;
use super::{ResilienceChoice, add_verification_digest};
use crate::driver::BlockDriver;
use std::sync::Arc;
use vmcrypt_crypto::{HashAlg, SecretBytes};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::Luks2Header;
use vmcrypt_format::luks2::reencrypt::shift::{
    REQUIREMENT_V3, ShiftDecryptState, initial_segments, keyslot_json,
};
use vmcrypt_format::luks2::reencrypt::{ReencryptKeyslot, Resilience};

/// How a data-shifting decryption is started.
#[derive(Clone, Debug)]
pub struct ShiftParams {
    /// `checksum` or `journal` (cryptsetup refuses `none` with a data shift).
    pub resilience: ResilienceChoice,
    pub hash: HashAlg,
    /// Bytes moved to the start and decrypted in place last (`--hotzone-size`;
    /// default the data shift, capped by a journal's area).
    pub moved: Option<u64>,
    /// PBKDF2 iterations of the verification digest (None: about 1/8 s worth).
    pub digest_iterations: Option<u32>,
}

impl Luks2Volume {
    /// Check a decryption of this attached-header volume with `old_key` and build its
    /// first header (to be written into the new header file); nothing is written.
    pub fn decrypt_shift_plan(
        &self,
        old_key: &SecretBytes,
        p: &ShiftParams,
    ) -> Result<Luks2Header> {
        self.requirements()?.check_writable()?;
        ensure!(!self.is_detached(), Internal, "the header is detached");
        let old = self.data_segment()?;
        ensure!(
            old.kind == "crypt" && old.integrity.is_none() && old.iv_tweak == 0,
            Unsupported,
            "only a crypt data segment without integrity and IV tweak can be decrypted"
        );
        let shift = old.offset;
        let data = self.dev.size().saturating_sub(shift);
        let align = u64::from(old.sector_size).max(4096);
        ensure!(
            data > 0 && data.is_multiple_of(align) && shift.is_multiple_of(align),
            Unsupported,
            "data size {data} or offset {shift} is not a positive multiple of the decryption \
             block ({align} bytes)"
        );
        let old_digest = self
            .digest_of_volume_key(old_key)?
            .ok_or_else(|| Error::wrong_key("the volume key does not match the header"))?;
        let mut next = self.hdr.clone();
        let (area_offset, area_size) = largest_gap(&next)?;
        let resilience = match p.resilience {
            ResilienceChoice::Checksum => Resilience::Checksum {
                hash: p.hash.name().into(),
                sector_size: align as u32,
            },
            ResilienceChoice::Journal => Resilience::Journal,
            ResilienceChoice::None => bail!(
                Usage,
                "resilience \"none\" cannot be used when the data is moved over the header \
                 (cryptsetup refuses it too); use checksum or journal"
            ),
        };
        let moved = moved_size(p, &resilience, shift, area_size, align)?;
        ensure!(
            moved < data,
            Unsupported,
            "the data ({data} bytes) is not larger than the bytes moved to its start ({moved})"
        );
        let md = &mut next.metadata;
        let Some(rslot) = md.first_free_keyslot()? else {
            bail!(Busy, "no free LUKS2 keyslot for the decryption metadata");
        };
        let rk = ReencryptKeyslot {
            id: rslot,
            mode: "decrypt".into(),
            direction: "forward".into(),
            area_offset,
            area_size,
            resilience,
        };
        md.add_keyslot(rslot, keyslot_json(&rk, shift))?;
        let mut reqs = md.config()?.mandatory_requirements;
        reqs.push(REQUIREMENT_V3.into());
        md.set_mandatory_requirements(&reqs)?;
        md.set_segments(initial_segments(&old, shift, moved, data)?)?;
        let ids = (0..4).map(|i| i.to_string().into()).collect();
        md.set_digest_segments(old_digest, ids)?;
        let st = ShiftDecryptState::load(md)?
            .ok_or_else(|| Error::internal("decryption keyslot lost"))?;
        let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes()));
        add_verification_digest(md, &vdata, rslot, p.digest_iterations)?;
        Ok(next)
    }

    /// Move the header into `new_hdr` (an empty new file) and start the decryption
    /// planned as `next` (see the module doc for the order); the volume on the new
    /// file is returned.
    pub fn decrypt_shift_start(
        &self,
        new_hdr: Arc<dyn BlockDriver>,
        next: Luks2Header,
    ) -> Result<Luks2Volume> {
        let hs = self.hdr.hdr_size();
        let len = 2 * hs + self.hdr.metadata.config()?.keyslots_size;
        copy(self.dev.as_ref(), 0, new_hdr.as_ref(), 0, len).ctx("copying the LUKS2 header")?;
        for at in [0, hs] {
            self.dev
                .write_at(&[0u8; 6], at)
                .ctx("clearing the LUKS magic on the device")?;
        }
        self.dev.flush()?;
        let st = ShiftDecryptState::load(&next.metadata)?
            .ok_or_else(|| Error::internal("decryption keyslot lost"))?;
        copy(
            self.dev.as_ref(),
            st.shift,
            self.dev.as_ref(),
            0,
            st.moved_len()?,
        )
        .ctx("moving the first data to the start of the device")?;
        let mut vol = Luks2Volume::open(new_hdr, true, &self.limits)?;
        vol.write_header_any(next)?;
        Ok(vol)
    }
}

/// `M`: the asked size (default the shift) capped by the shift, checked against a
/// journal's area (an explicit size that does not fit is refused, as cryptsetup does;
/// the default is capped), rounded to the block.
fn moved_size(p: &ShiftParams, r: &Resilience, shift: u64, area: u64, align: u64) -> Result<u64> {
    let want = p.moved.unwrap_or(shift).min(shift);
    ensure!(
        want.is_multiple_of(align) && want > 0,
        Usage,
        "hotzone size {want} must be a positive multiple of {align} bytes"
    );
    let cap = match r {
        Resilience::Journal => area / align * align,
        _ => u64::MAX,
    };
    ensure!(
        p.moved.is_none() || want <= cap,
        Usage,
        "the moved segment ({want} bytes, --hotzone-size) does not fit the journal \
         ({area} bytes)"
    );
    Ok(want.min(cap))
}

/// Copy `len` bytes from `src` at `from` to `dst` at `to` (the ranges must not
/// overlap; in the kernel between files, see [`BlockDriver::copy_from`]), then flush
/// `dst`.
fn copy(src: &dyn BlockDriver, from: u64, dst: &dyn BlockDriver, to: u64, len: u64) -> Result<()> {
    dst.copy_from(src, from, to, len)?;
    dst.flush()
}
