//! Where a connection runs a request: on its own task (inline) or on tokio's blocking
//! pool.
//!
//! Handing a 4 KiB request to the blocking pool and its reply back costs several thread
//! wake-ups, more than the request itself when the image sits in the page cache; with
//! another process busy on a core every wake-up also waits for a time slice. So small
//! READs and WRITEs run inline on the connection's task while the node answers them
//! quickly, and their replies go out together. A node that blocks (a disk, a network
//! file system) would stall the connection and a runtime worker that way, and would
//! lose the parallelism of several requests in flight, so [`Pace`] keeps a score of
//! slow answers: one slow request moves the next ones to the blocking pool, where they
//! are still timed, and only a run of fast answers brings them back. A connection starts
//! with the pool until it has seen the node answer quickly.
use crate::proto::transmission::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Largest READ or WRITE that may run inline.
pub(crate) const INLINE_MAX: u32 = 64 << 10;

/// A request that takes longer than this counts as slow.
pub(crate) const SLOW: Duration = Duration::from_micros(50);

/// Score added by a slow answer; a fast one takes 1 off. Inline only at 0, so one slow
/// request sends the next `SLOW_COST` fast ones to the pool, and a node slow for more
/// than about one request in `SLOW_COST` stays there.
const SLOW_COST: u32 = 8;

/// Highest score: after a long slow spell, this many fast answers bring requests back.
const MAX_SCORE: u32 = 64;

/// Score of a new connection: the node has to prove itself fast first.
const START_SCORE: u32 = 16;

/// A connection's record of how fast its node answers small requests, shared with the
/// pool tasks that time them.
#[derive(Clone, Debug)]
pub(crate) struct Pace(Arc<AtomicU32>);

impl Default for Pace {
    fn default() -> Self {
        Pace(Arc::new(AtomicU32::new(START_SCORE)))
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
        self.0.load(Ordering::Relaxed) == 0
    }

    /// Record how long a small request took, wherever it ran.
    pub(crate) fn record(&self, took: Duration) {
        let old = self.0.load(Ordering::Relaxed);
        let new = if took > SLOW {
            (old + SLOW_COST).min(MAX_SCORE)
        } else {
            old.saturating_sub(1)
        };
        // Racing updates from pool threads may lose one; the score stays a fair guess.
        self.0.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(5);
    const SLOWER: Duration = Duration::from_millis(2);

    #[test]
    fn a_new_connection_goes_inline_after_fast_answers() {
        let p = Pace::default();
        assert!(!p.inline());
        for _ in 0..START_SCORE - 1 {
            p.record(FAST);
        }
        assert!(!p.inline());
        p.record(FAST);
        assert!(p.inline());
    }

    #[test]
    fn one_slow_answer_sends_the_next_requests_to_the_pool() {
        let p = Pace(Arc::new(AtomicU32::new(0)));
        p.record(SLOWER);
        for _ in 0..SLOW_COST {
            assert!(!p.inline());
            p.record(FAST);
        }
        assert!(p.inline());
    }

    #[test]
    fn a_mostly_slow_node_stays_on_the_pool() {
        let p = Pace::default();
        for i in 0..1000 {
            p.record(if i % 3 == 0 { FAST } else { SLOWER });
            assert!(!p.inline(), "inline after {i} answers");
        }
        // The score is capped, so the node comes back once it is fast again.
        for _ in 0..MAX_SCORE {
            p.record(FAST);
        }
        assert!(p.inline());
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
