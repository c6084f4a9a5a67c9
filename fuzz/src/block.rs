//! Fuzz entry points for `vmcrypt-block`, through its public API only: the qcow2
//! driver opening, reading and writing a mutated image held in memory, the LUKS
//! driver opening a LUKS1/LUKS2 image with mutated metadata with its passphrase
//! (`luks_driver.rs`), and the
//! `--image-opts` (keyval) and `json:{...}` option parsers.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/`) and by
//! `crates/vmcrypt-block/tests/fuzz_replay.rs` (included with `#[path]`).
use crate::replay::Target;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::qcow2::{OpenOptions, Qcow2Driver, QcowDriver};
use vmcrypt_block::opts;
use vmcrypt_error::{Error, ErrorKind, Result};

#[path = "luks_driver.rs"]
mod luks;
pub use luks::luks_driver;

/// Every target in this file, by name (the corpus directory names).
pub const TARGETS: &[Target] = &[
    ("qcow2_driver", qcow2_driver),
    ("luks_driver", luks_driver),
    ("image_opts", image_opts),
];

/// Largest guest range read or walked per input (keeps one run in milliseconds).
const SPAN: u64 = 256 << 10;

/// Largest file the writable image may grow to, like a file-size limit (`ulimit -f`):
/// a write beyond it fails instead of allocating. Without it the known write-path bug
/// of issue #15 item 2 (L2 entries with absurd host offsets are trusted; see
/// `fuzz/regressions/qcow2_driver/`) aborts every run on an allocation of petabytes.
const FILE_LIMIT: u64 = 64 << 20;

/// A growable in-memory protocol node with a size limit (see [`FILE_LIMIT`]); it counts
/// the writes and resizes it refused for going past the limit.
pub(crate) struct Bounded {
    data: RwLock<Vec<u8>>,
    limit: u64,
    refused: AtomicU64,
}

impl Bounded {
    /// A node holding `data` that may grow up to `limit` bytes.
    pub(crate) fn new(data: Vec<u8>, limit: u64) -> Self {
        Bounded {
            data: RwLock::new(data),
            limit,
            refused: AtomicU64::new(0),
        }
    }

    /// Writes and resizes refused so far for going past the limit.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `offset..offset + len` as indices, if it ends within `limit`.
    fn range(offset: u64, len: usize, limit: u64) -> Result<std::ops::Range<usize>> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= limit);
        let end = end.ok_or_else(|| {
            Error::new(
                ErrorKind::OutOfRange,
                format!("{len} bytes at {offset}: past the limit"),
            )
        })?;
        Ok(offset as usize..end as usize)
    }

    /// [`Self::range`] against the size limit, counting a refusal.
    fn writable(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
        Self::range(offset, len, self.limit).inspect_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
        })
    }
}

impl BlockDriver for Bounded {
    fn driver_name(&self) -> &'static str {
        "bounded-memory"
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn size(&self) -> u64 {
        self.data.read().expect("lock").len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let d = self.data.read().expect("lock");
        let r = Self::range(offset, buf.len(), d.len() as u64)?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.writable(offset, buf.len())?;
        let mut d = self.data.write().expect("lock");
        if r.end > d.len() {
            d.resize(r.end, 0);
        }
        d[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        let r = self.writable(new_size, 0)?;
        self.data.write().expect("lock").resize(r.end, 0);
        Ok(())
    }
}

/// The input is a whole qcow2 (or qcow v1) image. It is opened read-only and read,
/// then opened writable and written, zeroed, discarded, grown and flushed. Errors are
/// fine; panics, hangs and unbounded allocations are not.
pub fn qcow2_driver(data: &[u8]) {
    let ro = OpenOptions::default();
    if let Ok(d) = Qcow2Driver::open(Arc::new(MemDriver::read_only(data.to_vec())), &ro) {
        read_all(&d);
    }
    if let Ok(d) = QcowDriver::open(Arc::new(MemDriver::read_only(data.to_vec())), &ro) {
        read_all(&d);
    }
    let rw = OpenOptions {
        writable: true,
        ..Default::default()
    };
    let file = Arc::new(Bounded::new(data.to_vec(), FILE_LIMIT));
    if let Ok(d) = Qcow2Driver::open(file, &rw) {
        write_some(&d);
    }
}

/// Read the first [`SPAN`] bytes and walk their block status.
fn read_all(d: &dyn BlockDriver) {
    let end = d.size().min(SPAN);
    let mut buf = vec![0u8; end as usize];
    let _ = d.read_at(&mut buf, 0);
    let mut at = 0;
    while at < end {
        match d.block_status(at, end - at) {
            Ok(e) => at += e.length.max(1),
            Err(_) => break,
        }
    }
}

/// Every kind of write a client may send, then a read back.
fn write_some(d: &dyn BlockDriver) {
    let size = d.size();
    if size == 0 || size > 1 << 40 {
        return;
    }
    let at = 4000.min(size - 1).min(size.saturating_sub(9000));
    let _ = d.write_at(&[0x5a; 9000], at);
    let _ = d.write_zeroes(0, size.min(70_000));
    let _ = d.discard(0, size.min(8192));
    let _ = d.resize(size + (1 << 20));
    let _ = d.flush();
    read_all(d);
}

/// The option parsers: `json:{...}` filenames, else `--image-opts` keyval (with the
/// implied `driver` key of `--object`-style strings), then typed reads of each key.
pub fn image_opts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = opts::split_commas(text);
    let parsed = match text.strip_prefix("json:") {
        Some(json) => opts::parse_json_filename(json),
        None => opts::parse_keyval(text, Some("driver")),
    };
    let Ok(map) = parsed else {
        return;
    };
    for (key, value) in &map {
        let _ = opts::opt_str(&map, key);
        let _ = opts::opt_bool(&map, key);
        let _ = opts::opt_u64(&map, key);
        if let Some(s) = value.as_str() {
            let _ = opts::parse_size(s);
        }
    }
}
