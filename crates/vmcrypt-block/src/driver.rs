//! The [`BlockDriver`] trait every node of a block graph implements, and the optional
//! capabilities some nodes add to it ([`caps`]).
//!
//! Drivers are synchronous and `Send + Sync`: positioned reads and writes take `&self`, so
//! several threads may call one node at once; a driver that keeps mutable metadata guards
//! it with its own locks. Offsets are bytes in the node's own address space (its
//! "virtual" disk for format nodes, the file for protocol nodes).
//!
//! The trait is small on purpose: what every node has (name, children, read-only state)
//! and the I/O every node serves (size, read, write, flush, zeroes, discard, block status,
//! resize). Operations only some drivers can do (commit, check, backing chain, `info`
//! details, host mapping) are capability traits reached through `as_*` accessors that
//! return `None` by default.
pub(crate) mod caps;
pub(crate) mod copy;
mod extent;
#[cfg(test)]
mod tests;

pub use caps::{
    AsyncIo, Backing, BackingInfo, Check, Commit, Declined, HostMap, Introspect, IoDone,
};
pub use extent::{Allocation, Extent, HostRange, MapExtent};
use std::sync::Arc;
use vmcrypt_error::{Result, bail};

/// A named child edge of a node (`file`, `header`, later `backing`).
pub struct Child {
    pub role: &'static str,
    pub node: Arc<dyn BlockDriver>,
}

/// A node of the block graph: its identity, its I/O, and accessors for the optional
/// capabilities of [`caps`].
pub trait BlockDriver: Send + Sync {
    /// The driver's name as QEMU spells it ("file", "raw", "luks").
    fn driver_name(&self) -> &'static str;

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

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    // I/O.

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

    /// Copy the `len` bytes at `src_offset` of `src` to `offset` of this node, as they
    /// are: the same bytes land as if read from `src` and written here with
    /// [`BlockDriver::write_at`], which is what the default does, in 1 MiB pieces (so a
    /// fault-injecting node sees, fails or tears them as writes). The ranges may overlap
    /// when `src` is this node. A `file` node copying from a `file` node
    /// ([`BlockDriver::as_host_file`]) has the kernel copy them (`copy_file_range`),
    /// without passing them through this process; a `raw` window passes a copy into
    /// it to its child at the translated offsets (refusing a range outside the window
    /// or the source before anything is written).
    fn copy_from(
        &self,
        src: &dyn BlockDriver,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        copy::copy_buffered(src, src_offset, offset, len, &mut |b, at| {
            self.write_at(b, at)
        })
    }

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

    // Optional capabilities (see the `caps` module): `None` unless the driver has them.

    /// The `file` node this node is, if it is one: its bytes are a host file's, at the
    /// same offsets, so [`BlockDriver::copy_from`] between two of them may run in the
    /// kernel. Nodes over a file (raw windows, fault injection) answer `None`: a copy
    /// out of them goes through their own reads, and into a fault-injecting node
    /// through its writes (a raw window hands a copy into it to its child).
    fn as_host_file(&self) -> Option<&crate::drivers::file::FileDriver> {
        None
    }

    /// The backing chain, if this node's format can have one ([`Backing`]).
    fn as_backing(&self) -> Option<&dyn Backing> {
        None
    }

    /// Committing into the backing node, if the driver can ([`Commit`]).
    fn as_commit(&self) -> Option<&dyn Commit> {
        None
    }

    /// A metadata check, if the driver has one ([`Check`]).
    fn as_check(&self) -> Option<&dyn Check> {
        None
    }

    /// What `info` reports beyond name, size and children ([`Introspect`]).
    fn as_introspect(&self) -> Option<&dyn Introspect> {
        None
    }

    /// Mapping ranges through the chain to host bytes ([`HostMap`]); without it
    /// [`map_extent`] reports the node's own allocation.
    fn as_host_map(&self) -> Option<&dyn HostMap> {
        None
    }

    /// Reads and writes that call back when they end ([`AsyncIo`]).
    fn as_async(&self) -> Option<&dyn AsyncIo> {
        None
    }

    /// The LUKS2 reencryption this node serves through, if any (LUKS nodes opened on
    /// an image in reencryption state).
    fn as_reencryption(&self) -> Option<Arc<crate::drivers::luks::v2::reencrypt::online::Online>> {
        None
    }

    /// Put the image in LUKS2 reencryption state while it is served (a new volume key
    /// sealed under `passphrase`, which opens the current one through `key_slot` or
    /// any slot) and serve through the moving hotzone from then on. `None`: this node
    /// cannot (only LUKS2 nodes can).
    fn start_reencryption(
        &self,
        _passphrase: &[u8],
        _key_slot: Option<u32>,
        _p: &crate::drivers::luks::v2::reencrypt::init::InitParams,
    ) -> Option<Result<Arc<crate::drivers::luks::v2::reencrypt::online::Online>>> {
        None
    }
}

/// Describe the range starting at `offset` like `qemu-img map` (see
/// [`HostMap::map_extent`]). A node without [`HostMap`] (one that transforms its data,
/// like luks) reports its [`BlockDriver::block_status`] at depth 0, present, without a
/// host offset.
pub fn map_extent(node: &dyn BlockDriver, offset: u64, len: u64) -> Result<MapExtent> {
    match node.as_host_map() {
        Some(m) => m.map_extent(offset, len),
        None => Ok(MapExtent::own(node.block_status(offset, len)?, None)),
    }
}

/// Bytes actually allocated on the host for `node` and its children, if known: the
/// node's own figure ([`Introspect::allocated_size`]), else the sum over its children
/// (unknown if it has none or one of them is unknown).
pub fn allocated_size(node: &dyn BlockDriver) -> Option<u64> {
    if let Some(own) = node.as_introspect().and_then(|i| i.allocated_size()) {
        return Some(own);
    }
    let kids = node.children();
    if kids.is_empty() {
        return None;
    }
    kids.iter().map(|c| allocated_size(c.node.as_ref())).sum()
}

/// Fill `buf` from `node` at `offset`; bytes past the node's end read as zeros (as
/// QEMU reads past the end of a file or of a shorter backing file).
pub(crate) fn read_padded(node: &dyn BlockDriver, buf: &mut [u8], offset: u64) -> Result<()> {
    let avail = node.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    if avail > 0 {
        node.read_at(&mut buf[..avail], offset)?;
    }
    buf[avail..].fill(0);
    Ok(())
}

/// Check that `[offset, offset+len)` lies in a node of `size` bytes.
pub(crate) fn check_range(what: &str, offset: u64, len: usize, size: u64) -> Result<()> {
    check_range_with(|| what.to_string(), offset, len, size)
}

/// [`check_range`] for callers whose name for the request costs a `format!`: `what` is
/// only called when the range is out of bounds (the I/O path checks every request).
pub(crate) fn check_range_with(
    what: impl FnOnce() -> String,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<()> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= size => Ok(()),
        _ => bail!(
            OutOfRange,
            "{}: request at offset {offset} length {len} is beyond the end ({size} bytes)",
            what()
        ),
    }
}
