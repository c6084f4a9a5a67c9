//! Pure on-disk codecs: bytes in, typed structures out, and back. No I/O here.
#![forbid(unsafe_code)]

pub mod luks1;
pub mod luks2;
pub mod qcow2;
