//! The block drivers: protocol nodes that move bytes (`file`, `rbd`, `mem`), format nodes that
//! interpret them (`raw`, `qcow2`), the `luks` filter that decrypts on read and encrypts
//! on write, and a fault-injecting node for tests (`testing`).
pub mod file;
pub mod luks;
pub mod mem;
pub mod qcow2;
pub(crate) mod raw;
pub mod rbd;
pub mod testing;
