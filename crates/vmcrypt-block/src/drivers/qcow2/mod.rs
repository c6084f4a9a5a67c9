//! The `qcow2` format driver and the legacy `qcow` (v1) driver (read-only).
//!
//! Opening reads and validates the header (`vmcrypt_format::qcow2`), its extensions and
//! the L1 table; L2 tables are read on demand and cached ([`meta`]). Encryption (LUKS or
//! legacy AES) is set up by [`crypt`]; the read path is [`engine`], the write path
//! [`write`] with allocation in [`refcount`]. The backing node is attached
//! by the graph opener ([`Qcow2Driver::set_backing`]), which resolves
//! [`Qcow2Driver::backing_file`] relative to the image and opens it with the format named
//! by [`Qcow2Driver::backing_format`].
pub(crate) mod check;
mod commit;
pub(crate) mod create;
pub(crate) mod crypt;
pub(crate) mod engine;
pub(crate) mod map;
mod meta;
mod refcount;
mod rekey;
pub(crate) mod v1;
mod write;

use crate::driver::{
    Backing, BackingInfo, BlockDriver, Child, Commit, Extent, HostMap, Introspect, MapExtent,
    check_range,
};
use crate::spec::CacheSpec;
use crypt::Crypto;
use engine::{ClusterMap, Engine};
use meta::Meta;
use refcount::Refcounts;
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::ext::FeatureKind;
use vmcrypt_format::qcow2::table::decode_u64s;
use vmcrypt_format::qcow2::{
    Extensions, Header, L1Entry, L2Entry, Limits, Mapping, RawL2Entry, Subclusters,
};

pub use rekey::RekeyStats;
pub use v1::QcowDriver;

/// Options for opening an image.
#[derive(Default)]
pub struct OpenOptions<'a> {
    /// The passphrase (`encrypt.key-secret`); `None` opens metadata only.
    pub passphrase: Option<&'a [u8]>,
    /// `encrypt.format` if given ("luks" or "aes").
    pub encrypt_format: Option<&'a str>,
    pub limits: KdfLimits,
    /// Open for writing (refused, with the reason, for images we cannot write).
    pub writable: bool,
    /// The cache options (QEMU's defaults when `None`).
    pub cache: Option<&'a CacheSpec>,
}

/// An open qcow2 image.
pub struct Qcow2Driver {
    header: Header,
    ext: Extensions,
    backing_file: Option<String>,
    meta: Mutex<Meta>,
    /// Shared by reads and in-place writes, exclusive for metadata changes.
    io: RwLock<()>,
    size: AtomicU64,
    /// Why writes are refused (`None`: writable).
    write_refusal: Option<String>,
    /// Whether the first write happened (the autoclear bits are cleared then).
    touched: AtomicBool,
    /// Set once damage is found while writing: the image is marked corrupt on disk and
    /// every later write through this driver is refused with this reason, as QEMU
    /// stops using a node it has marked corrupt.
    poisoned: OnceLock<String>,
    engine: Engine,
}

impl Qcow2Driver {
    /// Open the qcow2 image in `file`.
    pub fn open(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<Qcow2Driver> {
        let name = file.filename();
        Self::open_inner(file, opts).with_ctx(|| format!("opening qcow2 image '{name}'"))
    }

    fn open_inner(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<Qcow2Driver> {
        if opts.writable {
            repair_if_dirty(file.as_ref())?;
        }
        let fsize = file.size();
        let mut head = vec![0u8; fsize.min(1 << 21) as usize];
        file.read_at(&mut head, 0)?;
        let header = Header::decode(&head)?;
        header.validate(fsize, &Limits::default())?;
        let cs = header.cluster_size() as usize;
        head.truncate(cs.min(head.len()));
        let ext = Extensions::decode(&head, header.header_length.into(), header.extensions_end())?;
        check_features(&header, &ext)?;
        let backing_file = backing_name(&header, &head)?;
        let l1 = read_l1(file.as_ref(), &header)?;
        let crypto = Crypto::open(
            &file,
            header.crypt_method,
            ext.fde,
            opts.passphrase,
            opts.encrypt_format,
            &opts.limits,
        )?;
        let entry_bytes = if header.has_extended_l2() { 16 } else { 8 };
        let default_cache = CacheSpec::default();
        let capacity = opts.cache.unwrap_or(&default_cache).l2_tables(
            header.size,
            header.cluster_size(),
            entry_bytes,
        )?;
        let write_refusal = write_refusal(opts.writable, &header, &crypto);
        let mut meta = Meta::new(l1, header.l1_table_offset, capacity);
        if write_refusal.is_none() {
            meta.protected = protected_clusters(&header, &ext, &meta.l1, fsize);
            meta.refs = Some(Refcounts::load(
                file.as_ref(),
                header.cluster_bits,
                header.refcount_order,
                header.refcount_table_offset,
                header.refcount_table_clusters.into(),
            )?);
        }
        let engine = Engine::new(file, crypto, header.compression_type);
        Ok(Qcow2Driver {
            meta: Mutex::new(meta),
            io: RwLock::new(()),
            size: AtomicU64::new(header.size),
            write_refusal,
            touched: AtomicBool::new(false),
            poisoned: OnceLock::new(),
            header,
            ext,
            backing_file,
            engine,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }
    /// The backing file name stored in the header.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }
    /// The backing format from the header extension.
    pub fn backing_format(&self) -> Option<&str> {
        self.ext.backing_format.as_deref()
    }
    pub fn backing(&self) -> Option<&Arc<dyn BlockDriver>> {
        self.engine.backing.as_ref()
    }
    /// Attach the backing node (before the driver is shared).
    pub fn set_backing(&mut self, node: Option<Arc<dyn BlockDriver>>) {
        self.engine.backing = node;
    }
    /// Whether the image is encrypted and no key was given.
    pub fn needs_key(&self) -> bool {
        !self.engine.crypto.is_unlocked()
    }

    fn l2_table(&self, off: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self.meta.lock().expect("meta").cached(off) {
            return Ok(t);
        }
        let cs = self.header.cluster_size() as usize;
        let mut raw = vec![0u8; cs];
        self.engine
            .file
            .read_at(&mut raw, off)
            .with_ctx(|| format!("qcow2: reading the L2 table at {off:#x}"))?;
        let t: Arc<Vec<u64>> = Arc::new(decode_u64s(&raw));
        Ok(self.meta.lock().expect("meta").insert_clean(off, t))
    }
}

impl ClusterMap for Qcow2Driver {
    fn cluster_bits(&self) -> u32 {
        self.header.cluster_bits
    }

    fn unit_bits(&self) -> u32 {
        if self.header.has_extended_l2() {
            self.header.cluster_bits - 5
        } else {
            self.header.cluster_bits
        }
    }

    fn map_unit(&self, g: u64) -> Result<Mapping> {
        self.l2_entry(g)?
            .mapping(((g >> self.unit_bits()) & 31) as u32)
    }

    fn table_hole_end(&self, g: u64) -> Result<Option<u64>> {
        let span_bits = self.header.cluster_bits + self.header.l2_bits();
        let l1i = g >> span_bits;
        let l1e = self.meta.lock().expect("meta").l1_entry(l1i as usize);
        let table = match l1e {
            None => None,
            Some(e) => e.l2_table(l1i as usize, self.header.cluster_size())?,
        };
        Ok(table.is_none().then(|| (l1i + 1) << span_bits))
    }
}

impl Qcow2Driver {
    /// The raw L1 entry, L2 entry and subcluster bitmap of guest cluster `ci`
    /// (unallocated when there is no table).
    pub(super) fn raw_entry(&self, ci: u64) -> Result<(L1Entry, RawL2Entry, Subclusters)> {
        let l1i = (ci >> self.header.l2_bits()) as usize;
        let none = (RawL2Entry::UNALLOCATED, Subclusters::NONE);
        let l1e = self.meta.lock().expect("meta").l1_entry(l1i);
        let Some(l1e) = l1e else {
            return Ok((L1Entry::UNALLOCATED, none.0, none.1));
        };
        let Some(off) = l1e.l2_table(l1i, self.header.cluster_size())? else {
            return Ok((l1e, none.0, none.1));
        };
        let t = self.l2_table(off)?;
        let (e, bm) = self.entry_at(&t, (ci & self.entries_mask()) as usize);
        Ok((l1e, e, bm))
    }

    /// The decoded L2 entry of the cluster holding guest offset `g` (unallocated when
    /// there is no L2 table).
    pub(crate) fn l2_entry(&self, g: u64) -> Result<L2Entry> {
        let ci = g >> self.header.cluster_bits;
        let (_, e, bm) = self.raw_entry(ci)?;
        let idx = (ci & self.entries_mask()) as usize;
        let ext = self.header.has_extended_l2().then_some(bm);
        e.decode(ext, self.header.cluster_bits, idx)
    }
}

/// An image left with the dirty bit (lazy refcounts, not closed cleanly) has stale
/// refcounts: rebuild them before writing, as QEMU does when it opens such an image
/// read-write.
fn repair_if_dirty(file: &dyn BlockDriver) -> Result<()> {
    let mut head = vec![0u8; file.size().min(1 << 16) as usize];
    file.read_at(&mut head, 0)?;
    let Ok(h) = Header::decode(&head) else {
        return Ok(());
    };
    if !h.is_dirty() || h.is_corrupt() {
        return Ok(());
    }
    check::repair(file, check::Repair::All, &check::CheckLimits::default())
        .ctx("qcow2: repairing the refcounts of an image that was not closed cleanly")?;
    Ok(())
}

/// Host clusters data must never be written to: the header, the L1 table and the L2
/// tables it names, the LUKS header region, the snapshot table's first cluster and the
/// bitmap directory (the refcount structures are tracked by [`Refcounts`]). Only
/// clusters inside the file (`file_size` bytes) count: a damaged header may name
/// absurd ranges.
fn protected_clusters(h: &Header, ext: &Extensions, l1: &[u64], file_size: u64) -> HashSet<u64> {
    let cb = h.cluster_bits;
    let file_clusters = file_size.div_ceil(1 << cb);
    let span = |off: u64, len: u64| {
        let start = (off >> cb).min(file_clusters);
        let end = off.saturating_add(len).div_ceil(1 << cb).max(start + 1);
        start..end.min(file_clusters)
    };
    let mut set: HashSet<u64> = span(0, 1).collect();
    set.extend(span(h.l1_table_offset, u64::from(h.l1_size) * 8));
    set.extend(
        l1.iter()
            .map(|&e| L1Entry::from_raw(e).l2_offset())
            .filter(|&o| o != 0)
            .map(|o| o >> cb)
            .filter(|&c| c < file_clusters),
    );
    if let Some(f) = ext.fde {
        set.extend(span(f.offset, f.length));
    }
    if h.nb_snapshots > 0 {
        set.extend(span(h.snapshots_offset, 1));
    }
    if let Some(b) = ext.bitmaps {
        set.extend(span(b.directory_offset, b.directory_size));
    }
    set
}

/// Why an image cannot be written, if it cannot.
fn write_refusal(writable: bool, h: &Header, crypto: &Crypto) -> Option<String> {
    Some(if !writable {
        "the image is opened read-only".into()
    } else if let Crypto::Aes { .. } = crypto {
        "legacy AES-encrypted qcow images are insecure and read-only here: convert to LUKS \
         with 'vmcrypt convert -O qcow2 -o encrypt.format=luks,encrypt.key-secret=ID'"
            .into()
    } else if h.is_corrupt() {
        "the image is marked corrupt (inconsistent metadata); repair it with \
         'qemu-img check -r all'"
            .into()
    } else if h.is_dirty() {
        "the image was not closed cleanly (dirty bit, lazy refcounts) and could not be \
         repaired"
            .into()
    } else {
        return None;
    })
}

/// Refuse unknown incompatible features (named from the feature table when possible)
/// and external data files.
fn check_features(h: &Header, ext: &Extensions) -> Result<()> {
    let unknown = h.unknown_incompatible();
    if unknown != 0 {
        let names: Vec<String> = (0..64u8)
            .filter(|b| unknown >> b & 1 != 0)
            .map(|b| match ext.feature_name(FeatureKind::Incompatible, b) {
                Some(n) => format!("'{n}' (bit {b})"),
                None => format!("bit {b}"),
            })
            .collect();
        bail!(
            Unsupported,
            "qcow2: unsupported incompatible features: {}",
            names.join(", ")
        );
    }
    ensure!(
        !h.has_data_file(),
        Unsupported,
        "qcow2: images with an external data file{} are not supported yet",
        ext.data_file
            .as_deref()
            .map(|n| format!(" ('{n}')"))
            .unwrap_or_default()
    );
    Ok(())
}

fn backing_name(h: &Header, head: &[u8]) -> Result<Option<String>> {
    if h.backing_file_offset == 0 || h.backing_file_size == 0 {
        return Ok(None);
    }
    let start = h.backing_file_offset as usize;
    let raw = &head[start..start + h.backing_file_size as usize];
    let s = std::str::from_utf8(raw)
        .map_err(|_| vmcrypt_error::Error::corrupt("qcow2: backing file name is not UTF-8"))?;
    Ok(Some(s.to_string()))
}

fn read_l1(file: &dyn BlockDriver, h: &Header) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; h.l1_size as usize * 8];
    file.read_at(&mut raw, h.l1_table_offset)
        .ctx("qcow2: reading the L1 table")?;
    Ok(decode_u64s(&raw))
}

/// The qcow2 block of qemu-img info.
fn info_json(h: &Header, crypto: &Crypto) -> Value {
    let mut m = Map::new();
    let v3 = h.version >= 3;
    m.insert("compat".into(), json!(if v3 { "1.1" } else { "0.10" }));
    m.insert("compression-type".into(), json!(h.compression_type.name()));
    if v3 {
        m.insert("lazy-refcounts".into(), json!(h.lazy_refcounts()));
    }
    m.insert("refcount-bits".into(), json!(h.refcount_bits()));
    if let Some(e) = crypto.info_json() {
        m.insert("encrypt".into(), e);
    }
    if v3 {
        m.insert("corrupt".into(), json!(h.is_corrupt()));
        m.insert("extended-l2".into(), json!(h.has_extended_l2()));
    }
    Value::Object(m)
}

impl Drop for Qcow2Driver {
    /// Write back what a caller forgot to flush (errors cannot be reported here; the
    /// ordered flush still leaves a consistent image).
    fn drop(&mut self) {
        let dirty = self.meta.get_mut().map(|m| m.is_dirty()).unwrap_or(false);
        if dirty {
            let _ = self.flush_all();
        }
    }
}

impl BlockDriver for Qcow2Driver {
    fn driver_name(&self) -> &'static str {
        "qcow2"
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("qcow2 read", offset, buf.len(), self.size())?;
        let _shared = self.io.read().expect("io lock");
        self.engine.read(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_at_mut(&mut buf.to_vec(), offset)
    }
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("qcow2 write", offset, buf.len(), self.size())?;
        self.write_guest(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range("qcow2 write zeroes", offset, len as usize, self.size())?;
        self.zero_range(offset, len, false)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range("qcow2 discard", offset, len as usize, self.size())?;
        self.zero_range(offset, len, true)
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.grow(new_size)
    }
    fn flush(&self) -> Result<()> {
        self.flush_all()
    }
    fn has_zero_init(&self) -> bool {
        self.engine.backing.is_none()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range("qcow2 block status", offset, len as usize, self.size())?;
        let _shared = self.io.read().expect("io lock");
        self.engine.block_status(self, offset, len)
    }
    fn is_read_only(&self) -> bool {
        self.write_refusal.is_some()
    }
    /// Only `file`: the backing chain is reported separately (like `qemu-img info`).
    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.engine.file.clone(),
        }]
    }
    fn as_backing(&self) -> Option<&dyn Backing> {
        Some(self)
    }
    fn as_commit(&self) -> Option<&dyn Commit> {
        Some(self)
    }
    fn as_introspect(&self) -> Option<&dyn Introspect> {
        Some(self)
    }
    fn as_host_map(&self) -> Option<&dyn HostMap> {
        Some(self)
    }
}

impl Backing for Qcow2Driver {
    fn backing_info(&self) -> Option<BackingInfo> {
        self.backing_file().map(|b| BackingInfo {
            filename: b.to_string(),
            format: self.backing_format().map(str::to_string),
        })
    }
    fn backing_node(&self) -> Option<&Arc<dyn BlockDriver>> {
        self.backing()
    }
}

impl Commit for Qcow2Driver {
    fn commit(&self, keep_top: bool, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        self.commit_into_backing(keep_top, progress)
    }
}

impl Introspect for Qcow2Driver {
    fn cluster_size(&self) -> Option<u64> {
        Some(self.header.cluster_size())
    }
    fn is_encrypted(&self) -> bool {
        self.engine.crypto.is_encrypted()
    }
    fn key_unverified(&self) -> bool {
        self.engine.crypto.key_unverified()
    }
    fn key_slot(&self) -> Option<u32> {
        self.engine.crypto.key_slot()
    }
    fn format_specific(&self) -> Option<Value> {
        Some(info_json(&self.header, &self.engine.crypto))
    }
}

impl HostMap for Qcow2Driver {
    fn map_extent(&self, offset: u64, len: u64) -> Result<MapExtent> {
        self.map_extent_impl(offset, len)
    }
}
