//! The LUKS anti-forensic information splitter (AF-split / AF-merge).
//!
//! Split spreads a key over `stripes` blocks so that destroying any part destroys the
//! key; diffusion uses H(be32(i) || block_i) per digest-sized chunk as LUKS1 defines it.
use crate::{HashAlg, SecretBytes};
use vmcrypt_error::Result;

/// Split `key` into `key.len() * stripes` bytes of key material (random filler from the OS).
pub fn split(hash: HashAlg, key: &[u8], stripes: u32) -> Result<SecretBytes> {
    todo!("{hash:?} {} {stripes}", key.len())
}

/// Recover a `key_len`-byte key from `material` (at least `key_len * stripes` bytes).
pub fn merge(hash: HashAlg, material: &[u8], key_len: usize, stripes: u32) -> SecretBytes {
    todo!("{hash:?} {} {key_len} {stripes}", material.len())
}
