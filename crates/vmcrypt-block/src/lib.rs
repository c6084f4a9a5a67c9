//! The vmcrypt block graph.
//!
//! A disk is a small tree of nodes implementing [`BlockDriver`]: protocol nodes move bytes
//! ([`drivers::file::FileDriver`], [`drivers::mem::MemDriver`]), format nodes interpret
//! them ([`drivers::raw::RawDriver`], [`drivers::qcow2`], and
//! [`drivers::luks::LuksDriver`], which decrypts on read and encrypts on write).
//! [`spec`] parses QEMU's `--image-opts` / `json:{...}` descriptions into typed node
//! specs, from which [`graph`] builds such trees;
//! [`jobs`] holds the image-level operations (create, convert, compare, map, info, ...)
//! that the CLI calls, each a request in and a report out.
#![forbid(unsafe_code)]

pub mod driver;
pub mod drivers;
pub mod graph;
pub mod jobs;
pub mod lock;
pub mod opts;
pub mod secrets;
pub mod spec;

pub use driver::{Allocation, BlockDriver, Child, Extent, HostRange, MapExtent};
