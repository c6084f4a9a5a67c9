//! L1 and L2 table entries: where a guest cluster (or subcluster) lives.
//!
//! L1 entry: bits 9..55 the L2 table's offset, bit 63 COPIED. Standard L2 entry: bit 63
//! COPIED, bit 62 compressed; a normal cluster keeps its offset in bits 9..55 and bit 0
//! says "reads as zeros"; a compressed cluster keeps a [`CompressedDescriptor`] in bits
//! 0..61. Extended L2 entries add a 64-bit bitmap: bit `i` allocates subcluster `i`, bit
//! `32 + i` makes it read as zeros.
//!
//! Two levels: [`L1Entry`], [`RawL2Entry`] and [`Subclusters`] name the bits of an entry
//! as stored and build new ones, and never fail (the checker must look at damaged
//! entries, the write path keeps whatever it does not change); [`L1Entry::l2_table`]
//! and [`L2Entry::decode`] validate and say what a guest cluster maps to.
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
    L1Entry::from_raw(entry).l2_table(index, cluster_size)
}

/// The raw word of an L1 or L2 entry type: `from_raw`, `raw` and the COPIED flag.
macro_rules! entry_word {
    ($t:ident) => {
        impl $t {
            pub const fn from_raw(raw: u64) -> $t {
                $t(raw)
            }

            pub const fn raw(self) -> u64 {
                self.0
            }

            /// COPIED: the cluster is used by this image only and may change in place.
            pub fn copied(self) -> bool {
                self.0 & COPIED != 0
            }

            /// This entry with COPIED set or cleared, every other bit kept.
            pub fn with_copied(self, copied: bool) -> $t {
                $t(if copied {
                    self.0 | COPIED
                } else {
                    self.0 & !COPIED
                })
            }
        }
    };
}

entry_word!(L1Entry);
entry_word!(RawL2Entry);

/// An L1 entry as stored: the L2 table's offset (bits 9..55) and COPIED (bit 63, the
/// table is used by this image only and may be changed in place).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L1Entry(u64);

impl L1Entry {
    /// No L2 table.
    pub const UNALLOCATED: L1Entry = L1Entry(0);

    /// An entry naming the L2 table at `offset` (cluster-aligned, below 2^56) that this
    /// image owns (COPIED).
    pub fn owned(offset: u64) -> L1Entry {
        debug_assert_eq!(offset & !OFFSET_MASK, 0, "L2 table offset {offset:#x}");
        L1Entry(offset | COPIED)
    }

    /// The offset bits as stored (0: no table), unchecked.
    pub fn l2_offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }

    pub fn has_reserved_bits(self) -> bool {
        self.0 & L1_RESERVED != 0
    }

    /// The L2 table's offset, or `None` when unallocated; refuses reserved bits and a
    /// misaligned offset, naming entry `index`.
    pub fn l2_table(self, index: usize, cluster_size: u64) -> Result<Option<u64>> {
        let entry = self.0;
        ensure!(
            !self.has_reserved_bits(),
            Corrupt,
            "qcow2: L1 entry {index} ({entry:#018x}) has reserved bits set"
        );
        let off = self.l2_offset();
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
}

/// A standard L2 entry (the first word of an extended one) as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawL2Entry(u64);

impl RawL2Entry {
    /// No host cluster: reads from the backing file (or subclusters say otherwise).
    pub const UNALLOCATED: RawL2Entry = RawL2Entry(0);
    /// Reads as zeros, no host cluster (standard entries of version 3 images).
    pub const ZERO: RawL2Entry = RawL2Entry(ZERO);

    /// A normal cluster at host offset `host` (cluster-aligned, below 2^56) that this
    /// image owns (COPIED).
    pub fn owned(host: u64) -> RawL2Entry {
        debug_assert_eq!(host & !OFFSET_MASK, 0, "host offset {host:#x}");
        RawL2Entry(host | COPIED)
    }

    pub fn is_compressed(self) -> bool {
        self.0 & COMPRESSED != 0
    }

    /// The "reads as zeros" flag (bit 0) of a standard, not compressed entry.
    pub fn zero_flag(self) -> bool {
        self.0 & ZERO != 0
    }

    /// The host offset bits (9..55) of a not compressed entry (0: none), unchecked.
    pub fn host_offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }

    /// Whether a not compressed entry has reserved bits set.
    pub fn has_reserved_bits(self) -> bool {
        self.0 & L2_STD_RESERVED != 0
    }

    /// Where a compressed entry's bytes are (the flag bits are ignored).
    pub fn compressed(self, cluster_bits: u32) -> CompressedDescriptor {
        CompressedDescriptor::decode(self.0 & !(COPIED | COMPRESSED), cluster_bits)
    }

    /// Whether the entry names a host cluster this image owns and may write in place:
    /// COPIED, not compressed, with a host offset, and (standard entries) not zero.
    /// With extended L2, some of its subclusters may still be unallocated or zero.
    pub fn is_owned(self, extended: bool) -> bool {
        self.copied()
            && !self.is_compressed()
            && self.host_offset() != 0
            && (extended || !self.zero_flag())
    }

    /// Validate and decode (see [`L2Entry::decode`]).
    pub fn decode(
        self,
        bitmap: Option<Subclusters>,
        cluster_bits: u32,
        index: usize,
    ) -> Result<L2Entry> {
        L2Entry::decode(self.0, bitmap.map(Subclusters::raw), cluster_bits, index)
    }
}

/// The subcluster bitmap of an extended L2 entry: bit `i` allocates subcluster `i`,
/// bit `32 + i` makes it read as zeros. A standard entry has none ([`Self::NONE`]).
/// Sets of subclusters are `u32` masks (bit `i`: subcluster `i`), see [`Self::span`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Subclusters(u64);

impl Subclusters {
    /// Nothing allocated, nothing zero: every subcluster reads from the backing file.
    pub const NONE: Subclusters = Subclusters(0);
    /// Every subcluster reads as zeros.
    pub const ALL_ZERO: Subclusters = Subclusters(0xffff_ffff << 32);

    pub const fn from_raw(raw: u64) -> Subclusters {
        Subclusters(raw)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The mask of subclusters `first..=last` (`first <= last < 32`).
    pub fn span(first: u32, last: u32) -> u32 {
        debug_assert!(first <= last && last < SUBCLUSTERS, "{first}..={last}");
        (u32::MAX >> (SUBCLUSTERS - 1 - last)) & (u32::MAX << first)
    }

    /// The allocated subclusters.
    pub fn allocated(self) -> u32 {
        self.0 as u32
    }

    /// The subclusters that read as zeros.
    pub fn zeros(self) -> u32 {
        (self.0 >> SUBCLUSTERS) as u32
    }

    pub fn is_allocated(self, sub: u32) -> bool {
        self.allocated() >> sub & 1 != 0
    }

    pub fn is_zero(self, sub: u32) -> bool {
        self.zeros() >> sub & 1 != 0
    }

    /// Whether every subcluster in `mask` is allocated and none of them is zero.
    pub fn holds(self, mask: u32) -> bool {
        self.allocated() & mask == mask && self.zeros() & mask == 0
    }

    /// The subclusters marked both allocated and zero (a corruption).
    pub fn conflicts(self) -> u32 {
        self.allocated() & self.zeros()
    }

    /// `mask` allocated and no longer zero, the rest kept.
    pub fn with_allocated(self, mask: u32) -> Subclusters {
        Subclusters::halves(self.allocated() | mask, self.zeros() & !mask)
    }

    /// `mask` zero and no longer allocated, the rest kept.
    pub fn with_zero(self, mask: u32) -> Subclusters {
        Subclusters::halves(self.allocated() & !mask, self.zeros() | mask)
    }

    fn halves(allocated: u32, zeros: u32) -> Subclusters {
        Subclusters((u64::from(zeros) << SUBCLUSTERS) | u64::from(allocated))
    }
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
    pub bitmap: Option<Subclusters>,
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
                bitmap: bitmap.map(Subclusters),
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
            bitmap: bitmap.map(Subclusters),
        })
    }

    /// Encode: the entry word and the subcluster bitmap ([`Subclusters::NONE`] for a
    /// standard entry). Decoding the result gives `self` back.
    pub fn encode(&self, cluster_bits: u32) -> (RawL2Entry, Subclusters) {
        let word = match self.kind {
            ClusterKind::Unallocated => 0,
            ClusterKind::Normal(o) => o,
            ClusterKind::Zero(o) => o | ZERO,
            ClusterKind::Compressed(d) => d.encode(cluster_bits),
        };
        let copied = if self.copied { COPIED } else { 0 };
        (
            RawL2Entry(word | copied),
            self.bitmap.unwrap_or(Subclusters::NONE),
        )
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
        Ok(match (bm.is_allocated(sub), bm.is_zero(sub), self.kind) {
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

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
