//! The vmcrypt block graph.
//!
//! A disk is a small tree of nodes implementing [`BlockDriver`]: protocol nodes move bytes
//! ([`file::FileDriver`], [`mem::MemDriver`]), format nodes interpret them
//! ([`raw::RawDriver`], [`luks::LuksDriver`], which decrypts on read and encrypts on write).
//! [`graph`] builds such trees from QEMU's `--image-opts` / `json:{...}` descriptions,
//! [`luks::volume`] holds the LUKS1 key-slot operations, [`create`] and [`convert`] are
//! the image-level jobs the CLI calls.
#![forbid(unsafe_code)]

pub mod compare;
pub mod convert;
pub mod create;
pub mod driver;
pub mod file;
pub mod graph;
pub mod info;
pub mod lock;
pub mod luks;
pub mod map;
pub mod mem;
pub mod opts;
pub mod qcow2;
pub mod raw;
pub mod rebase;
pub mod secrets;
pub mod testing;

pub use driver::{Allocation, BlockDriver, Child, Extent, HostRange, MapExtent};
