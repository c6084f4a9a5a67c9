//! The internal block-cipher interface the generic modes run over, and its
//! implementations for every [`crate::CipherFamily`] (AES via the `aes` crate, our own
//! table-driven Twofish and Serpent, CAST5).

/// A keyed block cipher processing many independent blocks at once (ECB over a buffer),
/// which is what XTS (after tweak XOR) and CBC decryption need.
pub(crate) trait BlockCipher: Send + Sync {
    /// Block size in bytes: 16, or 8 for CAST5.
    fn block_size(&self) -> usize;
    /// Encrypt each block of `data` in place; `data.len()` is a multiple of the block size.
    fn encrypt_blocks(&self, data: &mut [u8]);
    /// Decrypt each block of `data` in place.
    fn decrypt_blocks(&self, data: &mut [u8]);
}

pub(crate) mod aes;
pub(crate) mod cast5;
pub(crate) mod serpent;
pub(crate) mod twofish;
