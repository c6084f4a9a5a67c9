//! The legacy `qcow` (version 1) driver, read-only: one L1 table covering the disk, L2
//! tables of `1 << l2_bits` entries, optional raw-deflate compression and legacy AES
//! encryption (IV = guest sector), backing file by name (format probed).
use super::OpenOptions;
use super::crypt::Crypto;
use super::engine::{ClusterMap, Engine};
use vmcrypt_format::qcow2::table::decode_u64s;

/// Message of every refused write.
const READ_ONLY_MSG: &str =
    "qcow (version 1) images are read-only here: convert them with 'vmcrypt convert -O qcow2'";
use crate::driver::{Backing, BackingInfo, BlockDriver, Child, Extent, Introspect, check_range};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vmcrypt_error::{Result, ResultExt, bail};
use vmcrypt_format::qcow2::{CompressedDescriptor, CompressionType, Mapping, V1Header, V1Mapping};

/// An open qcow v1 image.
pub struct QcowDriver {
    header: V1Header,
    backing_file: Option<String>,
    l1: Vec<u64>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    engine: Engine,
}

/// Tables cached before the cache is emptied (v1 tables are at most 512 KiB).
const L2_CACHE_TABLES: usize = 64;

impl QcowDriver {
    pub fn open(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<QcowDriver> {
        let name = file.filename();
        Self::open_inner(file, opts).with_ctx(|| format!("opening qcow image '{name}'"))
    }

    fn open_inner(file: Arc<dyn BlockDriver>, opts: &OpenOptions) -> Result<QcowDriver> {
        let mut head = [0u8; 48];
        if file.size() < 48 {
            bail!(Corrupt, "qcow: the file is too small for a header");
        }
        file.read_at(&mut head, 0)?;
        let header = V1Header::decode(&head)?;
        let backing_file = read_backing_name(file.as_ref(), &header)?;
        let mut raw = vec![0u8; header.l1_size() as usize * 8];
        file.read_at(&mut raw, header.l1_table_offset)
            .ctx("qcow: reading the L1 table")?;
        let l1 = decode_u64s(&raw);
        let crypto = Crypto::open(
            &file,
            header.crypt_method,
            None,
            opts.passphrase,
            opts.encrypt_format,
            &opts.limits,
        )?;
        let engine = Engine::new(file, crypto, CompressionType::Zlib);
        Ok(QcowDriver {
            header,
            backing_file,
            l1,
            l2_cache: Mutex::new(HashMap::new()),
            engine,
        })
    }

    pub fn header(&self) -> &V1Header {
        &self.header
    }
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }
    pub fn set_backing(&mut self, node: Option<Arc<dyn BlockDriver>>) {
        self.engine.backing = node;
    }
    pub fn backing(&self) -> Option<&Arc<dyn BlockDriver>> {
        self.engine.backing.as_ref()
    }
    pub fn needs_key(&self) -> bool {
        !self.engine.crypto.is_unlocked()
    }

    fn l2_table(&self, off: u64) -> Result<Arc<Vec<u64>>> {
        let mut cache = self.l2_cache.lock().expect("L2 cache");
        if let Some(t) = cache.get(&off) {
            return Ok(t.clone());
        }
        let mut raw = vec![0u8; 8 << self.header.l2_bits];
        self.engine
            .file
            .read_at(&mut raw, off)
            .with_ctx(|| format!("qcow: reading the L2 table at {off:#x}"))?;
        let t: Arc<Vec<u64>> = Arc::new(decode_u64s(&raw));
        if cache.len() >= L2_CACHE_TABLES {
            cache.clear();
        }
        cache.insert(off, t.clone());
        Ok(t)
    }
}

fn read_backing_name(file: &dyn BlockDriver, h: &V1Header) -> Result<Option<String>> {
    if h.backing_file_offset == 0 || h.backing_file_size == 0 {
        return Ok(None);
    }
    let mut raw = vec![0u8; h.backing_file_size as usize];
    file.read_at(&mut raw, h.backing_file_offset)
        .ctx("qcow: reading the backing file name")?;
    let s = String::from_utf8(raw)
        .map_err(|_| vmcrypt_error::Error::corrupt("qcow: backing file name is not UTF-8"))?;
    Ok(Some(s))
}

impl ClusterMap for QcowDriver {
    fn cluster_bits(&self) -> u32 {
        self.header.cluster_bits.into()
    }
    fn unit_bits(&self) -> u32 {
        self.header.cluster_bits.into()
    }
    fn map_unit(&self, g: u64) -> Result<Mapping> {
        let cb = u32::from(self.header.cluster_bits);
        let l2_bits = u32::from(self.header.l2_bits);
        let Some(&l2_off) = self.l1.get((g >> (cb + l2_bits)) as usize) else {
            return Ok(Mapping::Backing);
        };
        if l2_off == 0 {
            return Ok(Mapping::Backing);
        }
        let table = self.l2_table(l2_off)?;
        let entry = table[((g >> cb) & ((1 << l2_bits) - 1)) as usize];
        Ok(match self.header.l2_mapping(entry) {
            V1Mapping::Unallocated => Mapping::Backing,
            V1Mapping::Data(h) => Mapping::Data(h),
            V1Mapping::Compressed { offset, size } => {
                Mapping::Compressed(CompressedDescriptor { offset, size })
            }
        })
    }
    fn table_hole_end(&self, g: u64) -> Result<Option<u64>> {
        let span_bits = u32::from(self.header.cluster_bits) + u32::from(self.header.l2_bits);
        let l1i = g >> span_bits;
        let l2_off = self.l1.get(l1i as usize).copied().unwrap_or(0);
        Ok((l2_off == 0).then(|| (l1i + 1) << span_bits))
    }
}

impl BlockDriver for QcowDriver {
    fn driver_name(&self) -> &'static str {
        "qcow"
    }

    fn size(&self) -> u64 {
        self.header.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("qcow read", offset, buf.len(), self.header.size)?;
        self.engine.read(self, buf, offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        bail!(ReadOnly, "{}", READ_ONLY_MSG)
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        bail!(ReadOnly, "{}", READ_ONLY_MSG)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range("qcow block status", offset, len as usize, self.header.size)?;
        self.engine.block_status(self, offset, len)
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.engine.file.clone(),
        }]
    }
    fn as_backing(&self) -> Option<&dyn Backing> {
        Some(self)
    }
    fn as_introspect(&self) -> Option<&dyn Introspect> {
        Some(self)
    }
}

/// qcow v1 headers name a backing file but never its format.
impl Backing for QcowDriver {
    fn backing_info(&self) -> Option<BackingInfo> {
        self.backing_file().map(|b| BackingInfo {
            filename: b.to_string(),
            format: None,
        })
    }
    fn backing_node(&self) -> Option<&Arc<dyn BlockDriver>> {
        self.backing()
    }
}

impl Introspect for QcowDriver {
    fn is_encrypted(&self) -> bool {
        self.engine.crypto.is_encrypted()
    }
    fn key_unverified(&self) -> bool {
        self.engine.crypto.key_unverified()
    }
    /// qemu-img prints nothing here; an encrypted image is flagged insecure.
    fn format_specific(&self) -> Option<serde_json::Value> {
        self.engine
            .crypto
            .info_json()
            .map(|e| serde_json::json!({ "encrypt": e }))
    }
}
