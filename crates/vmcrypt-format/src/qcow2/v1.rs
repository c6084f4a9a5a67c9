//! The qcow version 1 header (48 bytes, big-endian) and its L2 entries.
//!
//! Layout: magic, version 1, backing_file_offset (u64), backing_file_size (u32), mtime
//! (u32), size (u64), cluster_bits (u8), l2_bits (u8), 2 bytes padding, crypt_method
//! (u32), l1_table_offset (u64). L2 entries are host offsets; bit 63 marks a compressed
//! cluster whose compressed size sits in the bits above the offset.
use super::be::{u32_at, u64_at};
use super::header::{CryptMethod, MAGIC};
use vmcrypt_error::{Result, bail, ensure};

/// Size of the version 1 header.
pub const V1_HEADER_LEN: usize = 48;
const COMPRESSED: u64 = 1 << 63;

/// A decoded qcow v1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Header {
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub mtime: u32,
    pub size: u64,
    pub cluster_bits: u8,
    pub l2_bits: u8,
    pub crypt_method: CryptMethod,
    pub l1_table_offset: u64,
}

/// How a v1 cluster reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V1Mapping {
    Unallocated,
    Data(u64),
    /// Compressed bytes at `offset`, `size` long.
    Compressed {
        offset: u64,
        size: u64,
    },
}

impl V1Header {
    /// Decode and validate the first 48 bytes of a qcow v1 file.
    pub fn decode(buf: &[u8]) -> Result<V1Header> {
        ensure!(
            buf.len() >= V1_HEADER_LEN,
            Corrupt,
            "qcow: {} bytes is too short for a header",
            buf.len()
        );
        ensure!(buf[..4] == MAGIC, Corrupt, "qcow: bad magic (not QFI\\xfb)");
        let version = u32_at(buf, 4);
        ensure!(
            version == 1,
            Unsupported,
            "qcow: version {version} is not qcow version 1"
        );
        let crypt_method = match u32_at(buf, 36) {
            0 => CryptMethod::None,
            1 => CryptMethod::Aes,
            m => bail!(Unsupported, "qcow: unsupported encryption method {m}"),
        };
        let h = V1Header {
            backing_file_offset: u64_at(buf, 8),
            backing_file_size: u32_at(buf, 16),
            mtime: u32_at(buf, 20),
            size: u64_at(buf, 24),
            cluster_bits: buf[32],
            l2_bits: buf[33],
            crypt_method,
            l1_table_offset: u64_at(buf, 40),
        };
        h.validate()?;
        Ok(h)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            (9..=16).contains(&self.cluster_bits),
            Corrupt,
            "qcow: cluster_bits {} is outside 9..16",
            self.cluster_bits
        );
        ensure!(
            (6..=16).contains(&self.l2_bits),
            Corrupt,
            "qcow: l2_bits {} is outside 6..16",
            self.l2_bits
        );
        ensure!(
            self.size <= 1 << 55,
            Corrupt,
            "qcow: virtual size {} is too large",
            self.size
        );
        ensure!(
            self.l1_size() <= (32 << 20) / 8,
            LimitExceeded,
            "qcow: L1 table of {} entries is above the limit",
            self.l1_size()
        );
        if self.backing_file_offset != 0 {
            ensure!(
                self.backing_file_size <= 1023,
                Corrupt,
                "qcow: backing file name of {} bytes is longer than 1023",
                self.backing_file_size
            );
        }
        Ok(())
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in the L1 table (it covers the whole virtual disk).
    pub fn l1_size(&self) -> u64 {
        let shift = u32::from(self.cluster_bits) + u32::from(self.l2_bits);
        self.size.div_ceil(1 << shift)
    }

    /// Decode an L2 entry.
    pub fn l2_mapping(&self, entry: u64) -> V1Mapping {
        let cb = u32::from(self.cluster_bits);
        if entry & COMPRESSED != 0 {
            let shift = 63 - cb;
            V1Mapping::Compressed {
                offset: entry & ((1 << shift) - 1),
                size: (entry >> shift) & ((1 << cb) - 1),
            }
        } else if entry == 0 {
            V1Mapping::Unallocated
        } else {
            V1Mapping::Data(entry)
        }
    }
}
