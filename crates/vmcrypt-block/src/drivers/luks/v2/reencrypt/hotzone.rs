//! What the three hotzone engines (new volume key in the parent module, `encrypt.rs`,
//! `decrypt.rs`) share: the hotzone size a run may use, and the checksum recovery of
//! an interrupted hotzone. Each engine keeps its own step, header and write order.
use super::{CHUNK, DEFAULT_HOTZONE, checksum_hash, checksums};
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::Luks2Volume;
use rayon::prelude::*;
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::{Layout, ReencryptKeyslot, Resilience};

/// The hotzone size and alignment of a run protected by `k` (whose checksum hash,
/// if any, is checked ready to hash: `checksum_hash`): the alignment is
/// `align` raised to the checksum block (which must be a power of two from 512 to
/// `max_block`); the hotzone is `want` (default [`DEFAULT_HOTZONE`], a multiple of
/// the alignment) capped by what the `reencrypt` area can protect, rounded down to
/// the alignment. Returns `(hotzone, align)`.
pub(super) fn size(
    k: &ReencryptKeyslot,
    mut align: u64,
    max_block: u32,
    want: Option<u64>,
) -> Result<(u64, u64)> {
    let area = k.area_size;
    let max = match (&k.resilience, checksum_hash(&k.resilience)?) {
        (Resilience::Checksum { sector_size, .. }, Some(h)) => {
            ensure!(
                sector_size.is_power_of_two() && (512..=max_block).contains(sector_size),
                Corrupt,
                "LUKS2 reencryption checksum block size {sector_size} is invalid"
            );
            align = align.max(u64::from(*sector_size));
            area / h.output_len() as u64 * u64::from(*sector_size)
        }
        (Resilience::Journal, _) => area,
        _ => u64::MAX,
    };
    let want = want.unwrap_or(DEFAULT_HOTZONE);
    ensure!(
        want.is_multiple_of(align) && want > 0,
        Usage,
        "hotzone size {want} must be a multiple of {align} bytes"
    );
    let hotzone = want.min(max) / align * align;
    ensure!(hotzone > 0, Corrupt, "LUKS2 reencryption area is too small");
    Ok((hotzone, align))
}

/// Recover an interrupted checksum-protected hotzone (`buf.len()` bytes at `at` on
/// `data`, checksums of `hash` over `sector_size`-byte blocks in `k`'s area): read the
/// stored checksums, then the hotzone into `buf`, and call `redo(rel, block)` on each
/// block whose hash still matches (not yet written); the other blocks are already
/// done. The caller writes `buf` back. A last hotzone that is not a whole number of
/// blocks ends in a partial block, whose checksum covers its bytes only (as the
/// protect step hashes it). cryptsetup 2.6 skips such a block in its recovery, and
/// hashes a whole block's worth of its buffer for it, so its checksum never matches
/// here: the block is taken as written, as cryptsetup takes it.
pub(super) fn redo_unwritten(
    vol: &Luks2Volume,
    data: &dyn BlockDriver,
    k: &ReencryptKeyslot,
    (hash, sector_size): (&str, u32),
    at: u64,
    buf: &mut [u8],
    mut redo: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    let (h, bs) = (HashAlg::from_name(hash)?, sector_size as usize);
    let hl = h.output_len();
    // A last hotzone may end in a partial block, hashed as it is (`checksums`).
    let mut stored = vec![0u8; buf.len().div_ceil(bs) * hl];
    ensure!(
        stored.len() as u64 <= k.area_size,
        Corrupt,
        "LUKS2 hotzone checksums do not fit their area"
    );
    vol.dev.read_at(&mut stored, k.area_offset)?;
    data.read_at(buf, at)?;
    let now = checksums(h, bs, buf);
    for (b, blk) in buf.chunks_mut(bs).enumerate() {
        if now[b * hl..(b + 1) * hl] == stored[b * hl..(b + 1) * hl] {
            redo((b * bs) as u64, blk)?;
        }
    }
    Ok(())
}

/// Redo the interrupted hotzone at `offset` (`len` bytes from the data start of
/// `layout`) from its protection in `k`'s area, write it back and flush `data`:
/// with checksums, each block whose hash still matches goes through `redo`; with a
/// journal, the whole copy does (over the cores); `none` cannot be recovered.
/// `redo(offset, bytes)` gets the offset from the data start. The caller then marks
/// the hotzone done.
#[allow(clippy::too_many_arguments)]
pub(super) fn recover(
    vol: &Luks2Volume,
    data: &dyn BlockDriver,
    k: &ReencryptKeyslot,
    layout: Layout,
    align: u64,
    offset: u64,
    len: u64,
    redo: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
) -> Result<()> {
    ensure!(
        len.is_multiple_of(align) && offset + len <= layout.data_size,
        Corrupt,
        "LUKS2 hotzone ({offset}+{len}) is misaligned or beyond the data"
    );
    let at = layout.data_offset + offset;
    let mut buf = vec![0u8; len as usize];
    match &k.resilience {
        Resilience::Checksum { hash, sector_size } => {
            let sums = (hash.as_str(), *sector_size);
            redo_unwritten(vol, data, k, sums, at, &mut buf, |rel, blk| {
                redo(offset + rel, blk)
            })?;
        }
        Resilience::Journal => {
            vol.load_journal(k, &mut buf)?;
            buf.par_chunks_mut(CHUNK)
                .enumerate()
                .try_for_each(|(i, c)| redo(offset + (i * CHUNK) as u64, c))?;
        }
        _ => bail!(
            Corrupt,
            "an interrupted hotzone at {at} cannot be recovered with resilience \"{}\"",
            k.resilience.name()
        ),
    }
    data.write_at(&buf, at)
        .ctx("writing the recovered hotzone")?;
    data.flush()
}
