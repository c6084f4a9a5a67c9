//! `vmcrypt luks open DEVICE NAME`: cryptsetup's open, as a named NBD export. The
//! passphrase is read here, handed to a daemon through a pipe (never argv or the
//! environment), and this command returns once the daemon has unlocked the device and
//! listens on `RUN_DIR/NAME.sock`; a wrong passphrase is this command's exit status.
//! `--test-passphrase` only checks the passphrase.
use super::daemon;
use super::opts::KeyOpts;
use crate::cmd::common::LimitOpts;
use crate::passphrase::existing;
use vmcrypt_block::jobs::luks::active::{RunDir, Status, check_name, status};
use vmcrypt_block::jobs::luks::slots::test_key;
use vmcrypt_error::{Error, Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The LUKS device (file or block device)
    device: String,
    /// Name of the opened device: its socket is RUN_DIR/NAME.sock
    name: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
    /// Open read-only: the export refuses writes
    #[arg(long = "readonly", short = 'r', alias = "read-only")]
    readonly: bool,
    /// Only check the passphrase; open nothing
    #[arg(long = "test-passphrase")]
    test_passphrase: bool,
    /// Directory of the sockets and state files (default $VMCRYPT_RUN_DIR or /run/vmcrypt)
    #[arg(long = "run-dir", value_name = "DIR")]
    run_dir: Option<String>,
    /// Serve on this socket path instead of RUN_DIR/NAME.sock (e.g. the one a libvirt
    /// domain names); refused while another export or server has it
    #[arg(long = "socket", value_name = "PATH")]
    socket: Option<String>,
}

pub fn run(a: &Args) -> Result<u8> {
    if a.test_passphrase {
        let mut keys = a.key.keys(&a.device, None);
        let slot = test_key(&a.key.target(&a.device), a.key.key_slot, &mut keys)?;
        eprintln!("Key slot {slot} unlocked.");
        return Ok(0);
    }
    let name = a.name.as_deref().ok_or_else(|| {
        Error::usage("expecting a NAME for the opened device (or --test-passphrase)")
    })?;
    check_name(name)?;
    let dir = RunDir::new(a.run_dir.as_deref());
    if let Status::Active(_) | Status::Starting = status(&dir, name)? {
        bail!(Busy, "Device {name} already exists.");
    }
    let pass = existing(a.key.key_file.as_deref(), &a.device)?;
    daemon::spawn(&daemon_args(a, name, &dir), &pass)
}

/// The daemon's command line: everything but the passphrase.
/// Paths are made absolute: the daemon runs in `/`, so that it keeps no directory busy.
fn daemon_args(a: &Args, name: &str, dir: &RunDir) -> Vec<String> {
    let mut v: Vec<String> = vec!["luks".into(), "open-daemon".into()];
    v.extend([absolute(&a.device), name.into(), "--run-dir".into()]);
    v.push(absolute(&dir.path().display().to_string()));
    if let Some(h) = &a.key.header {
        v.extend(["--header".into(), absolute(h)]);
    }
    if let Some(s) = a.key.key_slot {
        v.extend(["--key-slot".into(), s.to_string()]);
    }
    if a.readonly {
        v.push("--readonly".into());
    }
    if let Some(s) = &a.socket {
        v.extend(["--socket".into(), absolute(s)]);
    }
    v.extend(limit_args(&a.key.limits));
    v
}

/// The KDF caps the user raised, as flags.
fn limit_args(l: &LimitOpts) -> Vec<String> {
    [
        ("--max-kdf-memory", l.max_kdf_memory),
        ("--max-kdf-time", l.max_kdf_time),
        ("--max-pbkdf2-iterations", l.max_pbkdf2_iterations),
        ("--max-unlock-cost", l.max_unlock_cost),
    ]
    .into_iter()
    .filter_map(|(flag, v)| v.map(|v| [flag.to_string(), v.to_string()]))
    .flatten()
    .collect()
}

/// `path` made absolute; an `rbd:` image name is passed on as it is.
fn absolute(path: &str) -> String {
    if path.starts_with("rbd:") {
        return path.to_string();
    }
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}
