//! CAST5 (CAST-128, 64-bit block, 128-bit key as LUKS uses).
//!
//! Wraps the `cast5` crate; its subkeys are zeroized on drop (the crate's `zeroize`
//! feature).
use super::BlockCipher;
use cast5::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, inout::InOutBuf};
use vmcrypt_error::{Result, bail};

/// CAST5 with a full 16-byte key.
pub(crate) struct Cast5(cast5::Cast5);

impl Cast5 {
    /// Key schedule for a 16-byte key (LUKS/QEMU only use cast5-128).
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        if key.len() != 16 {
            bail!(
                Unsupported,
                "invalid CAST5 key size {} bytes (valid: 16)",
                key.len()
            );
        }
        Ok(Cast5(
            cast5::Cast5::new_from_slice(key).expect("16-byte key"),
        ))
    }
}

fn blocks(data: &mut [u8]) -> InOutBuf<'_, '_, cast5::cipher::Block<cast5::Cast5>> {
    let (blocks, tail) = InOutBuf::from(data).into_chunks();
    debug_assert!(tail.is_empty(), "CAST5 data is not a multiple of 8 bytes");
    blocks
}

impl BlockCipher for Cast5 {
    fn block_size(&self) -> usize {
        8
    }

    fn encrypt_blocks(&self, data: &mut [u8]) {
        self.0.encrypt_blocks_inout(blocks(data));
    }

    fn decrypt_blocks(&self, data: &mut [u8]) {
        self.0.decrypt_blocks_inout(blocks(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2144 appendix B.1, 128-bit key.
    #[test]
    fn rfc2144_vector() {
        let key = hex::decode("0123456712345678234567893456789a").unwrap();
        let c = Cast5::new(&key).unwrap();
        let mut buf = hex::decode("0123456789abcdef").unwrap();
        c.encrypt_blocks(&mut buf);
        assert_eq!(hex::encode(&buf), "238b4fe5847e44b2");
        c.decrypt_blocks(&mut buf);
        assert_eq!(hex::encode(&buf), "0123456789abcdef");
        assert!(Cast5::new(&key[..10]).is_err());
    }
}
