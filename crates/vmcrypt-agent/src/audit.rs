//! The audit log: one JSON object per line (time, event, vm, disk, key source by name,
//! slot, result, reason), appended with `O_APPEND` in one write per record so lines never
//! interleave, and copied to stderr, which the journal collects when the agent runs
//! under systemd. Records name key sources ("file web.key on label KEYS", "store uuid
//! ..."), never key bytes: no field of [`Record`] can hold one.
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use vmcrypt_error::{Error, Result};

/// One event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    pub time: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// "ok" or "error".
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record {
    /// A record of `event` at the current time.
    pub fn new(event: &'static str, ok: bool) -> Self {
        Record {
            time: crate::time::now_rfc3339(),
            event,
            result: if ok { "ok" } else { "error" },
            ..Record::default()
        }
    }
    pub fn vm(mut self, vm: &str) -> Self {
        self.vm = Some(vm.into());
        self
    }
    pub fn disk(mut self, disk: &str) -> Self {
        self.disk = Some(disk.into());
        self
    }
    pub fn source(mut self, s: String) -> Self {
        self.key_source = Some(s);
        self
    }
    pub fn slot(mut self, slot: u32) -> Self {
        self.slot = Some(slot);
        self
    }
    pub fn medium(mut self, m: String) -> Self {
        self.medium = Some(m);
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }
}

/// The open log.
pub struct AuditLog {
    file: File,
}

impl AuditLog {
    /// Open (create 0600) `path` for appending; its directory is created 0700.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(e, format!("creating '{}'", dir.display())))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(e, format!("opening the audit log '{}'", path.display())))?;
        Ok(AuditLog { file })
    }

    /// Append `r` (and copy it to stderr). A failed write is reported on stderr: the
    /// agent keeps running its VMs rather than stop over its log. Shared by the agent
    /// and its unlocks in progress: one append of a whole line each, so lines written
    /// from several threads do not interleave.
    pub fn write(&self, r: &Record) {
        let mut line = serde_json::to_string(r).unwrap_or_default();
        line.push('\n');
        let mut file = &self.file;
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("vmcrypt agent: writing the audit log: {e}");
        }
        eprint!("{line}");
    }
}

use std::os::unix::fs::DirBuilderExt;
