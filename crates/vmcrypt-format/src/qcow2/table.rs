//! L1 and L2 table entries: where a guest cluster (or subcluster) lives.
//!
//! L1 entry: bits 9..55 the L2 table's offset, bit 63 COPIED. Standard L2 entry: bit 63
//! COPIED, bit 62 compressed; a normal cluster keeps its offset in bits 9..55 and bit 0
//! says "reads as zeros"; a compressed cluster keeps a [`CompressedDescriptor`] in bits
//! 0..61. Extended L2 entries add a 64-bit bitmap: bit `i` allocates subcluster `i`, bit
//! `32 + i` makes it read as zeros.
use vmcrypt_error::{Result, bail, ensure};

pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
pub const ZERO: u64 = 1;
/// Bits 9..55: a cluster-aligned host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// Decode a table of big-endian 64-bit entries (L1, L2, refcount table); a trailing
/// partial entry is ignored.
pub fn decode_u64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Encode a table of 64-bit entries big-endian.
pub fn encode_u64s(table: &[u64]) -> Vec<u8> {
    table.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// Decode an L1 entry: the L2 table's offset, or `None` when unallocated.
pub fn l1_l2_offset(entry: u64, index: usize, cluster_size: u64) -> Result<Option<u64>> {
    ensure!(
        entry & L1_RESERVED == 0,
        Corrupt,
        "qcow2: L1 entry {index} ({entry:#018x}) has reserved bits set"
    );
    let off = entry & OFFSET_MASK;
    if off == 0 {
        return Ok(None);
    }
    ensure!(
        off.is_multiple_of(cluster_size),
        Corrupt,
        "qcow2: L2 table offset {off:#x} in L1 entry {index} is not cluster-aligned"
    );
    Ok(Some(off))
}

/// Where a compressed cluster's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressedDescriptor {
    /// Host offset of the first compressed byte (any alignment).
    pub offset: u64,
    /// Bytes to read: up to the end of the last 512-byte sector the data touches.
    pub size: u64,
}

impl CompressedDescriptor {
    /// Decode bits 0..61 of a compressed L2 entry for clusters of `1 << cluster_bits`.
    pub fn decode(entry: u64, cluster_bits: u32) -> CompressedDescriptor {
        let x = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << x) - 1);
        let extra = (entry >> x) & ((1u64 << (cluster_bits - 8)) - 1);
        CompressedDescriptor {
            offset,
            size: (extra + 1) * 512 - (offset & 511),
        }
    }

    /// Encode (for tests and, later, the write side).
    pub fn encode(self, cluster_bits: u32) -> u64 {
        let x = 62 - (cluster_bits - 8);
        let sectors = (self.offset % 512 + self.size).div_ceil(512);
        COMPRESSED | self.offset | ((sectors - 1) << x)
    }
}

/// What a standard L2 entry (or the first half of an extended one) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// No host cluster: read the backing file (or zeros).
    Unallocated,
    /// Host cluster at this offset.
    Normal(u64),
    /// Reads as zeros; the host cluster (if non-zero) stays preallocated.
    Zero(u64),
    Compressed(CompressedDescriptor),
}

/// A decoded L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Entry {
    pub kind: ClusterKind,
    pub copied: bool,
    /// The subcluster bitmap of an extended entry.
    pub bitmap: Option<u64>,
}

/// How one guest (sub)cluster reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// From the backing file, or zeros without one.
    Backing,
    Zero,
    /// The host cluster starting at this offset.
    Data(u64),
    Compressed(CompressedDescriptor),
}

impl L2Entry {
    /// Decode a standard entry (`bitmap == None`) or an extended one.
    pub fn decode(
        entry: u64,
        bitmap: Option<u64>,
        cluster_bits: u32,
        index: usize,
    ) -> Result<L2Entry> {
        let copied = entry & COPIED != 0;
        if entry & COMPRESSED != 0 {
            ensure!(
                !copied,
                Corrupt,
                "qcow2: compressed L2 entry {index} has the COPIED flag"
            );
            ensure!(
                bitmap.unwrap_or(0) == 0,
                Corrupt,
                "qcow2: compressed L2 entry {index} has a non-zero subcluster bitmap"
            );
            let d = CompressedDescriptor::decode(entry & !COPIED, cluster_bits);
            return Ok(L2Entry {
                kind: ClusterKind::Compressed(d),
                copied,
                bitmap,
            });
        }
        ensure!(
            entry & L2_STD_RESERVED == 0,
            Corrupt,
            "qcow2: L2 entry {index} ({entry:#018x}) has reserved bits set"
        );
        let off = entry & OFFSET_MASK;
        ensure!(
            off.is_multiple_of(1 << cluster_bits),
            Corrupt,
            "qcow2: host offset {off:#x} in L2 entry {index} is not cluster-aligned"
        );
        let zero = entry & ZERO != 0;
        ensure!(
            !(zero && bitmap.is_some()),
            Corrupt,
            "qcow2: extended L2 entry {index} uses the zero flag (reserved with extended L2)"
        );
        let kind = match (off, zero) {
            (_, true) => ClusterKind::Zero(off),
            (0, false) => ClusterKind::Unallocated,
            (o, false) => ClusterKind::Normal(o),
        };
        Ok(L2Entry {
            kind,
            copied,
            bitmap,
        })
    }

    /// How subcluster `sub` reads (`sub` is ignored for standard entries).
    pub fn mapping(&self, sub: u32) -> Result<Mapping> {
        let Some(bm) = self.bitmap else {
            return Ok(match self.kind {
                ClusterKind::Unallocated => Mapping::Backing,
                ClusterKind::Normal(o) => Mapping::Data(o),
                ClusterKind::Zero(_) => Mapping::Zero,
                ClusterKind::Compressed(d) => Mapping::Compressed(d),
            });
        };
        if let ClusterKind::Compressed(d) = self.kind {
            return Ok(Mapping::Compressed(d));
        }
        let alloc = bm >> sub & 1 != 0;
        let zero = bm >> (SUBCLUSTERS + sub) & 1 != 0;
        Ok(match (alloc, zero, self.kind) {
            (true, true, _) => bail!(
                Corrupt,
                "qcow2: subcluster {sub} is marked both allocated and zero"
            ),
            (false, true, _) => Mapping::Zero,
            (false, false, _) => Mapping::Backing,
            (true, false, ClusterKind::Normal(o)) => Mapping::Data(o),
            (true, false, _) => bail!(
                Corrupt,
                "qcow2: subcluster {sub} is allocated but its cluster has no host offset"
            ),
        })
    }
}
