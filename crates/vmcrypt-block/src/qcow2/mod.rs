//! The `qcow2` format driver (read-only for now) and the legacy `qcow` (v1) driver.
//!
//! Opening reads and validates the header (`vmcrypt_format::qcow2`), its extensions and
//! the L1 table; L2 tables are read on demand and cached. Encryption (LUKS or legacy
//! AES) is set up by [`crypt`]; the read path is [`engine`]. The backing node is attached
//! by the graph opener ([`Qcow2Driver::set_backing`]), which resolves
//! [`Qcow2Driver::backing_file`] relative to the image and opens it with the format named
//! by [`Qcow2Driver::backing_format`].
pub mod check;
pub mod crypt;
pub mod engine;
pub mod v1;

use crate::driver::{BlockDriver, Child, Extent, check_range};
use crypt::Crypto;
use engine::{ClusterMap, Engine};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::ext::FeatureKind;
use vmcrypt_format::qcow2::table::l1_l2_offset;
use vmcrypt_format::qcow2::{Extensions, Header, L2Entry, Limits, Mapping};

pub use v1::QcowDriver;

/// Bytes of L2 tables kept in memory per image, and the most tables (eviction scans
/// them all).
const L2_CACHE_BYTES: u64 = 32 << 20;
const L2_CACHE_MAX_TABLES: u64 = 1024;
/// Message of every refused write.
pub const READ_ONLY_MSG: &str = "qcow2 writing is not supported yet";

/// Options for opening an image.
#[derive(Default)]
pub struct OpenOptions<'a> {
    /// The passphrase (`encrypt.key-secret`); `None` opens metadata only.
    pub passphrase: Option<&'a [u8]>,
    /// `encrypt.format` if given ("luks" or "aes").
    pub encrypt_format: Option<&'a str>,
    pub limits: KdfLimits,
}

/// A small cache of L2 tables keyed by host offset, evicting the least recently used.
struct L2Cache {
    tables: HashMap<u64, (u64, Arc<Vec<u64>>)>,
    clock: u64,
    capacity: usize,
}

impl L2Cache {
    fn get(&mut self, off: u64) -> Option<Arc<Vec<u64>>> {
        self.clock += 1;
        let now = self.clock;
        self.tables.get_mut(&off).map(|(t, v)| {
            *t = now;
            v.clone()
        })
    }

    fn insert(&mut self, off: u64, table: Arc<Vec<u64>>) {
        if self.tables.len() >= self.capacity
            && let Some(&oldest) = self
                .tables
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k)
        {
            self.tables.remove(&oldest);
        }
        self.tables.insert(off, (self.clock, table));
    }
}

/// An open qcow2 image.
pub struct Qcow2Driver {
    header: Header,
    ext: Extensions,
    backing_file: Option<String>,
    l1: Vec<u64>,
    l2_cache: Mutex<L2Cache>,
    engine: Engine,
}

impl Qcow2Driver {
    /// Open the qcow2 image in `file`.
    pub fn open(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<Qcow2Driver> {
        let name = file.filename();
        Self::open_inner(file, opts).with_ctx(|| format!("opening qcow2 image '{name}'"))
    }

    fn open_inner(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<Qcow2Driver> {
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
        let capacity =
            (L2_CACHE_BYTES / header.cluster_size()).clamp(4, L2_CACHE_MAX_TABLES) as usize;
        let engine = Engine::new(file, crypto, header.size, header.compression_type);
        Ok(Qcow2Driver {
            l2_cache: Mutex::new(L2Cache {
                tables: HashMap::new(),
                clock: 0,
                capacity,
            }),
            header,
            ext,
            backing_file,
            l1,
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
        let mut cache = self.l2_cache.lock().expect("L2 cache");
        if let Some(t) = cache.get(off) {
            return Ok(t);
        }
        let cs = self.header.cluster_size() as usize;
        let mut raw = vec![0u8; cs];
        self.engine
            .file
            .read_at(&mut raw, off)
            .with_ctx(|| format!("qcow2: reading the L2 table at {off:#x}"))?;
        let t: Arc<Vec<u64>> = Arc::new(
            raw.chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        );
        cache.insert(off, t.clone());
        Ok(t)
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
        let cb = self.header.cluster_bits;
        let l2_bits = self.header.l2_bits();
        let l1_index = (g >> (cb + l2_bits)) as usize;
        let Some(&l1e) = self.l1.get(l1_index) else {
            return Ok(Mapping::Backing);
        };
        let Some(l2_off) = l1_l2_offset(l1e, l1_index, self.header.cluster_size())? else {
            return Ok(Mapping::Backing);
        };
        let table = self.l2_table(l2_off)?;
        let i = ((g >> cb) & ((1 << l2_bits) - 1)) as usize;
        let entry = if self.header.has_extended_l2() {
            L2Entry::decode(table[2 * i], Some(table[2 * i + 1]), cb, i)?
        } else {
            L2Entry::decode(table[i], None, cb, i)?
        };
        let sub = ((g >> self.unit_bits()) & 31) as u32;
        entry.mapping(sub)
    }
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
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect())
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

impl BlockDriver for Qcow2Driver {
    fn driver_name(&self) -> &'static str {
        "qcow2"
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.header.cluster_size())
    }

    fn backing_info(&self) -> Option<(String, Option<String>)> {
        self.backing_file()
            .map(|b| (b.to_string(), self.backing_format().map(str::to_string)))
    }
    fn size(&self) -> u64 {
        self.header.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("qcow2 read", offset, buf.len(), self.header.size)?;
        self.engine.read(self, buf, offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        bail!(ReadOnly, "{READ_ONLY_MSG}")
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        bail!(ReadOnly, "{READ_ONLY_MSG}")
    }
    fn resize(&self, _new_size: u64) -> Result<()> {
        bail!(ReadOnly, "{READ_ONLY_MSG}")
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range("qcow2 block status", offset, len as usize, self.header.size)?;
        self.engine.block_status(self, offset, len)
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn allocated_size(&self) -> Option<u64> {
        self.engine.file.allocated_size()
    }
    /// Only `file`: the backing chain is reported separately (like `qemu-img info`).
    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.engine.file.clone(),
        }]
    }
    fn format_specific(&self) -> Option<Value> {
        Some(info_json(&self.header, &self.engine.crypto))
    }
    fn is_encrypted(&self) -> bool {
        self.engine.crypto.is_encrypted()
    }
}
