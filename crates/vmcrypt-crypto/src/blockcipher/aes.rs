//! AES via the aes crate (AES-NI/VAES when present).
//!
//! Whole buffers go through the crate's multi-block API, which pipelines several blocks
//! per AES-NI round instruction. Round keys are zeroized on drop (the crate's `zeroize`
//! feature).
use super::BlockCipher;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, inout::InOutBuf};
use aes::{Aes128, Aes192, Aes256};
use vmcrypt_error::{Result, bail};

/// AES with a 128, 192 or 256-bit key.
pub(crate) enum Aes {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Aes {
    /// Key schedule for a 16, 24 or 32-byte key.
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        // new_from_slice only fails on a wrong length, which the match rules out.
        Ok(match key.len() {
            16 => Aes::A128(Aes128::new_from_slice(key).expect("16-byte key")),
            24 => Aes::A192(Aes192::new_from_slice(key).expect("24-byte key")),
            32 => Aes::A256(Aes256::new_from_slice(key).expect("32-byte key")),
            n => bail!(
                Unsupported,
                "invalid AES key size {n} bytes (valid: 16, 24, 32)"
            ),
        })
    }
}

/// Split `data` into whole 16-byte blocks (the caller guarantees there is no tail).
fn blocks(data: &mut [u8]) -> InOutBuf<'_, '_, aes::Block> {
    let (blocks, tail) = InOutBuf::from(data).into_chunks();
    debug_assert!(tail.is_empty(), "AES data is not a multiple of 16 bytes");
    blocks
}

impl BlockCipher for Aes {
    fn block_size(&self) -> usize {
        16
    }

    fn encrypt_blocks(&self, data: &mut [u8]) {
        let b = blocks(data);
        match self {
            Aes::A128(c) => c.encrypt_blocks_inout(b),
            Aes::A192(c) => c.encrypt_blocks_inout(b),
            Aes::A256(c) => c.encrypt_blocks_inout(b),
        }
    }

    fn decrypt_blocks(&self, data: &mut [u8]) {
        let b = blocks(data);
        match self {
            Aes::A128(c) => c.decrypt_blocks_inout(b),
            Aes::A192(c) => c.decrypt_blocks_inout(b),
            Aes::A256(c) => c.decrypt_blocks_inout(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 appendix C known answers.
    #[test]
    fn fips197_vectors() {
        let pt = hex::decode("00112233445566778899aabbccddeeff").unwrap();
        let key: Vec<u8> = (0u8..32).collect();
        for (klen, ct) in [
            (16, "69c4e0d86a7b0430d8cdb78070b4c55a"),
            (24, "dda97ca4864cdfe06eaf70a0ec0d7191"),
            (32, "8ea2b7ca516745bfeafc49904b496089"),
        ] {
            let c = Aes::new(&key[..klen]).unwrap();
            let mut buf = [pt.clone(), pt.clone(), pt.clone()].concat();
            c.encrypt_blocks(&mut buf);
            assert_eq!(hex::encode(&buf[32..]), ct);
            assert_eq!(buf[..16], buf[16..32]);
            c.decrypt_blocks(&mut buf);
            assert_eq!(&buf[..16], &pt[..]);
            assert_eq!(&buf[32..], &pt[..]);
        }
        assert!(Aes::new(&key[..20]).is_err());
    }
}
