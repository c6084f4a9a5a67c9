//! The answers of the allocation queries: [`Extent`] for `block_status` (one node's own
//! view) and [`MapExtent`] for `qemu-img map` (through the backing chain, down to the
//! host bytes).
/// Whether a range reads as data or is known to read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Holds data (may still be zeros).
    Data,
    /// Reads as zeros and stores nothing (a hole).
    Zero,
}

/// One extent returned by [`BlockDriver::block_status`](super::BlockDriver::block_status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub allocation: Allocation,
}

/// Where a range of a node's data lies on the host (qemu-img map's `offset` and file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRange {
    /// Byte offset of the range's first byte in `file`.
    pub offset: u64,
    /// The name of the protocol node holding the bytes.
    pub file: String,
}

/// One extent returned by [`HostMap::map_extent`](super::HostMap::map_extent): the allocation of a range seen
/// through the whole backing chain, as `qemu-img map` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapExtent {
    pub offset: u64,
    pub length: u64,
    /// Data, or known to read as zeros.
    pub allocation: Allocation,
    /// Whether the layer at `depth` allocates the range (QEMU's "present").
    pub present: bool,
    /// The layer that decides the contents: 0 is this node, 1 its backing node, ...
    pub depth: u32,
    /// Whether the range lies in a compressed cluster.
    pub compressed: bool,
    /// Where the bytes lie contiguously in a file, if they do (never for encrypted
    /// or compressed data).
    pub host: Option<HostRange>,
}

impl MapExtent {
    /// A range of this node itself (depth 0, present) as `block_status` described it.
    pub(crate) fn own(e: Extent, host: Option<HostRange>) -> MapExtent {
        MapExtent {
            offset: e.offset,
            length: e.length,
            allocation: e.allocation,
            present: true,
            depth: 0,
            compressed: false,
            host,
        }
    }
}
