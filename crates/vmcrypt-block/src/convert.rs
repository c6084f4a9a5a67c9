//! Copy one graph's guest bytes into another (`vmcrypt convert`).
//!
//! Works in chunks; asks the source for holes and, where the target already reads as
//! zeros (a freshly created sparse file), skips zero ranges at 4 KiB granularity so the
//! target stays sparse. An encrypted target never reads as zeros, so zeros are written
//! (encrypted) there.
use crate::driver::{Allocation, BlockDriver, Extent};
use vmcrypt_error::{Result, ResultExt, bail};

/// Copy granularity.
pub const CHUNK: usize = 2 << 20;
/// Zero-detection granularity (qemu-img's default `-S 4k`).
pub const ZERO_GRAIN: usize = 4096;

/// What a conversion did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub bytes_written: u64,
    pub bytes_skipped: u64,
}

/// Copy `src` into `dst`. `target_zeroed` says `dst` reads as zeros everywhere now
/// (so zero ranges may be skipped). `progress(done, total)` is called after each chunk.
pub fn convert(
    src: &dyn BlockDriver,
    dst: &dyn BlockDriver,
    target_zeroed: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    let total = src.size();
    if dst.size() < total {
        bail!(
            OutOfRange,
            "target is smaller ({} bytes) than the source ({total} bytes)",
            dst.size()
        );
    }
    let mut stats = ConvertStats::default();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    progress(0, total);
    let mut cached: Option<(u64, u64, Allocation)> = None;
    while off < total {
        let want = (CHUNK as u64).min(total - off);
        let (alloc, ext_end) = match cached {
            Some((s, e, a)) if s <= off && off < e => (a, e),
            _ => {
                let ext = src
                    .block_status(off, total - off)
                    .ctx("querying source allocation")?;
                let e = off + ext.length.max(1);
                cached = Some((off, e, ext.allocation));
                (ext.allocation, e)
            }
        };
        let ext = Extent {
            offset: off,
            length: ext_end - off,
            allocation: alloc,
        };
        let len = ext.length.clamp(1, want);
        if ext.allocation == Allocation::Zero {
            if target_zeroed {
                stats.bytes_skipped += len;
            } else {
                dst.write_zeroes(off, len)?;
                stats.bytes_written += len;
            }
        } else {
            let b = &mut buf[..len as usize];
            src.read_at(b, off)
                .with_ctx(|| format!("reading source at offset {off}"))?;
            copy_runs(dst, b, off, target_zeroed, &mut stats)
                .with_ctx(|| format!("writing target at offset {off}"))?;
        }
        off += len;
        progress(off, total);
    }
    dst.flush()?;
    Ok(stats)
}

/// Write `b` at `off`, leaving out 4 KiB-aligned all-zero pieces when the target is zeroed.
fn copy_runs(
    dst: &dyn BlockDriver,
    b: &[u8],
    off: u64,
    target_zeroed: bool,
    stats: &mut ConvertStats,
) -> Result<()> {
    if !target_zeroed {
        dst.write_at(b, off)?;
        stats.bytes_written += b.len() as u64;
        return Ok(());
    }
    let mut i = 0;
    while i < b.len() {
        let zero = is_zero(&b[i..(i + ZERO_GRAIN).min(b.len())]);
        let mut j = i;
        while j < b.len() && is_zero(&b[j..(j + ZERO_GRAIN).min(b.len())]) == zero {
            j = (j + ZERO_GRAIN).min(b.len());
        }
        if zero {
            stats.bytes_skipped += (j - i) as u64;
        } else {
            dst.write_at(&b[i..j], off + i as u64)?;
            stats.bytes_written += (j - i) as u64;
        }
        i = j;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
