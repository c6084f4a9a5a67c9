//! In-place conversion between LUKS1 and LUKS2 (`cryptsetup convert --type luks1|luks2`),
//! without a passphrase: the key material, salts, iteration counts and the master-key
//! digest move over verbatim, and the data is never touched.
//!
//! Both directions apply cryptsetup's rules and refuse the rest with the reason (argon2
//! keyslots, tokens, 4096-byte sectors, a LUKS1 layout with no room for two 16 KiB
//! LUKS2 headers, ...). Two refusals are our own: no crash-safe placement exists (e.g.
//! all eight LUKS1 slots in use, which cryptsetup converts by an overlapping move), and
//! a LUKS2 header with a damaged copy (cryptsetup would repair it silently first).
//! Every refusal happens before the first write.
//!
//! # Crash safety
//!
//! Interrupting after any single write leaves a device that opens with the old format
//! or the new one, with the same key set. Both formats find key material by offset, and
//! the version is decided by the first 8 bytes of the device (vmcrypt's `probe_version`
//! and cryptsetup both read offset 0), so each direction is: copy material to places
//! the old header does not use, switch the header at offset 0 in one write, clean up.
//! Every write is followed by a flush.
//!
//! * **LUKS1 -> LUKS2.** (1) Each active slot's material is copied to a new LUKS2 area
//!   (4 KiB aligned, after the two 16 KiB headers, before the data) that overlaps no
//!   active LUKS1 material; disabled slots' areas are reused. LUKS1 is untouched so
//!   far. (2) The LUKS2 primary header (16 KiB at offset 0) is written in one write: it
//!   replaces the LUKS1 header; the secondary copy is still missing, which the LUKS2
//!   loaders accept (cryptsetup repairs it). (3) The secondary copy is written. (4) Old
//!   material that no LUKS2 area covers is overwritten with random bytes.
//! * **LUKS2 -> LUKS1.** (1) Each active keyslot's material is copied to a LUKS1 place
//!   that overlaps no LUKS2 area in use and neither LUKS2 header copy. (2) The 592-byte
//!   LUKS1 header is written at offset 0 in one write: version 1 at offset 0 now wins,
//!   the still intact LUKS2 secondary copy is ignored by readers that look at offset 0
//!   first (checked against cryptsetup in the interop tests). (3) The rest of both LUKS2
//!   header copies `[592, 2 * hdr_size)` is zeroed, so no LUKS2 signature remains.
//!   (4) The old LUKS2 areas are overwritten with random bytes. Disabled LUKS1 slots
//!   get placeholder offsets (LUKS1 validates all eight) that are never written.
//!   A LUKS2 header that needs repair (a damaged copy) is refused: repair it first.
//!
//! # Placement
//!
//! cryptsetup converts by shifting the whole key-material block by 28 KiB (an
//! overlapping copy, not crash-safe). We put slots into the same cells cryptsetup's
//! layouts use (`32 KiB + k * area` in LUKS2, `4 KiB + k * area` in LUKS1), choosing for
//! each moved slot a cell that is clear of all material in use; a slot already in a
//! cell stays. The result is therefore in the layout `cryptsetup convert` expects, and
//! it can convert it back. When no such assignment exists (e.g. LUKS1 slots 0, 2, 4
//! and 6 in use), a fallback keeps every slot that may stay where it is (LUKS2 areas
//! become LUKS1 material unchanged and vice versa) and first-fits the rest; the result
//! is valid and vmcrypt converts it back, cryptsetup may refuse to. If nothing fits
//! without overwriting material in use (e.g. all eight LUKS1 slots active), the
//! conversion is refused; there is no unsafe fallback.
//!
//! Before anything is written the new header is encoded and checked by the same
//! validation the loaders apply, against the device as it will be.
mod to_luks1;
mod to_luks2;

pub use to_luks1::luks2_to_luks1;
pub use to_luks2::luks1_to_luks2;

use crate::driver::BlockDriver;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::random;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// The LUKS2 header size a conversion from LUKS1 uses (cryptsetup's: 16 KiB per copy).
pub const CONVERT_HDR_SIZE: u64 = 16 << 10;
/// LUKS2 keyslot areas are 4 KiB aligned.
const AREA_ALIGN: u64 = 4096;
/// Lowest LUKS1 key-material offset written (sector 8, as cryptsetup's layouts).
const LUKS1_FIRST_MATERIAL: u64 = 4096;
/// Marker of luksmeta's foreign metadata after the LUKS1 key material.
const LUKSMETA_MAGIC: &[u8; 8] = b"LUKSMETA";

/// Where one active key slot's material was and is now (bytes on the header device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotMove {
    pub slot: u32,
    pub old_offset: u64,
    pub new_offset: u64,
}

impl SlotMove {
    /// The material was copied (it did not stay in place).
    pub fn moved(&self) -> bool {
        self.old_offset != self.new_offset
    }
}

/// What a conversion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertReport {
    pub from_version: u16,
    pub to_version: u16,
    /// Active key slots, by id.
    pub keyslots: Vec<SlotMove>,
    /// Bytes of old key material / metadata that were wiped afterwards.
    pub wiped_bytes: u64,
    /// Data (payload) offset in bytes, unchanged.
    pub data_offset: u64,
}

fn refuse(to: &str, why: impl std::fmt::Display) -> Error {
    Error::unsupported(format!("cannot convert to {to}: {why}"))
}

/// Half-open byte range.
type Span = (u64, u64);

fn overlaps(a: Span, b: Span) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The lowest `align`-aligned offset in `[start, limit)` where `len` bytes overlap none
/// of `used`.
fn first_fit(start: u64, limit: u64, len: u64, align: u64, used: &[Span]) -> Option<u64> {
    let mut cur = start.div_ceil(align) * align;
    loop {
        let end = cur.checked_add(len)?;
        if end > limit {
            return None;
        }
        match used
            .iter()
            .filter(|u| overlaps(**u, (cur, end)))
            .map(|u| u.1)
            .max()
        {
            None => return Some(cur),
            Some(past) => cur = past.div_ceil(align) * align,
        }
    }
}

/// `a` minus every range of `holes`.
fn subtract(a: Span, holes: &[Span]) -> Vec<Span> {
    let mut out = vec![a];
    for h in holes {
        out = out
            .into_iter()
            .flat_map(|s| {
                if !overlaps(s, *h) {
                    return vec![s];
                }
                let mut v = Vec::new();
                if s.0 < h.0 {
                    v.push((s.0, h.0));
                }
                if h.1 < s.1 {
                    v.push((h.1, s.1));
                }
                v
            })
            .collect();
    }
    out
}

/// Place items on the grid `base + k * stride` (`k < n`): an item whose `current` offset
/// is a grid position keeps it, the others take the lowest free position where
/// `clear(position, item)` holds. Returns the positions and which grid cells are taken,
/// or None if some item finds no cell.
fn grid_assign(
    base: u64,
    stride: u64,
    n: u64,
    current: &[u64],
    clear: impl Fn(u64, usize) -> bool,
) -> Option<(Vec<u64>, Vec<bool>)> {
    let pos = |k: u64| base + k * stride;
    let mut taken = vec![false; n as usize];
    let mut out = vec![None; current.len()];
    for (j, &c) in current.iter().enumerate() {
        if c >= base && (c - base).is_multiple_of(stride) {
            let k = (c - base) / stride;
            if k < n && !taken[k as usize] && clear(c, j) {
                taken[k as usize] = true;
                out[j] = Some(c);
            }
        }
    }
    for (j, slot) in out.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let k = (0..n).find(|&k| !taken[k as usize] && clear(pos(k), j))?;
        taken[k as usize] = true;
        *slot = Some(pos(k));
    }
    Some((out.into_iter().collect::<Option<Vec<_>>>()?, taken))
}

fn write_flush(dev: &dyn BlockDriver, buf: &[u8], off: u64, what: &str) -> Result<()> {
    dev.write_at(buf, off)
        .with_ctx(|| format!("writing {what}"))?;
    dev.flush()
}

fn wipe(dev: &dyn BlockDriver, spans: &[Span]) -> Result<u64> {
    let mut total = 0;
    for &(a, b) in spans.iter().filter(|s| s.1 > s.0) {
        let mut noise = vec![0u8; (b - a) as usize];
        random::fill(&mut noise)?;
        write_flush(dev, &noise, a, "over old key material")?;
        total += b - a;
    }
    Ok(total)
}

fn ensure_writable(dev: &dyn BlockDriver) -> Result<()> {
    ensure!(
        !dev.is_read_only(),
        ReadOnly,
        "the LUKS header device is open read-only"
    );
    Ok(())
}

/// Convert whichever version `dev` holds to the other one.
pub fn convert_to(
    dev: Arc<dyn BlockDriver>,
    version: u16,
    detached: bool,
    limits: &KdfLimits,
) -> Result<ConvertReport> {
    match version {
        1 => luks2_to_luks1(dev, detached, limits),
        2 => luks1_to_luks2(dev, detached, limits),
        v => bail!(Usage, "cannot convert to LUKS version {v} (1 or 2)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_skips_used_ranges() {
        let used = [(4096, 8192), (12288, 20000)];
        assert_eq!(first_fit(0, 100_000, 4096, 4096, &used), Some(0));
        assert_eq!(first_fit(4096, 100_000, 4096, 4096, &used), Some(8192));
        assert_eq!(first_fit(4096, 100_000, 8192, 4096, &used), Some(20480));
        assert_eq!(first_fit(4096, 20000, 8192, 4096, &used), None);
    }

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(
            subtract((0, 100), &[(10, 20), (50, 200)]),
            vec![(0, 10), (20, 50)]
        );
        assert_eq!(subtract((0, 100), &[(0, 100)]), Vec::<Span>::new());
        assert_eq!(subtract((0, 100), &[(200, 300)]), vec![(0, 100)]);
    }
}
