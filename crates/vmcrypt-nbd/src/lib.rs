//! An NBD (Network Block Device) server for vmcrypt block graphs, so a decrypted LUKS
//! image can be used by qemu, qemu-img, nbdinfo or the kernel's nbd client.
//!
//! [`proto`] is the protocol without I/O (handshake state machine, request parsing,
//! reply encoding); [`server`] runs it over tokio sockets, with the synchronous
//! [`vmcrypt_block::BlockDriver`] calls moved to the blocking thread pool.
#![forbid(unsafe_code)]

pub mod proto;
pub mod server;

pub use server::{Export, Server, TlsCreds};
