//! Where a connection runs a request: on its own task (inline) or on tokio's blocking
//! pool.
//!
//! Handing a 4 KiB request to the blocking pool and its reply back costs several thread
//! wake-ups, more than the request itself when the image sits in the page cache; with
//! another process busy on a core every wake-up also waits for a time slice. So small
//! READs and WRITEs run inline on the connection's task while the node answers them
//! quickly, and their replies go out together. A node that blocks (a disk, a network
//! file system) would stall the connection and a runtime worker that way, and would
//! lose the parallelism of several requests in flight, so [`Pace`] keeps a running
//! share of slow answers (a moving average over about the last 8 small requests,
//! wherever they ran): while more than one in four is slow, small requests go to the
//! blocking pool, where they are still timed. A single slow answer does not count for
//! much, as a request can be slow because its thread lost the CPU for a moment on a
//! busy machine, which says nothing about the node. A connection starts on the pool
//! until it has seen the node answer quickly.
use crate::proto::transmission::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Largest READ or WRITE that may run inline.
pub(crate) const INLINE_MAX: u32 = 64 << 10;

/// A request that takes longer than this counts as slow.
pub(crate) const SLOW: Duration = Duration::from_micros(50);

/// The share of slow answers is kept in units of 1/[`ONE`].
const ONE: u32 = 1024;

/// Small requests run inline while the share of slow answers is below this.
const INLINE_BELOW: u32 = ONE / 4;

/// Each answer moves the share 1/`WEIGHT` of the way to 0 (fast) or [`ONE`] (slow).
const WEIGHT: u32 = 8;

/// A connection's record of how fast its node answers small requests, shared with the
/// pool tasks that time them.
#[derive(Clone, Debug)]
pub(crate) struct Pace(Arc<AtomicU32>);

impl Default for Pace {
    fn default() -> Self {
        Pace(Arc::new(AtomicU32::new(ONE)))
    }
}

/// Whether `cmd` is the kind of request that may run inline: a READ or a WRITE without
/// FUA (which would wait for a flush) of at most [`INLINE_MAX`] bytes.
pub(crate) fn small(cmd: &Command) -> bool {
    match *cmd {
        Command::Read { length, .. } => length <= INLINE_MAX,
        Command::Write { length, fua, .. } => !fua && length <= INLINE_MAX,
        _ => false,
    }
}

impl Pace {
    /// Run the next small request inline?
    pub(crate) fn inline(&self) -> bool {
        self.0.load(Ordering::Relaxed) < INLINE_BELOW
    }

    /// Record how long a small request took, wherever it ran.
    pub(crate) fn record(&self, took: Duration) {
        let old = self.0.load(Ordering::Relaxed);
        let target = if took > SLOW { ONE } else { 0 };
        let new = old - old / WEIGHT + target / WEIGHT;
        // Racing updates from pool threads may lose one; the share stays a fair guess.
        self.0.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(5);
    const SLOWER: Duration = Duration::from_millis(2);

    fn record(p: &Pace, answers: &[Duration]) {
        for &t in answers {
            p.record(t);
        }
    }

    #[test]
    fn a_new_connection_goes_inline_after_fast_answers() {
        let p = Pace::default();
        assert!(!p.inline());
        record(&p, &[FAST; 10]);
        assert!(!p.inline());
        record(&p, &[FAST; 2]);
        assert!(p.inline());
    }

    #[test]
    fn a_few_slow_answers_in_a_row_send_requests_to_the_pool() {
        let p = Pace::default();
        record(&p, &[FAST; 100]);
        p.record(SLOWER);
        assert!(p.inline(), "one slow answer is not enough");
        record(&p, &[SLOWER; 2]);
        assert!(!p.inline());
        // A run of fast answers brings them back.
        record(&p, &[FAST; 2]);
        assert!(!p.inline());
        record(&p, &[FAST; 8]);
        assert!(p.inline());
    }

    #[test]
    fn the_share_of_slow_answers_decides() {
        let p = Pace::default();
        record(&p, &[FAST; 100]);
        // One slow answer in ten (a busy machine) keeps requests inline...
        for i in 0..1000 {
            p.record(if i % 10 == 0 { SLOWER } else { FAST });
            assert!(p.inline(), "pool after {i} answers");
        }
        // ...one in two (a disk) does not.
        record(&p, &[SLOWER, FAST].repeat(4));
        for i in 0..1000 {
            p.record(if i % 2 == 0 { SLOWER } else { FAST });
            assert!(!p.inline(), "inline after {i} answers");
        }
    }

    #[test]
    fn only_small_reads_and_writes_without_fua_run_inline() {
        let read = |length| Command::Read { offset: 0, length };
        let write = |length, fua| Command::Write {
            offset: 0,
            length,
            fua,
        };
        assert!(small(&read(4096)) && small(&read(INLINE_MAX)));
        assert!(!small(&read(INLINE_MAX + 1)));
        assert!(small(&write(4096, false)));
        assert!(!small(&write(4096, true)));
        assert!(!small(&Command::Flush));
    }
}
