//! The CPU scheduling policy the server's threads run under.
//!
//! With one core busy (another program, a VM's vCPU), a request costs the server and its
//! client several context switches: under the default policy a thread woken by data on
//! its socket preempts the thread that sent it, so the client is stopped between a
//! WRITE's header and its payload, and between one request and the next, and the server
//! handles one request per wake-up. `SCHED_BATCH` threads are never woken into
//! preempting another: the client goes on until it waits for replies, and the server
//! then finds its whole queue of requests and answers them in one write. Measured with
//! `scripts/bench-iops.sh` (4 KiB, 16 in flight, one core busy) that cut the server's
//! context switches from about 2 to under 0.1 per request and doubled IOPS; with
//! nothing else running it changes little (the server has a core of its own). Threads
//! inherit the policy, so setting it on the thread that builds the runtime covers the
//! runtime's workers and its blocking pool.
use vmcrypt_error::{Error, ErrorKind, Result};

/// A Linux scheduling policy for the server's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_OTHER`: what threads get by default.
    Normal,
    /// `SCHED_BATCH`: no preemption on wake-up (the default of `vmcrypt serve`).
    Batch,
}

impl SchedPolicy {
    /// Parse `normal` or `batch`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "normal" => Ok(SchedPolicy::Normal),
            "batch" => Ok(SchedPolicy::Batch),
            _ => Err(Error::usage(format!(
                "unknown scheduling policy '{s}' (expected 'batch' or 'normal')"
            ))),
        }
    }

    /// Put the calling thread (and threads it creates from now on) under this policy;
    /// the nice value is kept. Needs no privilege.
    pub fn apply_to_current_thread(self) -> Result<()> {
        let policy = match self {
            SchedPolicy::Normal => scheduler::Policy::Other,
            SchedPolicy::Batch => scheduler::Policy::Batch,
        };
        scheduler::set_self_policy(policy, 0).map_err(|()| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "could not set the scheduling policy {self:?}: {}",
                    std::io::Error::last_os_error()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy field (41st) of /proc/thread-self/stat: 0 SCHED_OTHER, 3 SCHED_BATCH.
    fn current_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn a_thread_and_its_children_take_the_policy() {
        std::thread::spawn(|| {
            assert_eq!(current_policy(), 0);
            SchedPolicy::Batch.apply_to_current_thread().unwrap();
            assert_eq!(current_policy(), 3);
            let child = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(child, 3, "a thread created afterwards inherits it");
            SchedPolicy::Normal.apply_to_current_thread().unwrap();
            assert_eq!(current_policy(), 0);
        })
        .join()
        .unwrap();
        assert_eq!(current_policy(), 0, "other threads keep theirs");
    }

    #[test]
    fn names_parse() {
        assert_eq!(SchedPolicy::parse("batch").unwrap(), SchedPolicy::Batch);
        assert_eq!(SchedPolicy::parse("normal").unwrap(), SchedPolicy::Normal);
        let e = SchedPolicy::parse("fifo").unwrap_err();
        assert!(e.to_string().contains("'fifo'"), "{e}");
    }
}
