//! An NBD (Network Block Device) server for vmcrypt block graphs, so a decrypted LUKS
//! image can be used by qemu, qemu-img, nbdinfo or the kernel's nbd client.
//!
//! [`proto`] is the protocol without I/O (handshake state machine, request parsing,
//! reply encoding); [`server`] runs it over tokio sockets, with the synchronous
//! [`vmcrypt_block::BlockDriver`] calls moved to the blocking thread pool.
//! With [`TlsCreds`] (qemu-style x509 files, see [`server::tls`]) the server demands
//! NBD_OPT_STARTTLS and runs the rest of the session over rustls.
#![forbid(unsafe_code)]

pub mod proto;
pub mod server;

pub use server::{Export, Server, TlsCreds};
