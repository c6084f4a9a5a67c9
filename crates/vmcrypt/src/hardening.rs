//! Process hardening applied before any secret is read, as cryptsetup and ssh-agent do:
//!
//! * not dumpable (`PR_SET_DUMPABLE` 0): no core dump holds a key, and other processes
//!   of the same user cannot ptrace us or read our memory;
//! * memory locked (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`) when the
//!   memory-lock limit allows it (root, whose CAP_IPC_LOCK ignores the limit, or
//!   `RLIMIT_MEMLOCK` unlimited), so passphrases,
//!   volume keys and key schedules never reach swap. With a finite limit, locking
//!   everything would make later allocations fail, so it is skipped.
//!
//! `VMCRYPT_MLOCK=0` turns memory locking off (e.g. for huge convert jobs on a host
//! that must be able to swap).
use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{DumpableBehavior, Resource, getrlimit, set_dumpable_behavior};

/// What [`harden`] achieved in this process (set once in `main`).
pub static STATE: std::sync::OnceLock<Hardening> = std::sync::OnceLock::new();

/// What [`harden`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hardening {
    pub not_dumpable: bool,
    pub memory_locked: bool,
}

pub fn harden() -> Hardening {
    let not_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    let wanted = std::env::var("VMCRYPT_MLOCK").map_or(true, |v| v != "0");
    let unlimited =
        getrlimit(Resource::Memlock).current.is_none() || rustix::process::geteuid().is_root();
    let memory_locked = wanted
        && unlimited
        && mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
            .is_ok();
    Hardening {
        not_dumpable,
        memory_locked,
    }
}
