//! Serpent (128-bit block; 128/192/256-bit keys), table-driven, zeroized on drop.
use super::BlockCipher;
use vmcrypt_error::Result;

pub(crate) struct Serpent {}

impl Serpent {
    /// Key schedule for a 16, 24 or 32-byte key.
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        todo!("{}", key.len())
    }
}

impl BlockCipher for Serpent {
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) {
        todo!("{}", data.len())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) {
        todo!("{}", data.len())
    }
}
