//! Image locking that interoperates with QEMU's: open-file-description (OFD) byte-range
//! locks on byte 100 + i for each permission `i` a user holds and on byte 200 + i for
//! each permission it does not let others have. Permissions, as QEMU numbers them:
//! 0 consistent read, 1 write, 2 write-unchanged, 3 resize.
//!
//! A read-only open holds "consistent read" and does not share "write"; a writable
//! open holds read, write and resize and shares only reading. Before taking its locks
//! an open tests the opposite bytes, so vmcrypt and a running QEMU (or two vmcrypt
//! processes) never write one image at once, and nobody reads an image someone else is
//! changing underneath. The locks go away when the file is closed. Filesystems without
//! OFD locks are used unlocked, as QEMU's `locking=auto` does.
//!
//! LUKS key-slot commands take only [`lock_header`]: byte 300, outside QEMU's ranges,
//! exclusive for a change and shared for reading. Two vmcrypt commands never change one
//! header at once, while a VM that has the image open keeps running: it read the header
//! when it opened and never writes it, and the volume key does not change (online key
//! rotation, as cryptsetup allows on an active device).
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use std::fs::File;
use std::path::Path;
use vmcrypt_error::{Result, bail};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const READ: usize = 0;
const WRITE: usize = 1;
const RESIZE: usize = 3;

/// Errors that mean the filesystem has no OFD locks: the file is then used unlocked,
/// as QEMU's `locking=auto` does.
fn no_locks_here(e: Errno) -> bool {
    matches!(
        e,
        Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOLCK | Errno::ENOSYS
    )
}

fn flock(kind: libc::c_short, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Whether another open file description holds a lock on `byte`.
fn taken(file: &File, byte: i64) -> std::result::Result<bool, Errno> {
    let mut l = flock(libc::F_WRLCK as libc::c_short, byte);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut l))?;
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}

fn take(file: &File, byte: i64) -> std::result::Result<(), Errno> {
    let l = flock(libc::F_RDLCK as libc::c_short, byte);
    fcntl(file, FcntlArg::F_OFD_SETLK(&l)).map(drop)
}

/// Lock `file` (at `path`) for reading or for writing, or fail with `Busy`.
pub fn lock_image(file: &File, path: &Path, writable: bool) -> Result<()> {
    let (held, unshared): (&[usize], &[usize]) = if writable {
        (&[READ, WRITE, RESIZE], &[WRITE, RESIZE])
    } else {
        (&[READ], &[WRITE])
    };
    match try_lock(file, held, unshared) {
        Ok(None) => Ok(()),
        Ok(Some(perm)) => bail!(
            Busy,
            "failed to get \"{}\" lock on '{}': is another process (QEMU, qemu-nbd, vmcrypt) \
             using the image? (file.locking=off skips this check)",
            NAMES[perm],
            path.display()
        ),
        Err(e) if no_locks_here(e) => Ok(()),
        Err(e) => bail!(
            Io,
            "locking '{}' failed: {e} (file.locking=off skips locking)",
            path.display()
        ),
    }
}

const HEADER_BYTE: i64 = 300;

/// Lock the LUKS header of `file` against other vmcrypt header changes (see the module
/// docs), or fail with `Busy`.
pub fn lock_header(file: &File, path: &Path, writable: bool) -> Result<()> {
    let kind = if writable {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    let l = flock(kind as libc::c_short, HEADER_BYTE);
    match fcntl(file, FcntlArg::F_OFD_SETLK(&l)) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN | Errno::EACCES) => bail!(
            Busy,
            "another vmcrypt command is changing the LUKS header of '{}'",
            path.display()
        ),
        Err(e) if no_locks_here(e) => Ok(()),
        Err(e) => bail!(Io, "locking the header of '{}' failed: {e}", path.display()),
    }
}

/// Release every lock this open file description holds. Called before the file is
/// closed: a process forked meanwhile (another thread spawning a program) keeps the
/// description alive until it execs, and with it the locks, unless they are dropped
/// explicitly.
pub fn unlock_all(file: &File) {
    let mut l = flock(libc::F_UNLCK as libc::c_short, PERM_BASE);
    l.l_len = HEADER_BYTE - PERM_BASE + 1;
    let _ = fcntl(file, FcntlArg::F_OFD_SETLK(&l));
}

/// Take the locks and test for conflicts; `Some(perm)` names the first conflict.
fn try_lock(
    file: &File,
    held: &[usize],
    unshared: &[usize],
) -> std::result::Result<Option<usize>, Errno> {
    for &p in held {
        if taken(file, SHARED_BASE + p as i64)? {
            return Ok(Some(p));
        }
    }
    for &p in unshared {
        if taken(file, PERM_BASE + p as i64)? {
            return Ok(Some(p));
        }
    }
    for &p in held {
        take(file, PERM_BASE + p as i64)?;
    }
    for &p in unshared {
        take(file, SHARED_BASE + p as i64)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let (a, b, c) = (open(&p), open(&p), open(&p));
        lock_image(&a, &p, false).unwrap();
        lock_image(&b, &p, false).unwrap();
        let e = lock_image(&c, &p, true).unwrap_err();
        assert_eq!(e.kind(), vmcrypt_error::ErrorKind::Busy);
        assert!(e.message().contains("\"write\" lock"), "{e}");
        drop((a, b));
        lock_image(&c, &p, true).unwrap();
        let d = open(&p);
        assert_eq!(
            lock_image(&d, &p, false).unwrap_err().kind(),
            vmcrypt_error::ErrorKind::Busy
        );
        drop(c);
        lock_image(&d, &p, false).unwrap();
        // Header changes exclude each other but not image users.
        let (e, f) = (open(&p), open(&p));
        lock_header(&e, &p, true).unwrap();
        assert_eq!(
            lock_header(&f, &p, true).unwrap_err().kind(),
            vmcrypt_error::ErrorKind::Busy
        );
        assert!(lock_header(&f, &p, false).is_err());
        drop(e);
        lock_header(&f, &p, false).unwrap();
    }
}
