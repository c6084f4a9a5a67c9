//! Starting an encryption in place (`cryptsetup reencrypt --encrypt`) of a plain
//! device, in cryptsetup's layout ([`vmcrypt_format::luks2::encrypt`]).
//!
//! With `--reduce-device-size R` the header takes the first `R / 2` bytes (the data
//! shift) and the last `R / 2` bytes hold a copy of the plaintext the header replaces:
//! that copy is written and flushed first, then the new header is written over the
//! start of the device (zeros over the header and keyslots area, the key material, the
//! two header copies) already in reencryption state. With a detached header only the
//! new header file is written; the data is untouched until the first hotzone.
//!
//! The header write over the plaintext is the one step that is not crash-safe (as in
//! cryptsetup): an interruption inside it leaves neither a valid header nor the start
//! of the plaintext in place, only its copy at the end of the device.
use super::ResilienceChoice;
use super::encrypt::verification_digest;
use crate::driver::BlockDriver;
use crate::drivers::luks::params::{CreateParams, KdfKind};
use crate::drivers::luks::v2::Luks2Volume;
use crate::drivers::luks::v2::keyslots::area_size;
use std::sync::Arc;
use vmcrypt_crypto::{HashAlg, SecretBytes};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::encrypt::{MOVED, initial_segments, keyslot_json, linear_segment};
use vmcrypt_format::luks2::reencrypt::{self, ReencryptKeyslot, Resilience, crypt_segment};
use vmcrypt_format::luks2::{HDR_SIZE_MIN, Metadata};

/// Largest `--reduce-device-size` (cryptsetup's limit).
pub const MAX_REDUCE: u64 = 1 << 30;

/// How an encryption is started.
#[derive(Clone, Debug)]
pub struct EncryptParams {
    /// The new header (cipher, key slot KDF, sector size, uuid, label).
    pub create: CreateParams,
    /// Hotzone protection of a detached-header run (a shift always uses datashift).
    pub resilience: ResilienceChoice,
    /// Checksum hash.
    pub hash: HashAlg,
    /// `--reduce-device-size` in bytes (None: a detached header).
    pub reduce: Option<u64>,
}

/// Where things go, from the device's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptPlan {
    /// Data shift (= data offset) in bytes; 0 with a detached header.
    pub shift: u64,
    /// Plaintext bytes kept (and encrypted).
    pub data_size: u64,
    /// Where the copy of the first `shift` bytes goes.
    pub moved_at: u64,
}

/// The first bytes of a device name a LUKS header (either copy, either version).
pub fn has_luks_magic(dev: &dyn BlockDriver) -> Result<bool> {
    let mut head = [0u8; 6];
    if dev.size() < 6 {
        return Ok(false);
    }
    dev.read_at(&mut head, 0)?;
    Ok(&head == b"LUKS\xba\xbe" || &head == b"SKUL\xba\xbe")
}

/// Check `p` against a data device of `size` bytes; nothing is written.
pub fn plan(size: u64, p: &EncryptParams) -> Result<EncryptPlan> {
    let ss = u64::from(p.create.sector_size);
    ensure!(
        crate::drivers::luks::is_data_sector_size(p.create.sector_size),
        Usage,
        "sector size {ss} is not 512, 1024, 2048 or 4096"
    );
    let Some(reduce) = p.reduce else {
        ensure!(
            size > 0 && size.is_multiple_of(ss),
            Usage,
            "the data device ({size} bytes) is empty or not a multiple of the sector size \
             ({ss} bytes)"
        );
        return Ok(EncryptPlan {
            shift: 0,
            data_size: size,
            moved_at: 0,
        });
    };
    let shift = reduce / 2;
    let need = 2 * HDR_SIZE_MIN + area_size(p.create.spec.key_bytes) + 4096;
    ensure!(
        reduce <= MAX_REDUCE,
        Usage,
        "--reduce-device-size {reduce} is larger than 1 GiB"
    );
    ensure!(
        reduce.is_multiple_of(2 * 4096) && shift.is_multiple_of(ss),
        Usage,
        "--reduce-device-size {reduce}: half of it must be a multiple of 4096 bytes and of \
         the sector size"
    );
    ensure!(
        shift >= need,
        Usage,
        "--reduce-device-size {reduce} is too small: the LUKS2 header and key slot need \
         {need} bytes, half of the reduction (at least {})",
        2 * need
    );
    ensure!(
        size >= reduce + shift,
        Usage,
        "the device ({size} bytes) is too small for --reduce-device-size {reduce}: at \
         least {} bytes are needed",
        reduce + shift
    );
    let data_size = size - reduce;
    ensure!(
        data_size.is_multiple_of(ss),
        Usage,
        "the data left after --reduce-device-size ({data_size} bytes) is not a multiple of \
         the sector size ({ss} bytes)"
    );
    Ok(EncryptPlan {
        shift,
        data_size,
        moved_at: size - shift,
    })
}

/// Start an encryption: the header goes to `hdev` (the data device itself with a
/// shift, else a fresh detached header file), the data is on `data`. Returns the new
/// volume key.
pub fn encrypt_init(
    hdev: Arc<dyn BlockDriver>,
    data: &dyn BlockDriver,
    p: &EncryptParams,
    plan: EncryptPlan,
    passphrase: &[u8],
) -> Result<SecretBytes> {
    ensure!(
        !has_luks_magic(data)?,
        Usage,
        "the device already has a LUKS header: it is encrypted"
    );
    let mut cp = p.create.clone();
    cp.hdr_size = HDR_SIZE_MIN;
    cp.detached = plan.shift == 0;
    cp.data_offset = Some(plan.shift);
    cp.keyslots_size = (plan.shift > 0).then(|| plan.shift - 2 * HDR_SIZE_MIN);
    cp.luks2_layout()?;
    if plan.shift > 0 {
        move_first(data, plan)?;
    }
    let forced = match cp.keyslot.kdf {
        KdfKind::Pbkdf2 => cp.keyslot.iterations,
        _ => None,
    };
    let (_, key) = Luks2Volume::create_with(hdev, &cp, passphrase, &mut |md, key| {
        encrypt_metadata(md, key, p, plan, forced)
    })?;
    Ok(key)
}

/// Copy the first `shift` plaintext bytes to the end of the device (in the kernel
/// for a file, see [`BlockDriver::copy_from`]), flushed.
fn move_first(data: &dyn BlockDriver, plan: EncryptPlan) -> Result<()> {
    data.copy_from(data, 0, plan.moved_at, plan.shift)
        .ctx("copying the start of the device to its end")?;
    data.flush()
}

/// The checksum block of an encryption of `data_size` bytes in `ss`-byte sectors:
/// 4096 bytes (or the sector size, if larger) as cryptsetup picks, lowered to the
/// largest power of two (not below the sector size) that divides the data size, so
/// that the last hotzone ends in a whole block: cryptsetup's recovery skips a partial
/// last block, which an interruption before its write would leave in plaintext.
fn checksum_block(ss: u32, data_size: u64) -> u32 {
    let mut b = ss.max(4096);
    while b > ss && !data_size.is_multiple_of(u64::from(b)) {
        b /= 2;
    }
    b
}

/// Turn the metadata of a fresh header into cryptsetup's encryption start state.
fn encrypt_metadata(
    md: &mut Metadata,
    key: &SecretBytes,
    p: &EncryptParams,
    plan: EncryptPlan,
    forced: Option<u32>,
) -> Result<()> {
    let cfg = md.config()?;
    let shift = plan.shift;
    let ss = p.create.sector_size;
    let enc = p.create.spec.luks2_encryption();
    let mut segs = initial_segments(shift, shift, plan.data_size, plan.moved_at);
    if shift > 0 {
        segs.push(linear_segment(plan.moved_at, Some(shift), Some(MOVED)));
        segs.push(linear_segment(
            0,
            Some(plan.data_size),
            Some("backup-previous"),
        ));
    } else {
        segs.push(linear_segment(0, None, Some("backup-previous")));
    }
    segs.push(crypt_segment(
        shift,
        0,
        None,
        &enc,
        ss,
        Some("backup-final"),
    ));
    let last = (segs.len() - 1).to_string();
    md.set_segments(
        segs.into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
    )?;
    md.set_digest_segments(0, vec![last.into()])?;

    let start = 2 * HDR_SIZE_MIN + area_size(key.len());
    let end = 2 * HDR_SIZE_MIN + cfg.keyslots_size;
    let (resilience, size) = match (shift, p.resilience) {
        (s, _) if s > 0 => (Resilience::Other("datashift".into()), 4096),
        (_, ResilienceChoice::Checksum) => (
            Resilience::Checksum {
                hash: p.hash.name().into(),
                sector_size: checksum_block(ss, plan.data_size),
            },
            end - start,
        ),
        (_, ResilienceChoice::Journal) => (Resilience::Journal, end - start),
        (_, ResilienceChoice::None) => (Resilience::None, end - start),
    };
    ensure!(
        start + size <= end,
        Usage,
        "no room in the LUKS2 keyslots area for the reencryption metadata"
    );
    let Some(rslot) = md.first_free_keyslot()? else {
        bail!(Busy, "no free LUKS2 keyslot for the reencryption metadata");
    };
    let rk = ReencryptKeyslot {
        id: rslot,
        mode: "encrypt".into(),
        direction: if shift > 0 { "backward" } else { "forward" }.into(),
        area_offset: start,
        area_size: size,
        resilience,
    };
    md.add_keyslot(rslot, keyslot_json(&rk, shift))?;
    md.set_mandatory_requirements(&[reencrypt::REQUIREMENT.into()])?;
    let vid = md.first_free_digest()?;
    let vd = verification_digest(md, key, vid, forced)?;
    md.set_digest(vid, vd.to_json())?;
    md.set_digest_segments(vid, vec![])
}
