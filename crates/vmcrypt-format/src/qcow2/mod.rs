//! qcow2 (and qcow version 1) on-disk structures: header, header extensions, L1/L2
//! entries, compressed cluster descriptors. Bytes in, typed values out; no I/O.
pub mod bitmaps;
pub mod create;
pub mod ext;
pub mod header;
pub mod refcount;
pub mod table;
pub mod v1;

#[cfg(test)]
mod tests;

pub use create::{CreateSpec, Plan, build_header_cluster, plan};
pub use ext::{BitmapsExt, Extensions, FdeRegion, FeatureKind, FeatureName};
pub use header::{CompressionType, CryptMethod, Header, Limits, MAGIC};
pub use table::{
    ClusterKind, CompressedDescriptor, L1Entry, L2Entry, Mapping, RawL2Entry, Subclusters,
};
pub use v1::{V1Header, V1Mapping};

/// Whether `head` (at least 8 bytes) starts a qcow file, and which version.
pub fn version_of(head: &[u8]) -> Option<u32> {
    (head.len() >= 8 && head[..4] == MAGIC).then(|| be::u32_at(head, 4))
}

/// Big-endian field readers; callers check lengths first.
pub(crate) mod be {
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[off..off + 4]);
        u32::from_be_bytes(a)
    }
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_be_bytes(a)
    }
}
