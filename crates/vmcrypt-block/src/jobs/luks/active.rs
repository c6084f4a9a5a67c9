//! Named active devices (`vmcrypt luks open DEVICE NAME`, `close NAME`, `status NAME`):
//! what cryptsetup keeps in device-mapper, kept here in a run directory
//! (`/run/vmcrypt`, or `--run-dir` / `$VMCRYPT_RUN_DIR`) as two files per name:
//!
//! * `NAME.sock`, the NBD socket the daemon serves the decrypted device on (or a socket
//!   path given at open, e.g. one a libvirt domain names; the state records it);
//! * `NAME.state`, the [`ActiveInfo`] as JSON, which is also the daemon's lock: it holds
//!   an exclusive `flock` on it for as long as it runs.
//!
//! Whether NAME is active is decided by that lock, never by a pid alone: a daemon killed
//! with SIGKILL loses its lock with its life, so the files it leaves behind are seen as
//! stale (and cleaned up by `open` and `close`), and a reused pid cannot pass for it.
//! The state file is removed only by the lock's holder, and a claimant checks after
//! locking that the path still names the file it locked, so two racing `open`s of one
//! NAME cannot both win.
use super::online::RemoteStatus;
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
            "{} is active.\n  type:    {}\n  cipher:  {}\n  keysize: {} bits\n  key location: {}\n",
            self.name, d.luks_type, d.cipher, d.key_bits, self.key_location
        );
        // Not in cryptsetup's status: the slot the passphrase opened (a LUKS header's).
        if d.luks_type.to_ascii_lowercase().contains("luks") {
            s += &format!("  key slot: {}\n", d.key_slot);
        }
        s += &format!("  device:  {}\n", d.device);
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
            leftover: leftover(dir, name, i.as_ref()),
        },
    })
}

/// What the daemon of the active `name` says of a reencryption of its device, asked on
/// its control socket (within two seconds): `None` when it has none or does not
/// answer. Once a run is finished, its new encryption replaces the cipher, key size,
/// sector size and key slot `info` recorded at open time (the old key's slot is gone:
/// the finish removed it), as cryptsetup's `status` shows a device as it is now: the
/// cipher and sector size of the header the daemon serves now, when it says.
pub fn live_reencryption(dir: &RunDir, name: &str, info: &mut ActiveInfo) -> Option<RemoteStatus> {
    let ctl = dir.control(name);
    ctl.symlink_metadata().ok()?;
    let st = super::online::request(&ctl, "status", "", None, Some(Duration::from_secs(2))).ok()?;
    if st.state == "finished"
        && let Some(t) = &st.target
    {
        let live = st.header.as_ref();
        info.device.cipher = live
            .and_then(|h| h["cipher"].as_str())
            .map_or_else(|| t.cipher.clone(), str::to_string);
        info.device.key_bits = t.key_bits;
        info.device.sector_size = live
            .and_then(|h| h["sector-size"].as_u64())
            .unwrap_or(u64::from(t.sector_size));
        if let Some(slot) = t.key_slot {
            info.device.key_slot = slot;
        }
    }
    Some(st)
}

/// `status`'s line for a reencryption of the device (none when there is no run).
pub fn render_reencryption(st: &RemoteStatus) -> Option<String> {
    if st.state == "none" {
        return None;
    }
    let pct = if st.total == 0 {
        100.0
    } else {
        st.done as f64 * 100.0 / st.total as f64
    };
    let mut s = format!(
        "  reencryption: {}, {} of {} bytes ({pct:.1}%)",
        st.state, st.done, st.total
    );
    if let Some(e) = &st.error {
        s += &format!(": {e}");
    }
    if let Some(e) = &st.header_error {
        s += &format!("\n  warning: {e}");
    }
    Some(s + "\n")
}

/// The stale files of `name`, if any: its state, its socket, and the socket its state
/// records when that is elsewhere and nobody listens on it.
fn leftover(dir: &RunDir, name: &str, info: Option<&ActiveInfo>) -> Option<Leftover> {
    let mut paths = vec![dir.state(name), dir.socket(name)];
    if let Some(s) = info.map(|i| PathBuf::from(&i.socket))
        && !paths.contains(&s)
        && !listening(&s)
    {
        paths.push(s);
    }
    let files: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    (!files.is_empty()).then_some(Leftover {
        pid: info.map(|i| i.pid),
        files,
    })
}

/// Whether a server accepts connections on the Unix socket `path`.
fn listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The active export of `dir`, other than `name`, whose socket is `socket`.
pub fn socket_owner(dir: &RunDir, socket: &Path, name: &str) -> Option<String> {
    let entries = std::fs::read_dir(dir.path()).ok()?;
    entries.flatten().find_map(|e| {
        let file = e.file_name();
        let other = file.to_str()?.strip_suffix(".state")?;
        if other == name {
            return None;
        }
        match status(dir, other).ok()? {
            Status::Active(i) if Path::new(&i.socket) == socket => Some(other.to_string()),
            _ => None,
        }
    })
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
    socket: PathBuf,
}

/// Claim `name` in `dir`: `Busy` if a daemon holds it; files a dead daemon left are
/// removed.
pub fn claim(dir: &RunDir, name: &str) -> Result<Claim> {
    claim_at(dir, name, None)
}

/// [`claim`], serving on `socket` instead of `RUN_DIR/NAME.sock`: refused (`Busy`) when
/// another export of `dir` records that socket or a server listens on it, and when
/// something other than a socket is there; a socket nobody listens on is stale and
/// replaced.
pub fn claim_at(dir: &RunDir, name: &str, socket: Option<&Path>) -> Result<Claim> {
    check_name(name)?;
    let socket = match socket {
        Some(s) => {
            check_socket_path(dir, name, s)?;
            s.to_path_buf()
        }
        None => dir.socket(name),
    };
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
        remove_if_present(&socket)?;
        return Ok(Claim {
            dir: dir.clone(),
            name: name.to_string(),
            file,
            socket,
        });
    }
}

/// A socket path given for `name`: absolute, not another export's, not served by
/// anyone, and a socket if anything is there.
fn check_socket_path(dir: &RunDir, name: &str, socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    ensure!(
        socket.is_absolute() && socket.file_name().is_some(),
        Usage,
        "the socket path '{}' of {name} must be an absolute file path",
        socket.display()
    );
    if let Some(other) = socket_owner(dir, socket, name) {
        bail!(
            Busy,
            "the socket path '{}' belongs to the active export {other}",
            socket.display()
        );
    }
    if let Ok(m) = socket.symlink_metadata() {
        ensure!(
            m.file_type().is_socket(),
            Busy,
            "'{}' exists and is not a socket; refusing to replace it",
            socket.display()
        );
        ensure!(
            !listening(socket),
            Busy,
            "a server already listens on the socket path '{}'",
            socket.display()
        );
    }
    Ok(())
}

impl Claim {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
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
        remove_if_present(&self.socket)?;
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

/// Several keys on one pipe (an export daemon's stdin when an image has a key per
/// layer): each as its length (4 bytes, big endian) and its bytes.
pub fn frame_keys(keys: &[&[u8]]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out = zeroize::Zeroizing::new(Vec::new());
    for k in keys {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
    }
    out
}

/// The `count` keys of a [`frame_keys`] buffer; anything else is refused.
pub fn unframe_keys(mut buf: &[u8], count: usize) -> Result<Vec<vmcrypt_crypto::SecretBytes>> {
    let mut keys = Vec::with_capacity(count);
    while !buf.is_empty() {
        let len = buf
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let Some(key) = len.and_then(|l| buf.get(4..4 + l)) else {
            bail!(Usage, "the keys on stdin are cut short");
        };
        keys.push(vmcrypt_crypto::SecretBytes::from_slice(key));
        buf = &buf[4 + key.len()..];
    }
    ensure!(
        keys.len() == count,
        Usage,
        "expected {count} keys on stdin, got {}",
        keys.len()
    );
    Ok(keys)
}

/// How many clients are connected to the Unix socket `socket` now, from the kernel's
/// table (`/proc/net/unix`: a server's accepted and not yet accepted connections carry
/// the socket's path; the listening socket is told apart by `__SO_ACCEPTCON`). `None`
/// when the table cannot be read.
pub fn clients(socket: &Path) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    Some(count_clients(&text, socket))
}

fn count_clients(table: &str, socket: &Path) -> usize {
    const ACCEPTCON: u32 = 0x0001_0000;
    let want = socket.to_str().unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(3).and_then(|x| u32::from_str_radix(x, 16).ok());
            f.len() >= 8 && f[7..].join(" ") == want && flags.is_some_and(|x| x & ACCEPTCON == 0)
        })
        .count()
}

/// How long a connection whose client has just left may take to be closed by the server
/// before it counts as a client.
pub const CLIENT_GRACE: Duration = Duration::from_secs(2);

/// Refuse to close `name` while NBD clients are connected to its socket (as cryptsetup
/// refuses to close a mapping in use): `Busy`, naming how many. A client that has just
/// disconnected leaves the server's end open until the server notices, so the count is
/// given [`CLIENT_GRACE`] to drop to zero. When the kernel's table cannot be read the
/// count is unknown, and that refuses too: only `--force` closes blind.
pub fn refuse_if_in_use(dir: &RunDir, name: &str) -> Result<()> {
    let Status::Active(info) = status(dir, name)? else {
        return Ok(());
    };
    let socket = Path::new(&info.socket);
    refuse_if_counted(name, socket, CLIENT_GRACE, || clients(socket))
}

/// [`refuse_if_in_use`] with the counter given: polls `count` until it says 0 or
/// `grace` has passed.
fn refuse_if_counted(
    name: &str,
    socket: &Path,
    grace: Duration,
    count: impl Fn() -> Option<usize>,
) -> Result<()> {
    let start = Instant::now();
    let n = loop {
        let n = count();
        if n == Some(0) || start.elapsed() >= grace {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let socket = socket.display();
    match n {
        Some(0) => Ok(()),
        Some(n) => bail!(
            Busy,
            "Device {name} is still in use: {n} client(s) connected to {socket} (--force \
             disconnects them)"
        ),
        None => bail!(
            Busy,
            "Device {name}: cannot tell whether clients are connected to {socket} \
             (/proc/net/unix is unreadable); not closed (--force closes anyway)"
        ),
    }
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
            for f in &left.files {
                remove_if_present(f)?;
            }
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
            wait_exited(info.pid, EXIT_WAIT);
            Ok(Closed::Stopped { pid: info.pid })
        }
    }
}

/// How long `close` waits, once the name is free, for the daemon's process to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The daemon lets go of its lock a moment before its process exits: wait (at most
/// `limit`) until `pid` has no command line left (gone, or a zombie), so that nothing
/// of it runs when `close` returns.
fn wait_exited(pid: u32, limit: Duration) {
    let start = Instant::now();
    let cmdline = format!("/proc/{pid}/cmdline");
    while std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
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

    #[test]
    fn a_socket_path_of_ones_own_is_recorded_and_not_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(Some(tmp.path().join("run").to_str().unwrap()));
        let sock = tmp.path().join("vm-disk.sock");
        let mut a = claim_at(&dir, "a", Some(&sock)).unwrap();
        assert_eq!(a.socket(), sock);
        let mut i = info(&dir, "a");
        i.socket = sock.display().to_string();
        a.publish(&i).unwrap();
        let _server = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = claim_at(&dir, "b", Some(&sock)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(
            e.to_string().contains("belongs to the active export a"),
            "{e}"
        );
        assert!(claim_at(&dir, "b", Some(Path::new("rel.sock"))).is_err());
        a.release().unwrap();
        assert!(!sock.exists(), "release removes the socket it served");
        // A plain file is never replaced; a socket nobody listens on is.
        std::fs::write(&sock, b"data").unwrap();
        let e = claim_at(&dir, "b", Some(&sock)).err().unwrap();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        std::fs::remove_file(&sock).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let b = claim_at(&dir, "b", Some(&sock)).unwrap();
        assert!(!sock.exists(), "the stale socket was removed");
        b.release().unwrap();
    }

    #[test]
    fn close_refuses_while_counted_or_unknown() {
        let sock = Path::new("/run/x.sock");
        let ms = Duration::from_millis(120);
        refuse_if_counted("vm", sock, ms, || Some(0)).unwrap();
        let e = refuse_if_counted("vm", sock, ms, || Some(2)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("2 client(s)"), "{e}");
        let e = refuse_if_counted("vm", sock, ms, || None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("cannot tell"), "{e}");
        // A client that leaves within the grace period does not count.
        let calls = std::cell::Cell::new(0);
        let leaving = || {
            calls.set(calls.get() + 1);
            Some(usize::from(calls.get() < 2))
        };
        refuse_if_counted("vm", sock, Duration::from_secs(5), leaving).unwrap();
    }

    #[test]
    fn clients_of_a_socket_from_the_kernel_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000: 00000002 00000000 00010000 0001 01 877377 /run/x.sock\n\
            0000: 00000003 00000000 00000000 0001 02     0 /run/x.sock\n\
            0000: 00000003 00000000 00000000 0001 03 877380 /run/x.sock\n\
            0000: 00000003 00000000 00000000 0001 03 877381 /run/y.sock\n\
            0000: 00000003 00000000 00000000 0001 03 877382\n";
        assert_eq!(count_clients(table, Path::new("/run/x.sock")), 2);
        assert_eq!(count_clients(table, Path::new("/run/y.sock")), 1);
        assert_eq!(count_clients(table, Path::new("/run/z.sock")), 0);
        // The real table: a listener, one accepted and one queued connection.
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(clients(&sock), Some(0));
        let _a = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _b = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _accepted = l.accept().unwrap();
        assert_eq!(clients(&sock), Some(2));
    }
}
