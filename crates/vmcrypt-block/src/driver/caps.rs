//! Optional capabilities of a block node.
//!
//! The I/O trait [`BlockDriver`] is what every node implements. What only some drivers
//! can do lives in one small trait per capability, reached through an accessor on the
//! node that returns `None` unless the driver opts in (`as_commit`, `as_check`, ...).
//! A caller asks "can this node commit?" and gets either the capability or a clear
//! answer that it is absent, instead of calling a method that fails or returns nothing.
//!
//! | capability | what it offers | implemented by |
//! |---|---|---|
//! | [`Backing`] | the backing file the header records and the opened backing node | qcow2, qcow |
//! | [`Commit`] | copy this layer into its backing node (`vmcrypt commit`) | qcow2 |
//! | [`Check`] | problems in the node's own metadata (`vmcrypt check`) | luks |
//! | [`Introspect`] | what `info` shows: host allocation, cluster size, encryption, format-specific data | file, luks, qcow2, qcow |
//! | [`HostMap`] | where a range's bytes come from, through the chain down to the host (`vmcrypt map`) | file, raw, qcow2 |
//! | [`AsyncIo`] | reads, writes and flushes that call back when they end, no thread waiting (`vmcrypt serve`) | rbd |
//!
//! A driver opts in by implementing the trait and overriding the accessor:
//! `fn as_commit(&self) -> Option<&dyn Commit> { Some(self) }`.
use super::{BlockDriver, MapExtent};
use serde_json::Value;
use std::sync::Arc;
use vmcrypt_error::Result;

/// The backing file an image header records (`qemu-img info`'s `backing-filename` and
/// `backing-filename-format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingInfo {
    /// The name as written in the header (relative names are relative to the image).
    pub filename: String,
    /// The format the header names, if it names one.
    pub format: Option<String>,
}

/// Backing chain access, for formats whose header can name a backing file.
pub trait Backing {
    /// The backing file this image's header records, or `None` if it has none.
    fn backing_info(&self) -> Option<BackingInfo>;

    /// The opened backing node, if the image has one and it was opened.
    fn backing_node(&self) -> Option<&Arc<dyn BlockDriver>>;
}

/// Committing a layer into the node below it (`qemu-img commit`).
pub trait Commit {
    /// Copy this layer's data into its backing node and (unless `keep_top`) empty this
    /// layer. `progress(done, total)` reports bytes processed.
    fn commit(&self, keep_top: bool, progress: &mut dyn FnMut(u64, u64)) -> Result<()>;
}

/// A consistency check of a node's own metadata (`vmcrypt check`). A node without it
/// is one of qemu-img's "does not support checks".
pub trait Check {
    /// The problems found, one human-readable line each; empty when all is well.
    fn check(&self) -> Vec<String>;
}

/// What `info` reports about a node beyond its name, size and children. Every method
/// has a default meaning "nothing to report".
pub trait Introspect {
    /// Bytes allocated on the host for this node itself (a protocol node's file). `None`
    /// lets [`allocated_size`](super::allocated_size) sum the children instead.
    fn allocated_size(&self) -> Option<u64> {
        None
    }

    /// Cluster size of a format with clusters (qemu-img info's `cluster_size`).
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    /// Whether the node encrypts its data.
    fn is_encrypted(&self) -> bool {
        false
    }

    /// Whether the node decrypts with a key it could not verify (legacy qcow AES: no
    /// key digest, so a wrong passphrase reads as garbage rather than failing).
    fn key_unverified(&self) -> bool {
        false
    }

    /// The key slot of the node's own LUKS header that its key opened, if it has one.
    fn key_slot(&self) -> Option<u32> {
        None
    }

    /// Driver-specific information (QEMU's "format-specific" data), as JSON.
    fn format_specific(&self) -> Option<Value> {
        None
    }
}

/// Mapping a range to where its bytes come from: which layer of the backing chain, and
/// where they lie in a host file when they lie there unchanged. Nodes that transform
/// their data (luks) do not have it; [`map_extent`](super::map_extent) then describes
/// the node's own allocation without host offsets.
pub trait HostMap {
    /// Describe the range starting at `offset` like `qemu-img map`: the returned extent
    /// starts at `offset`, has a non-zero length of at most `len`, one allocation state,
    /// one depth in the backing chain and (if any) contiguous host bytes.
    fn map_extent(&self, offset: u64, len: u64) -> Result<MapExtent>;
}

/// What an asynchronous request calls when it ends: its result, and the buffer it was
/// given back (a read's data in it; a write's may hold ciphertext). It may be called on
/// any thread, also before the submit returns; it must be short.
pub type IoDone = Box<dyn FnOnce(vmcrypt_error::Result<()>, Vec<u8>) + Send>;

/// A request the node does not run asynchronously (an unaligned write, metadata it
/// would have to fetch first, an error to report): the caller gets its buffer and
/// `done` back and runs the request through [`BlockDriver`] on a thread that may block.
pub struct Declined {
    pub buf: Vec<u8>,
    pub done: IoDone,
}

/// Submit-style I/O: the node starts the request and returns; `done` runs when it ends,
/// so a server keeps no thread blocked per request in flight. The node owns the buffer
/// until then. Requests in flight at once may end in any order.
pub trait AsyncIo: Send + Sync {
    /// Read `buf.len() - start` bytes at `offset` into `buf[start..]`.
    fn submit_read(
        &self,
        buf: Vec<u8>,
        start: usize,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined>;

    /// Write `buf` at `offset` (an encrypting node encrypts it in place).
    fn submit_write(
        &self,
        buf: Vec<u8>,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined>;

    /// Make every completed write durable (`done` gets an empty buffer).
    fn submit_flush(&self, done: IoDone) -> std::result::Result<(), Declined>;
}
