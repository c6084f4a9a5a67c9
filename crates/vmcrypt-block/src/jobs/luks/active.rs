//! Named active devices (`vmcrypt luks open DEVICE NAME`, `close NAME`, `status NAME`):
//! what cryptsetup keeps in device-mapper, kept here in a run directory
//! (`/run/vmcrypt`, or `--run-dir` / `$VMCRYPT_RUN_DIR`) as two files per name:
//!
//! * `NAME.sock`, the NBD socket the daemon serves the decrypted device on;
//! * `NAME.state`, the [`ActiveInfo`] as JSON, which is also the daemon's lock: it holds
//!   an exclusive `flock` on it for as long as it runs.
//!
//! Whether NAME is active is decided by that lock, never by a pid alone: a daemon killed
//! with SIGKILL loses its lock with its life, so the files it leaves behind are seen as
//! stale (and cleaned up by `open` and `close`), and a reused pid cannot pass for it.
//! The state file is removed only by the lock's holder, and a claimant checks after
//! locking that the path still names the file it locked, so two racing `open`s of one
//! NAME cannot both win.
use super::open::DeviceInfo;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmcrypt_error::{Error, ErrorKind, Result, bail, ensure};

/// Where named devices live unless told otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/vmcrypt";
/// The environment variable that overrides [`DEFAULT_RUN_DIR`].
pub const RUN_DIR_ENV: &str = "VMCRYPT_RUN_DIR";

/// The directory of named devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// `given` (an option), else `$VMCRYPT_RUN_DIR`, else `/run/vmcrypt`.
    pub fn new(given: Option<&str>) -> RunDir {
        let env = std::env::var_os(RUN_DIR_ENV).filter(|v| !v.is_empty());
        RunDir(match (given, env) {
            (Some(g), _) => PathBuf::from(g),
            (None, Some(e)) => PathBuf::from(e),
            (None, None) => PathBuf::from(DEFAULT_RUN_DIR),
        })
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The NBD socket of `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.sock"))
    }

    /// The online reencryption control socket of `name`
    /// ([`super::online`]).
    pub fn control(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.ctl"))
    }

    /// The state (and lock) file of `name`.
    pub fn state(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.state"))
    }

    /// The daemon's log of `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.log"))
    }

    /// Create the directory (owner-only) if it is missing.
    pub fn ensure(&self) -> Result<()> {
        if self.0.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.0).map_err(|e| {
            Error::io(
                e,
                format!(
                    "cannot create the run directory '{}' (choose another with --run-dir or \
                     ${RUN_DIR_ENV})",
                    self.0.display()
                ),
            )
        })?;
        set_mode(&self.0, 0o700)
    }
}

/// Refuse names that are not a plain file name (cryptsetup's mapping names).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b));
    ensure!(
        ok,
        Usage,
        "invalid device name '{name}' (letters, digits and . _ - + @ :, at most 100, not \
         starting with a dot)"
    );
    Ok(())
}

/// What `status` shows about an active device: the device as it was opened, plus the
/// daemon that serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveInfo {
    pub name: String,
    pub pid: u32,
    pub socket: String,
    /// Where the volume key is held (cryptsetup prints "keyring" or "dm-crypt").
    pub key_location: String,
    #[serde(flatten)]
    pub device: DeviceInfo,
}

impl ActiveInfo {
    /// cryptsetup's `status` text, plus the socket, the NBD URI and the pid.
    pub fn render(&self) -> String {
        let d = &self.device;
        let mut s = format!(
            "{} is active.\n  type:    {}\n  cipher:  {}\n  keysize: {} bits\n  key location: {}\n  device:  {}\n",
            self.name, d.luks_type, d.cipher, d.key_bits, self.key_location, d.device
        );
        if let Some(h) = &d.header {
            s += &format!("  header:  {h}\n");
        }
        s += &format!(
            "  sector size:  {}\n  offset:  {} sectors\n  size:    {} sectors\n  mode:    {}\n  socket:  {}\n  export:  nbd+unix:///?socket={}\n  pid:     {}\n",
            d.sector_size,
            d.offset_sectors,
            d.size_sectors,
            if d.read_only {
                "readonly"
            } else {
                "read/write"
            },
            self.socket,
            self.socket,
            self.pid
        );
        s
    }
}

/// The state of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Active(Box<ActiveInfo>),
    /// A daemon holds the name but has not published its state yet.
    Starting,
    /// Nothing holds the name; `leftover` names the files a dead daemon left.
    Inactive {
        leftover: Option<Leftover>,
    },
}

/// Files a daemon that died without cleaning up left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Its pid, if its state file was readable.
    pub pid: Option<u32>,
    pub files: Vec<PathBuf>,
}

/// The state of `name` in `dir`.
pub fn status(dir: &RunDir, name: &str) -> Result<Status> {
    check_name(name)?;
    let path = dir.state(name);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Status::Inactive {
                leftover: leftover(dir, name, None),
            });
        }
        Err(e) => return Err(Error::io(e, format!("opening '{}'", path.display()))),
    };
    let held = try_lock(&f, false)?.is_none();
    let info = read_info(&mut f);
    Ok(match (held, info) {
        (true, Some(i)) => Status::Active(Box::new(i)),
        (true, None) => Status::Starting,
        (false, i) => Status::Inactive {
            leftover: leftover(dir, name, i.map(|i| i.pid)),
        },
    })
}

/// The stale files of `name`, if any.
fn leftover(dir: &RunDir, name: &str, pid: Option<u32>) -> Option<Leftover> {
    let files: Vec<PathBuf> = [dir.state(name), dir.socket(name)]
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    (!files.is_empty()).then_some(Leftover { pid, files })
}

fn read_info(f: &mut File) -> Option<ActiveInfo> {
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// `Some(())` when the lock was taken, `None` when someone else holds it.
fn try_lock(f: &File, exclusive: bool) -> Result<Option<()>> {
    use rustix::fs::{FlockOperation, flock};
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match flock(f, op) {
        Ok(()) => Ok(Some(())),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(Error::io(e.into(), "locking a state file")),
    }
}

/// Take the exclusive lock, retrying briefly: a `status` may hold a shared one for a
/// moment.
fn lock_exclusive(f: &File) -> Result<bool> {
    for _ in 0..10 {
        if try_lock(f, true)?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

/// The right to serve `name`, held by its daemon from before the key is checked until
/// it exits.
pub struct Claim {
    dir: RunDir,
    name: String,
    file: File,
}

/// Claim `name` in `dir`: `Busy` if a daemon holds it; files a dead daemon left are
/// removed.
pub fn claim(dir: &RunDir, name: &str) -> Result<Claim> {
    check_name(name)?;
    dir.ensure()?;
    let path = dir.state(name);
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(e, format!("creating '{}'", path.display())))?;
        if !lock_exclusive(&file)? {
            bail!(
                Busy,
                "Device {name} already exists (it is active; see `vmcrypt luks status {name}`)"
            );
        }
        // The previous holder may have removed the file after we opened it.
        let same = match (file.metadata(), path.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            continue;
        }
        file.set_len(0)
            .map_err(|e| Error::io(e, format!("clearing '{}'", path.display())))?;
        remove_if_present(&dir.socket(name))?;
        return Ok(Claim {
            dir: dir.clone(),
            name: name.to_string(),
            file,
        });
    }
}

impl Claim {
    pub fn socket(&self) -> PathBuf {
        self.dir.socket(&self.name)
    }

    pub fn control(&self) -> PathBuf {
        self.dir.control(&self.name)
    }

    /// The daemon's log file (owner-only, truncated).
    pub fn log_file(&self) -> Result<File> {
        let path = self.dir.log(&self.name);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(e, format!("creating '{}'", path.display())))
    }

    /// Publish `info`: from now on `status` reports the device active.
    pub fn publish(&mut self, info: &ActiveInfo) -> Result<()> {
        let text = serde_json::to_vec_pretty(info)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("state as JSON: {e}")))?;
        self.file
            .write_all(&text)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(e, format!("writing the state of {}", self.name)))
    }

    /// Give the name up: its socket, state and log files are removed (the lock goes with
    /// the file).
    pub fn release(self) -> Result<()> {
        remove_if_present(&self.dir.socket(&self.name))?;
        remove_if_present(&self.dir.control(&self.name))?;
        remove_if_present(&self.dir.log(&self.name))?;
        remove_if_present(&self.dir.state(&self.name))
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(e, format!("removing '{}'", path.display()))),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(e, format!("setting the mode of '{}'", path.display())))
}

/// Make the socket owner-only: it gives the decrypted device to whoever connects.
pub fn protect_socket(path: &Path) -> Result<()> {
    set_mode(path, 0o600)
}

/// What `close` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The daemon `pid` stopped and removed its files.
    Stopped { pid: u32 },
    /// No daemon was running; the files a dead one left were removed.
    Stale(Leftover),
    /// Nothing was there.
    NotActive,
}

/// How long `close` waits for a daemon to finish its requests and flush.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Stop the daemon serving `name` (SIGTERM: it stops accepting, lets requests finish,
/// flushes and removes its files) and wait until it has let go of the name.
pub fn close(dir: &RunDir, name: &str, timeout: Duration) -> Result<Closed> {
    match status(dir, name)? {
        Status::Inactive { leftover: None } => Ok(Closed::NotActive),
        Status::Inactive {
            leftover: Some(left),
        } => {
            let claim = claim(dir, name)?;
            claim.release()?;
            Ok(Closed::Stale(left))
        }
        Status::Starting => bail!(
            Busy,
            "{name} is still being opened; try again when `vmcrypt luks open` has returned"
        ),
        Status::Active(info) => {
            let pid = rustix::process::Pid::from_raw(info.pid as i32)
                .ok_or_else(|| Error::corrupt(format!("state of {name} names pid 0")))?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(|e| {
                Error::io(
                    e.into(),
                    format!("stopping the daemon of {name} (pid {})", info.pid),
                )
            })?;
            wait_released(dir, name, timeout)?;
            Ok(Closed::Stopped { pid: info.pid })
        }
    }
}

/// Wait until nobody holds `name`.
fn wait_released(dir: &RunDir, name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if matches!(status(dir, name)?, Status::Inactive { .. }) {
            return Ok(());
        }
        ensure!(
            start.elapsed() < timeout,
            Busy,
            "the daemon of {name} did not stop within {} s",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dir: &RunDir, name: &str) -> ActiveInfo {
        ActiveInfo {
            name: name.into(),
            pid: std::process::id(),
            socket: dir.socket(name).display().to_string(),
            key_location: "test".into(),
            device: DeviceInfo::default(),
        }
    }

    #[test]
    fn names_are_plain_file_names() {
        for bad in ["", "a/b", "..", ".hidden", "x y", &"n".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["vm0", "disk-1.data", "a_b+c@d:e"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn claim_publish_release_and_double_claim() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(Some(tmp.path().join("run").to_str().unwrap()));
        assert_eq!(
            status(&dir, "vm").unwrap(),
            Status::Inactive { leftover: None }
        );
        let mut c = claim(&dir, "vm").unwrap();
        assert_eq!(status(&dir, "vm").unwrap(), Status::Starting);
        let e = claim(&dir, "vm").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        let i = info(&dir, "vm");
        c.publish(&i).unwrap();
        assert_eq!(status(&dir, "vm").unwrap(), Status::Active(Box::new(i)));
        let mode = std::fs::metadata(dir.state("vm")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        c.release().unwrap();
        assert_eq!(
            status(&dir, "vm").unwrap(),
            Status::Inactive { leftover: None }
        );
        assert_eq!(close(&dir, "vm", CLOSE_TIMEOUT).unwrap(), Closed::NotActive);
    }

    #[test]
    fn files_of_a_dead_holder_are_stale_and_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(Some(tmp.path().to_str().unwrap()));
        let mut c = claim(&dir, "vm").unwrap();
        let mut i = info(&dir, "vm");
        i.pid = 4_000_000;
        c.publish(&i).unwrap();
        std::fs::write(dir.socket("vm"), b"").unwrap();
        // Dropping the claim without release is what SIGKILL does: the lock goes, the
        // files stay.
        drop(c);
        let Status::Inactive {
            leftover: Some(left),
        } = status(&dir, "vm").unwrap()
        else {
            panic!("not stale")
        };
        assert_eq!(left.pid, Some(4_000_000));
        assert_eq!(left.files.len(), 2);
        assert!(matches!(
            close(&dir, "vm", CLOSE_TIMEOUT).unwrap(),
            Closed::Stale(_)
        ));
        assert!(!dir.state("vm").exists() && !dir.socket("vm").exists());
    }
}
