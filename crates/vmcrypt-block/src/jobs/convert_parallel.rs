//! The copy of `vmcrypt convert` for targets whose writes are independent: one worker
//! per core (at most four) takes the next piece from a shared [`Planner`], reads it,
//! and writes it with [`BlockDriver::write_at_mut`] (an encrypting target encrypts in
//! place), so pieces land out of order.
//!
//! Why: a file on tmpfs (and most file systems) takes the file's lock for each write,
//! so writes to one file run one at a time. With a single writer that also encrypts,
//! the other core sat idle while it encrypted; here, while one worker writes, the
//! others read and encrypt. Only for targets where the order of writes cannot change
//! the result (no allocation on write, unlike qcow2, whose layout follows the order).
use super::convert::{CHUNK, ConvertStats, Planner, copy_runs};
use crate::driver::BlockDriver;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vmcrypt_error::{Result, ResultExt};

/// Most workers: the writes are serialised by the host, so more do not help.
const MAX_WORKERS: usize = 4;

/// Whether `dst` may be written by several threads in any order with the same result:
/// a file, or a raw or LUKS node (not in reencryption) whose children are all files.
pub(super) fn independent_writes(dst: &dyn BlockDriver) -> bool {
    match dst.driver_name() {
        "file" => true,
        "raw" | "luks" => {
            dst.as_reencryption().is_none()
                && dst
                    .children()
                    .iter()
                    .all(|c| c.node.driver_name() == "file")
        }
        _ => false,
    }
}

/// State the workers share.
struct Shared<'a> {
    src: &'a dyn BlockDriver,
    dst: &'a dyn BlockDriver,
    target_zeroed: bool,
    plan: Mutex<Planner>,
    /// Bytes finished, in any order.
    done: AtomicU64,
    /// Set by a worker that failed, so the others stop.
    failed: AtomicBool,
}

/// Copy `src` into `dst` (at least as large) with the workers; `progress` is called
/// on this thread with the bytes finished so far.
pub(super) fn copy(
    src: &dyn BlockDriver,
    dst: &dyn BlockDriver,
    target_zeroed: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    let total = src.size();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_WORKERS);
    let sh = Shared {
        src,
        dst,
        target_zeroed,
        plan: Mutex::new(Planner::new(total, target_zeroed)),
        done: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    };
    let mut reported = 0;
    let results = std::thread::scope(|s| {
        let others: Vec<_> = (1..workers)
            .map(|_| s.spawn(|| work(&sh, &mut |_| {})))
            .collect();
        let mine = work(&sh, &mut |d| {
            reported = d;
            progress(d, total);
        });
        let mut all = vec![mine];
        all.extend(
            others
                .into_iter()
                .map(|h| h.join().expect("convert worker")),
        );
        all
    });
    let mut stats = ConvertStats::default();
    for r in results {
        let s = r?;
        stats.bytes_written += s.bytes_written;
        stats.bytes_skipped += s.bytes_skipped;
    }
    if reported < total {
        progress(total, total);
    }
    Ok(stats)
}

/// One worker: take pieces until there are none left or a worker failed; `report` gets
/// the shared count of finished bytes after each piece.
fn work(sh: &Shared<'_>, report: &mut dyn FnMut(u64)) -> Result<ConvertStats> {
    let r = work_inner(sh, report);
    if r.is_err() {
        sh.failed.store(true, Ordering::Relaxed);
    }
    r
}

fn work_inner(sh: &Shared<'_>, report: &mut dyn FnMut(u64)) -> Result<ConvertStats> {
    let mut stats = ConvertStats::default();
    let mut buf = Vec::with_capacity(CHUNK.min(sh.src.size() as usize));
    while !sh.failed.load(Ordering::Relaxed) {
        let next = sh
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(sh.src)?;
        let Some((off, len, zero)) = next else { break };
        if zero && sh.target_zeroed {
            stats.bytes_skipped += len;
        } else if zero {
            sh.dst.write_zeroes(off, len)?;
            stats.bytes_written += len;
        } else {
            buf.resize(len as usize, 0);
            sh.src
                .read_at(&mut buf, off)
                .with_ctx(|| format!("reading source at offset {off}"))?;
            copy_runs(sh.dst, &mut buf, off, sh.target_zeroed, &mut stats)
                .with_ctx(|| format!("writing target at offset {off}"))?;
        }
        report(sh.done.fetch_add(len, Ordering::Relaxed) + len);
    }
    Ok(stats)
}
