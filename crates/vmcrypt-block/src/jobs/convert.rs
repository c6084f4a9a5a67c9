//! Copy one graph's guest bytes into another (`vmcrypt convert`).
//!
//! Works in chunks; asks the source for holes and, where the target already reads as
//! zeros (a freshly created sparse file), skips zero ranges at 4 KiB granularity so the
//! target stays sparse. An encrypted target never reads as zeros, so zeros are written
//! (encrypted) there.
//!
//! Reading and writing overlap: a reader thread plans the chunks (block status) and
//! reads them into a few reusable buffers, which it hands over a bounded channel to the
//! calling thread; that thread writes them with [`BlockDriver::write_at_mut`] (so an
//! encrypting target encrypts in place) and sends the buffer back for the next read.
//!
//! A target whose writes at distinct offsets do not depend on each other (a file, or a
//! raw or LUKS node straight over one) is instead copied by one worker per core, each
//! reading, encrypting and writing its own chunks (`convert_parallel.rs`), so that the
//! reads and the encryption overlap the writes, which the host may serialise.
//!
//! The job around the copy ([`ConvertRequest`], [`run`]) lives in `convert_target.rs`:
//! it opens the source, creates or opens the target and decides whether the target
//! already reads as zeros.
use crate::driver::{Allocation, BlockDriver};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use vmcrypt_error::{Result, ResultExt, bail};

pub use super::convert_target::{ConvertReport, ConvertRequest, convert_from, run};

/// Copy granularity.
pub const CHUNK: usize = 8 << 20;
/// Zero-detection granularity (qemu-img's default `-S 4k`).
pub const ZERO_GRAIN: usize = 4096;
/// Chunk buffers in circulation: one being read, one queued, one being written.
const BUFFERS: usize = 3;

/// What a conversion did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub bytes_written: u64,
    pub bytes_skipped: u64,
}

/// One planned piece of the copy, in order.
enum Piece {
    /// The source reads as zeros here.
    Zero { off: u64, len: u64 },
    /// Source bytes at `off`: `buf` holds exactly them.
    Data { off: u64, buf: Vec<u8> },
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
    progress(0, total);
    if super::convert_parallel::independent_writes(dst) {
        let stats = super::convert_parallel::copy(src, dst, target_zeroed, progress)?;
        dst.flush()?;
        return Ok(stats);
    }
    let (piece_tx, piece_rx) = sync_channel::<Result<Piece>>(BUFFERS - 1);
    let (buf_tx, buf_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    let size = (CHUNK as u64).min(total) as usize;
    for _ in 0..BUFFERS {
        buf_tx
            .send(vec![0u8; size])
            .expect("fresh channel has room");
    }
    std::thread::scope(|s| {
        let plan = Planner::new(total, target_zeroed);
        s.spawn(move || read_pieces(src, plan, &piece_tx, &buf_rx));
        // When this returns early, `piece_rx` and `buf_tx` drop, which stops the reader.
        write_pieces(
            dst,
            target_zeroed,
            total,
            piece_rx,
            buf_tx,
            &mut stats,
            progress,
        )
    })?;
    dst.flush()?;
    Ok(stats)
}

/// Where the copy stands: the next offset and the last block-status answer. Hands out
/// the copy in order as zero runs (of at most `zero_cap` bytes) and data ranges of at
/// most [`CHUNK`] bytes.
pub(super) struct Planner {
    off: u64,
    total: u64,
    zero_cap: u64,
    // One block-status answer serves every chunk it covers (tmpfs answers SEEK_DATA
    // by scanning to the end of the file, so asking per chunk is quadratic).
    cached: Option<(u64, u64, Allocation)>,
}

impl Planner {
    pub(super) fn new(total: u64, target_zeroed: bool) -> Self {
        // A target that reads zeros already skips zero runs whole: one piece per run,
        // not one per chunk (a 1 TiB hole was 131072 channel round trips).
        let zero_cap = if target_zeroed {
            u64::MAX
        } else {
            CHUNK as u64
        };
        Planner {
            off: 0,
            total,
            zero_cap,
            cached: None,
        }
    }

    /// The next piece as `(offset, length, reads as zeros)`, `None` at the end.
    pub(super) fn next(&mut self, src: &dyn BlockDriver) -> Result<Option<(u64, u64, bool)>> {
        let (off, total) = (self.off, self.total);
        if off >= total {
            return Ok(None);
        }
        let (alloc, ext_end) = match self.cached {
            Some((s, e, a)) if s <= off && off < e => (a, e),
            _ => {
                let ext = src
                    .block_status(off, total - off)
                    .ctx("querying source allocation")?;
                let e = off + ext.length.max(1);
                self.cached = Some((off, e, ext.allocation));
                (ext.allocation, e)
            }
        };
        let zero = alloc == Allocation::Zero;
        let cap = if zero { self.zero_cap } else { CHUNK as u64 };
        let len = (ext_end - off).clamp(1, cap.min(total - off));
        self.off += len;
        Ok(Some((off, len, zero)))
    }
}

/// The reader thread: plan chunks from the source's allocation and read data chunks
/// into buffers taken from `bufs`. Stops at the end, at the first error (sent on), or
/// when the writer hangs up.
fn read_pieces(
    src: &dyn BlockDriver,
    mut plan: Planner,
    out: &SyncSender<Result<Piece>>,
    bufs: &Receiver<Vec<u8>>,
) {
    loop {
        let (off, len) = match plan.next(src) {
            Ok(Some((off, len, true))) => {
                if out.send(Ok(Piece::Zero { off, len })).is_err() {
                    return;
                }
                continue;
            }
            Ok(Some((off, len, false))) => (off, len),
            Ok(None) => return,
            Err(e) => {
                let _ = out.send(Err(e));
                return;
            }
        };
        let Ok(mut buf) = bufs.recv() else { return };
        buf.resize(len as usize, 0);
        if let Err(e) = src.read_at(&mut buf, off) {
            let _ = out.send(Err(e).with_ctx(|| format!("reading source at offset {off}")));
            return;
        }
        if out.send(Ok(Piece::Data { off, buf })).is_err() {
            return;
        }
    }
}

/// The calling thread: write the pieces in order, hand buffers back, report progress.
fn write_pieces(
    dst: &dyn BlockDriver,
    target_zeroed: bool,
    total: u64,
    pieces: Receiver<Result<Piece>>,
    bufs: SyncSender<Vec<u8>>,
    stats: &mut ConvertStats,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut done = 0u64;
    while done < total {
        let Ok(piece) = pieces.recv() else {
            bail!(Internal, "the source reader stopped at offset {done}");
        };
        match piece? {
            Piece::Zero { off, len } => {
                if target_zeroed {
                    stats.bytes_skipped += len;
                } else {
                    dst.write_zeroes(off, len)?;
                    stats.bytes_written += len;
                }
                done = off + len;
            }
            Piece::Data { off, mut buf } => {
                copy_runs(dst, &mut buf, off, target_zeroed, stats)
                    .with_ctx(|| format!("writing target at offset {off}"))?;
                done = off + buf.len() as u64;
                // The reader may already have finished and gone: nothing to hand back.
                let _ = bufs.send(buf);
            }
        }
        progress(done, total);
    }
    Ok(())
}

/// Write `b` at `off`, leaving out 4 KiB-aligned all-zero pieces when the target is
/// zeroed. The target may clobber `b` (it is not read again after being written).
pub(super) fn copy_runs(
    dst: &dyn BlockDriver,
    b: &mut [u8],
    off: u64,
    target_zeroed: bool,
    stats: &mut ConvertStats,
) -> Result<()> {
    if !target_zeroed {
        dst.write_at_mut(b, off)?;
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
            dst.write_at_mut(&mut b[i..j], off + i as u64)?;
            stats.bytes_written += (j - i) as u64;
        }
        i = j;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
