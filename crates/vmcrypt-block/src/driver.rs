//! The [`BlockDriver`] trait every node of a block graph implements.
//!
//! Drivers are synchronous and `Send + Sync`: positioned reads and writes take `&self`, so
//! several threads may call one node at once; a driver that keeps mutable metadata guards
//! it with its own locks. Offsets are bytes in the node's own address space (its
//! "virtual" disk for format nodes, the file for protocol nodes).
use std::sync::Arc;
use vmcrypt_error::{Result, bail};

/// Whether a range reads as data or is known to read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Holds data (may still be zeros).
    Data,
    /// Reads as zeros and stores nothing (a hole).
    Zero,
}

/// One extent returned by [`BlockDriver::block_status`].
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

/// One extent returned by [`BlockDriver::map_extent`]: the allocation of a range seen
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
    pub fn own(e: Extent, host: Option<HostRange>) -> MapExtent {
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

/// A named child edge of a node (`file`, `header`, later `backing`).
pub struct Child {
    pub role: &'static str,
    pub node: Arc<dyn BlockDriver>,
}

/// A node of the block graph.
pub trait BlockDriver: Send + Sync {
    /// The driver's name as QEMU spells it ("file", "raw", "luks").
    fn driver_name(&self) -> &'static str;

    /// Size in bytes of this node's address space.
    fn size(&self) -> u64;

    /// Fill `buf` from `offset`. The whole range must lie inside [`BlockDriver::size`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` at `offset`. The whole range must lie inside the node (protocol nodes
    /// may grow).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Write `buf` at `offset` like [`BlockDriver::write_at`], but the driver may use
    /// `buf` as scratch space (an encrypting node encrypts it in place), so its contents
    /// are unspecified afterwards. Callers that no longer need the data save a copy.
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.write_at(buf, offset)
    }

    /// Make every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Make `[offset, offset+len)` read as zeros. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Tell the node that `[offset, offset+len)` is no longer needed (NBD TRIM, qemu-io
    /// discard). Advisory: the range may read as before or as zeros afterwards. The
    /// default does nothing.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Describe the allocation of the range starting at `offset`: the returned extent
    /// starts at `offset`, has a non-zero length of at most `len` and one allocation state.
    /// The default says "data" for the whole range.
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        Ok(Extent {
            offset,
            length: len,
            allocation: Allocation::Data,
        })
    }

    /// Copy this layer's data into its backing node and (unless `keep_top`) empty this
    /// layer (`qemu-img commit`). `progress(done, total)` reports bytes processed.
    fn commit(&self, keep_top: bool, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let _ = (keep_top, progress);
        bail!(
            Unsupported,
            "driver '{}' has no backing file to commit into",
            self.driver_name()
        )
    }

    /// Describe the range starting at `offset` like `qemu-img map`: the returned extent
    /// starts at `offset`, has a non-zero length of at most `len`, one allocation state,
    /// one depth in the backing chain and (if any) contiguous host bytes. The default
    /// suits format drivers that transform their data (luks): [`BlockDriver::block_status`]
    /// at depth 0, present, without a host offset.
    fn map_extent(&self, offset: u64, len: u64) -> Result<MapExtent> {
        Ok(MapExtent::own(self.block_status(offset, len)?, None))
    }

    /// Whether a freshly created node of this driver reads as zeros everywhere.
    fn has_zero_init(&self) -> bool {
        false
    }

    /// Change the size of the node.
    fn resize(&self, new_size: u64) -> Result<()> {
        bail!(
            Unsupported,
            "driver '{}' cannot be resized (asked for {new_size} bytes)",
            self.driver_name()
        )
    }

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Bytes actually allocated on the host for this node and its children, if known.
    fn allocated_size(&self) -> Option<u64> {
        let kids = self.children();
        if kids.is_empty() {
            return None;
        }
        kids.iter().map(|c| c.node.allocated_size()).sum()
    }

    /// The file name this node stands for (protocol nodes: the path; format nodes:
    /// their `file` child's).
    fn filename(&self) -> String {
        self.children()
            .first()
            .map(|c| c.node.filename())
            .unwrap_or_default()
    }

    /// Children of this node, in a stable order (`file` first).
    fn children(&self) -> Vec<Child> {
        Vec::new()
    }

    /// Driver-specific information (QEMU's "format-specific" data), as JSON.
    fn format_specific(&self) -> Option<serde_json::Value> {
        None
    }

    /// Consistency problems of this node's metadata (`vmcrypt check`), or `None` if the
    /// driver has no checks (qemu-img's "does not support checks").
    fn check(&self) -> Option<Vec<String>> {
        None
    }

    /// Cluster size of a format with clusters (qemu-img info's `cluster_size`).
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    /// The backing file name and format the image header records.
    fn backing_info(&self) -> Option<(String, Option<String>)> {
        None
    }

    /// Whether the node encrypts its data.
    fn is_encrypted(&self) -> bool {
        false
    }
}

/// Fill `buf` from `node` at `offset`; bytes past the node's end read as zeros (as
/// QEMU reads past the end of a file or of a shorter backing file).
pub fn read_padded(node: &dyn BlockDriver, buf: &mut [u8], offset: u64) -> Result<()> {
    let avail = node.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    if avail > 0 {
        node.read_at(&mut buf[..avail], offset)?;
    }
    buf[avail..].fill(0);
    Ok(())
}

/// Check that `[offset, offset+len)` lies in a node of `size` bytes.
pub fn check_range(what: &str, offset: u64, len: usize, size: u64) -> Result<()> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= size => Ok(()),
        _ => bail!(
            OutOfRange,
            "{what}: request at offset {offset} length {len} is beyond the end ({size} bytes)"
        ),
    }
}
