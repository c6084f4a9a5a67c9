//! The vmcrypt block graph.
//!
//! A disk is a small tree of nodes implementing [`BlockDriver`]: protocol nodes move bytes
//! ([`drivers::file::FileDriver`], [`drivers::rbd::RbdDriver`] with librbd's own
//! encryption in [`drivers::rbd::crypt`], [`drivers::mem::MemDriver`]), format nodes interpret
//! them (`raw`, [`drivers::qcow2`], and
//! [`drivers::luks::LuksDriver`], which decrypts on read and encrypts on write).
//! [`spec`] parses QEMU's `--image-opts` / `json:{...}` descriptions into typed node
//! specs, from which [`graph`] builds such trees;
//! [`jobs`] holds the image-level operations (create, convert, compare, map, info, ...)
//! that the CLI calls, each a request in and a report out.
//!
//! The public API, deliberately: [`jobs`] (what front ends call), [`spec`] and [`graph`]
//! (naming and opening images), [`driver`] (the node trait and its capabilities),
//! [`drivers`] (the nodes, for tools and tests that build graphs by hand), [`secrets`]
//! and [`opts`] (the `--object` and keyval syntax). Everything else, and every module a
//! driver keeps for itself (qcow2's engine, allocator and checker internals, the LUKS
//! version modules, the per-driver spec structs), is `pub(crate)`.
#![forbid(unsafe_code)]

pub mod driver;
pub mod drivers;
pub mod graph;
pub mod jobs;
pub(crate) mod lock;
pub mod opts;
pub mod secrets;
pub mod spec;

pub use driver::{Allocation, BlockDriver, Child, Extent, HostRange, MapExtent};
