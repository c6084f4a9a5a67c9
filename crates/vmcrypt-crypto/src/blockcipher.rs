//! The internal block-cipher interface the generic modes run over, and its
//! implementations for every [`crate::CipherFamily`] (AES via the `aes` crate, our own
//! table-driven Twofish and Serpent, CAST5).
use crate::CipherFamily;
use vmcrypt_error::Result;

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

/// Key a cipher of `family` with `key` (one cipher key: 16/24/32 bytes, 16 for CAST5).
pub(crate) fn new_block_cipher(family: CipherFamily, key: &[u8]) -> Result<Box<dyn BlockCipher>> {
    Ok(match family {
        CipherFamily::Aes => Box::new(aes::Aes::new(key)?),
        CipherFamily::Twofish => Box::new(twofish::Twofish::new(key)?),
        CipherFamily::Serpent => Box::new(serpent::Serpent::new(key)?),
        CipherFamily::Cast5 => Box::new(cast5::Cast5::new(key)?),
    })
}
