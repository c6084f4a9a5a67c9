//! The qcow2 file header (versions 2 and 3, big-endian) and its validation.
//!
//! [`Header::decode`] turns the first bytes of the file into a typed header and rejects
//! what cannot be a qcow2 header at all (magic, version, a v3 header shorter than 104
//! bytes); [`Header::validate`] applies the caps that protect a reader from hostile
//! images (cluster size, table sizes, alignment, unknown incompatible features) and names
//! the offending field.
use super::be::{u32_at, u64_at};
use vmcrypt_error::{Result, bail, ensure};

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header (and of the common part of every version).
pub const V2_HEADER_LEN: u32 = 72;
/// Minimum length of a version 3 header.
pub const V3_HEADER_LEN: u32 = 104;
/// Smallest and largest `cluster_bits` (512 bytes .. 2 MiB), as QEMU accepts.
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
/// Compatible feature bits.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature bits.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Caps on sizes read from an untrusted header (QEMU's limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest L1 table in bytes (QEMU: 32 MiB).
    pub max_l1_bytes: u64,
    /// Largest refcount table in bytes (QEMU: 8 MiB).
    pub max_refcount_table_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_l1_bytes: 32 << 20,
            max_refcount_table_bytes: 8 << 20,
        }
    }
}

/// How guest data is encrypted (`crypt_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptMethod {
    None,
    /// Legacy AES-128-CBC keyed directly by the passphrase (insecure).
    Aes,
    /// LUKS1 header embedded in the image (FDE header extension).
    Luks,
}

impl CryptMethod {
    /// The `crypt_method` field value.
    pub fn code(self) -> u32 {
        match self {
            CryptMethod::None => 0,
            CryptMethod::Aes => 1,
            CryptMethod::Luks => 2,
        }
    }
}

/// How compressed clusters are compressed (`compression_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (no zlib header), 4 KiB window.
    Zlib,
    Zstd,
}

impl CompressionType {
    /// The `compression_type` byte.
    pub fn code(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// A decoded qcow2 header. Fields keep their on-disk names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub crypt_method: CryptMethod,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
}

impl Header {
    /// Decode the header at the start of `buf` (the first cluster, or at least the
    /// header's `header_length` bytes).
    pub fn decode(buf: &[u8]) -> Result<Header> {
        ensure!(
            buf.len() >= V2_HEADER_LEN as usize,
            Corrupt,
            "qcow2: {} bytes is too short for a header",
            buf.len()
        );
        ensure!(
            buf[..4] == MAGIC,
            Corrupt,
            "qcow2: bad magic (not QFI\\xfb)"
        );
        let version = u32_at(buf, 4);
        ensure!(
            version == 2 || version == 3,
            Unsupported,
            "qcow2: unsupported version {version} (2 and 3 are supported)"
        );
        let crypt_method = match u32_at(buf, 32) {
            0 => CryptMethod::None,
            1 => CryptMethod::Aes,
            2 => CryptMethod::Luks,
            m => bail!(Unsupported, "qcow2: unsupported encryption method {m}"),
        };
        let mut h = Header {
            version,
            backing_file_offset: u64_at(buf, 8),
            backing_file_size: u32_at(buf, 16),
            cluster_bits: u32_at(buf, 20),
            size: u64_at(buf, 24),
            crypt_method,
            l1_size: u32_at(buf, 36),
            l1_table_offset: u64_at(buf, 40),
            refcount_table_offset: u64_at(buf, 48),
            refcount_table_clusters: u32_at(buf, 56),
            nb_snapshots: u32_at(buf, 60),
            snapshots_offset: u64_at(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: CompressionType::Zlib,
        };
        if version == 3 {
            h.decode_v3(buf)?;
        }
        Ok(h)
    }

    fn decode_v3(&mut self, buf: &[u8]) -> Result<()> {
        ensure!(
            buf.len() >= V3_HEADER_LEN as usize,
            Corrupt,
            "qcow2: {} bytes is too short for a version 3 header",
            buf.len()
        );
        self.incompatible_features = u64_at(buf, 72);
        self.compatible_features = u64_at(buf, 80);
        self.autoclear_features = u64_at(buf, 88);
        self.refcount_order = u32_at(buf, 96);
        self.header_length = u32_at(buf, 100);
        ensure!(
            self.header_length >= V3_HEADER_LEN && self.header_length.is_multiple_of(8),
            Corrupt,
            "qcow2: header_length {} must be at least 104 and a multiple of 8",
            self.header_length
        );
        if self.header_length > V3_HEADER_LEN {
            ensure!(
                buf.len() > V3_HEADER_LEN as usize,
                Corrupt,
                "qcow2: header_length {} is beyond the {} bytes given",
                self.header_length,
                buf.len()
            );
            self.compression_type = match buf[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => bail!(Unsupported, "qcow2: unknown compression type {t}"),
            };
        }
        Ok(())
    }

    /// The on-disk bytes of this header: 72 bytes for version 2, `header_length` bytes
    /// for version 3 (with `compression_type` at 104 when `header_length` >= 112). The
    /// inverse of [`Header::decode`] for every field it reads.
    pub fn encode(&self) -> Vec<u8> {
        let len = if self.version >= 3 {
            self.header_length.max(V3_HEADER_LEN) as usize
        } else {
            V2_HEADER_LEN as usize
        };
        let mut b = vec![0u8; len];
        b[..4].copy_from_slice(&MAGIC);
        put32(&mut b, 4, self.version);
        put64(&mut b, 8, self.backing_file_offset);
        put32(&mut b, 16, self.backing_file_size);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method.code());
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        if self.version >= 3 {
            put64(&mut b, 72, self.incompatible_features);
            put64(&mut b, 80, self.compatible_features);
            put64(&mut b, 88, self.autoclear_features);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, len as u32);
            if len > V3_HEADER_LEN as usize {
                b[104] = self.compression_type.code();
            }
        }
        b
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn has_extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order.min(6)
    }

    /// Bytes of one L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.has_extended_l2() { 16 } else { 8 }
    }

    /// log2 of the number of entries in one L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.has_extended_l2() { 4 } else { 3 }
    }

    /// Unknown incompatible feature bits (the image must not be opened).
    pub fn unknown_incompatible(&self) -> u64 {
        self.incompatible_features & !INCOMPAT_KNOWN
    }

    /// Apply the caps and consistency rules; `file_size` is the image file's size.
    pub fn validate(&self, file_size: u64, limits: &Limits) -> Result<()> {
        ensure!(
            (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&self.cluster_bits),
            Corrupt,
            "qcow2: cluster_bits {} is outside {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}",
            self.cluster_bits
        );
        let cs = self.cluster_size();
        ensure!(
            u64::from(self.header_length) <= cs,
            Corrupt,
            "qcow2: header_length {} is larger than a cluster ({cs} bytes)",
            self.header_length
        );
        ensure!(
            self.refcount_order <= 6,
            Corrupt,
            "qcow2: refcount_order {} is above 6 (64-bit refcounts)",
            self.refcount_order
        );
        if self.has_extended_l2() {
            ensure!(
                self.cluster_bits >= 14,
                Corrupt,
                "qcow2: extended L2 entries need clusters of at least 16 KiB (cluster_bits {})",
                self.cluster_bits
            );
        }
        ensure!(
            (self.incompatible_features & INCOMPAT_COMPRESSION != 0)
                == (self.compression_type != CompressionType::Zlib),
            Corrupt,
            "qcow2: the compression-type feature bit disagrees with compression_type {}",
            self.compression_type.name()
        );
        self.validate_tables(file_size, limits)?;
        self.validate_backing(file_size)
    }

    fn validate_tables(&self, file_size: u64, limits: &Limits) -> Result<()> {
        let cs = self.cluster_size();
        let l1_bytes = u64::from(self.l1_size) * 8;
        ensure!(
            l1_bytes <= limits.max_l1_bytes,
            LimitExceeded,
            "qcow2: L1 table of {} entries ({l1_bytes} bytes) is above the {}-byte limit",
            self.l1_size,
            limits.max_l1_bytes
        );
        let per_l1 = 1u128 << (self.l2_bits() + self.cluster_bits);
        let covered = u128::from(self.l1_size) * per_l1;
        ensure!(
            covered >= u128::from(self.size),
            Corrupt,
            "qcow2: L1 table of {} entries is too small for a {}-byte disk",
            self.l1_size,
            self.size
        );
        ensure!(
            self.size <= i64::MAX as u64,
            Corrupt,
            "qcow2: virtual size {} is too large",
            self.size
        );
        check_table("L1 table", self.l1_table_offset, l1_bytes, cs, file_size)?;
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        ensure!(
            rt_bytes <= limits.max_refcount_table_bytes,
            LimitExceeded,
            "qcow2: refcount table of {} clusters is above the {}-byte limit",
            self.refcount_table_clusters,
            limits.max_refcount_table_bytes
        );
        check_table(
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_size,
        )?;
        if self.nb_snapshots > 0 {
            ensure!(
                self.snapshots_offset.is_multiple_of(cs),
                Corrupt,
                "qcow2: snapshot table offset {:#x} is not cluster-aligned",
                self.snapshots_offset
            );
        }
        Ok(())
    }

    fn validate_backing(&self, file_size: u64) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        ensure!(
            self.backing_file_size <= 1023,
            Corrupt,
            "qcow2: backing file name of {} bytes is longer than 1023",
            self.backing_file_size
        );
        let end = self
            .backing_file_offset
            .checked_add(u64::from(self.backing_file_size));
        ensure!(
            end.is_some_and(|e| e <= self.cluster_size() && e <= file_size),
            Corrupt,
            "qcow2: backing file name at {:#x} (+{}) is outside the first cluster",
            self.backing_file_offset,
            self.backing_file_size
        );
        Ok(())
    }

    /// Where header extensions end: the backing file name, or the end of the first
    /// cluster.
    pub fn extensions_end(&self) -> u64 {
        if self.backing_file_offset != 0 {
            self.backing_file_offset.min(self.cluster_size())
        } else {
            self.cluster_size()
        }
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// A table of `bytes` at `offset` must be cluster-aligned and inside the file.
fn check_table(what: &str, offset: u64, bytes: u64, cs: u64, file_size: u64) -> Result<()> {
    ensure!(
        offset.is_multiple_of(cs),
        Corrupt,
        "qcow2: {what} offset {offset:#x} is not aligned to the {cs}-byte cluster"
    );
    if bytes > 0 {
        ensure!(
            offset.checked_add(bytes).is_some_and(|e| e <= file_size),
            Corrupt,
            "qcow2: {what} at {offset:#x} ({bytes} bytes) is beyond the end of the file ({file_size} bytes)"
        );
    }
    Ok(())
}
