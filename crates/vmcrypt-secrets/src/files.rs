//! Crash-safe file handling for the store: the directory (0700), atomic replacement of a
//! file (a 0600 temp file, fsync, rename over the old one, fsync the directory), and the
//! writers' lock (`flock` on `.lock`). A temp file left by an interrupted write starts with
//! a dot and is never read; the old file stays whole until the rename.
use rustix::fs::{FlockOperation, flock};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vmcrypt_error::{Error, Result, ensure};

/// Create `dir` (and parents) with mode 0700 if missing; refuse a store directory that
/// others can read.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(e, format!("cannot create secret store '{}'", dir.display())))?;
    }
    let meta = fs::metadata(dir)
        .map_err(|e| Error::io(e, format!("cannot stat secret store '{}'", dir.display())))?;
    ensure!(
        meta.is_dir(),
        Usage,
        "secret store '{}' is not a directory",
        dir.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    ensure!(
        mode & 0o077 == 0,
        Usage,
        "secret store '{}' has mode {mode:04o}; it must not be accessible to group or others \
         (chmod 700)",
        dir.display()
    );
    Ok(())
}

/// Replace `dir/name` with `bytes` atomically; the file gets mode 0600.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let target = dir.join(name);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(e, format!("cannot write '{}'", target.display()))
    })
}

/// Remove `dir/name` if present and make the removal durable.
pub(crate) fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(e, format!("cannot remove '{}'", path.display()))),
    }
    sync_dir(dir).map_err(|e| Error::io(e, format!("cannot sync '{}'", dir.display())))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read `dir/name`, `None` when it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(e, format!("cannot read '{}'", path.display()))),
    }
}

/// An exclusive lock on the store, held until dropped.
pub(crate) struct WriteLock {
    _file: File,
}

/// Take the store's writer lock (`DIR/.lock`), waiting for another writer to finish.
pub(crate) fn lock(dir: &Path) -> Result<WriteLock> {
    let path: PathBuf = dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(e, format!("cannot open lock '{}'", path.display())))?;
    flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| Error::io(e.into(), format!("cannot lock '{}'", path.display())))?;
    Ok(WriteLock { _file: file })
}
