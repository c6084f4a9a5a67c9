//! Exports: every unlocked disk is served by a process of its own, the `luks open`
//! daemon (`vmcrypt luks open-daemon DEVICE NAME --run-dir DIR`), which the agent
//! starts with the key on a pipe to its stdin and which says "ok" once it serves
//! `RUN_DIR/NAME.sock`. The daemon holds the lock on `NAME.state` for its life, so an
//! agent that restarts finds its exports by that lock ([`Exporter::status`]) and
//! adopts them; closing one is `luks close` (SIGTERM, wait for the lock). An
//! [`Exporter`] is shared: an unlock in progress opens one disk (waiting for the
//! daemon's KDF) while the agent looks at or closes others.
use crate::config::{Disk, DiskFormat};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use vmcrypt_block::jobs::luks::active::{self, RunDir, Status};
use vmcrypt_error::{Error, ErrorKind, Result};

/// An export as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExportInfo {
    pub name: String,
    pub socket: String,
    pub pid: u32,
    /// The key slot that opened it (LUKS disks; the top image's for qcow2+LUKS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// How disks are exported (a trait so the agent's decisions can be tested in-process).
/// Called from several threads at once, for different disks.
pub trait Exporter: Send + Sync {
    /// Unlock `disk` with `keys` (one per layer: the image's, then its backing
    /// layers') and serve it; a wrong key is `WrongKey`.
    fn open(&self, disk: &Disk, keys: &[&[u8]]) -> Result<ExportInfo>;
    /// The export of `disk`, if one serves it now.
    fn status(&self, disk: &Disk) -> Result<Option<ExportInfo>>;
    /// Stop serving `disk` (the daemon wipes its key as it exits).
    fn close(&self, disk: &Disk) -> Result<()>;
}

/// Exports served by `vmcrypt luks open-daemon` processes.
pub struct LuksDaemons {
    exe: PathBuf,
    dir: RunDir,
    /// Daemons this agent started, reaped when they end.
    children: Mutex<BTreeMap<String, Child>>,
}

impl LuksDaemons {
    /// Daemons of the `exe` binary with sockets in `run_dir`.
    pub fn new(exe: PathBuf, run_dir: &std::path::Path) -> Self {
        LuksDaemons {
            exe,
            dir: RunDir::new(Some(&run_dir.display().to_string())),
            children: Mutex::default(),
        }
    }

    fn args(&self, disk: &Disk) -> Vec<String> {
        let image = match disk.format {
            DiskFormat::Luks => absolute(&disk.image),
            DiskFormat::Qcow2 => qcow2_spec(disk),
        };
        let mut v = vec![
            "luks".to_string(),
            "open-daemon".into(),
            image,
            disk.export.clone(),
            "--run-dir".into(),
            absolute(self.dir.path()),
        ];
        if disk.format != DiskFormat::Luks {
            v.push("--image-opts".into());
        }
        if !disk.backing.is_empty() {
            v.extend(["--keys".into(), (disk.backing.len() + 1).to_string()]);
        }
        if let Some(s) = &disk.socket {
            v.extend(["--socket".into(), absolute(s)]);
        }
        if let Some(h) = &disk.header {
            v.extend(["--header".into(), absolute(h)]);
        }
        if disk.read_only {
            v.push("--readonly".into());
        }
        v
    }

    fn children(&self) -> MutexGuard<'_, BTreeMap<String, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reap daemons that have ended.
    fn reap(&self) {
        self.children()
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}

impl Exporter for LuksDaemons {
    fn open(&self, disk: &Disk, keys: &[&[u8]]) -> Result<ExportInfo> {
        self.reap();
        self.dir.ensure()?;
        let mut child = Command::new(&self.exe)
            .args(self.args(disk))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(e, format!("starting '{}'", self.exe.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A daemon that failed early has closed its end; its status line says why.
            let _ = match keys {
                [one] => stdin.write_all(one),
                many => stdin.write_all(&active::frame_keys(many)),
            };
        }
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line == "ok\n" {
            self.children().insert(disk.export.clone(), child);
            return self.status(disk)?.ok_or_else(|| {
                Error::internal(format!("export {} said ok but is not active", disk.export))
            });
        }
        let status = child
            .wait()
            .map_err(|e| Error::io(e, "waiting for the export daemon"))?;
        let msg = line
            .strip_prefix("err\t")
            .map(str::trim_end)
            .unwrap_or("the export daemon exited without saying why");
        Err(Error::new(kind_of_exit(status.code()), msg.to_string()))
    }

    fn status(&self, disk: &Disk) -> Result<Option<ExportInfo>> {
        self.reap();
        Ok(match active::status(&self.dir, &disk.export)? {
            Status::Active(a) => Some(ExportInfo {
                name: a.name.clone(),
                socket: a.socket.clone(),
                pid: a.pid,
                slot: has_slot(&a.device.luks_type).then_some(a.device.key_slot),
            }),
            Status::Starting | Status::Inactive { .. } => None,
        })
    }

    fn close(&self, disk: &Disk) -> Result<()> {
        let r = active::close(&self.dir, &disk.export, Duration::from_secs(15));
        let child = self.children().remove(&disk.export);
        if let Some(mut c) = child {
            let _ = crate::proc::wait_for(&mut c, Duration::from_secs(5));
        }
        r.map(drop)
    }
}

/// Whether the daemon's device type reports a key slot: a LUKS device, or an image
/// whose own LUKS header did (`qcow2+luks`; for a chain, the top image's).
fn has_slot(device_type: &str) -> bool {
    device_type.starts_with("LUKS") || device_type.ends_with("+luks")
}

/// The daemon's exit status as vmcrypt's error kinds (main.rs's table).
fn kind_of_exit(code: Option<i32>) -> ErrorKind {
    match code {
        Some(1) => ErrorKind::Usage,
        Some(2) => ErrorKind::WrongKey,
        Some(3) => ErrorKind::Io,
        Some(4) => ErrorKind::Corrupt,
        Some(5) => ErrorKind::Busy,
        _ => ErrorKind::Internal,
    }
}

/// The daemon's `--image-opts` spec of an encrypted qcow2 image: its key is the secret
/// `key`, which the daemon defines from the key on its stdin; backing layer `i` (from 1)
/// is named explicitly, with the secret `key<i>`.
fn qcow2_spec(disk: &Disk) -> String {
    let layers: Vec<&std::path::Path> = std::iter::once(disk.image.as_path())
        .chain(disk.backing.iter().map(|l| l.image.as_path()))
        .collect();
    let mut spec = serde_json::Value::Null;
    for (i, image) in layers.iter().enumerate().rev() {
        let secret = match i {
            0 => "key".to_string(),
            _ => format!("key{i}"),
        };
        let mut node = serde_json::json!({
            "driver": "qcow2",
            "encrypt": { "key-secret": secret },
            "file": { "driver": "file", "filename": absolute(image) },
        });
        if !spec.is_null() {
            node["backing"] = spec;
        }
        spec = node;
    }
    format!("json:{spec}")
}

fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}
