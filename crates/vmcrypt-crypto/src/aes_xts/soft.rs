//! The portable XTS backend: tweak arithmetic in `u128`, block encryption through the
//! `aes` crate (which itself uses hardware AES where it can, e.g. ARMv8). Used on CPUs
//! without AES-NI, on other architectures, and as a reference in tests.
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};

type Block = GenericArray<u8, aes::cipher::consts::U16>;

/// Blocks handled per `aes` crate call (it parallelises within a call).
const CHUNK: usize = 32;

/// Multiply a little-endian XTS tweak by x in GF(2^128) (IEEE 1619 section 5.2).
#[inline]
pub(crate) fn mul_x(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// One AES key schedule of the `aes` crate (which zeroizes it on drop).
enum Cipher {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Cipher {
    fn new(key: &[u8]) -> Self {
        match key.len() {
            16 => Cipher::A128(Aes128::new_from_slice(key).expect("16-byte key")),
            24 => Cipher::A192(Aes192::new_from_slice(key).expect("24-byte key")),
            _ => Cipher::A256(Aes256::new_from_slice(key).expect("32-byte key")),
        }
    }

    fn encrypt(&self, blocks: &mut [Block]) {
        match self {
            Cipher::A128(c) => c.encrypt_blocks(blocks),
            Cipher::A192(c) => c.encrypt_blocks(blocks),
            Cipher::A256(c) => c.encrypt_blocks(blocks),
        }
    }

    fn decrypt(&self, blocks: &mut [Block]) {
        match self {
            Cipher::A128(c) => c.decrypt_blocks(blocks),
            Cipher::A192(c) => c.decrypt_blocks(blocks),
            Cipher::A256(c) => c.decrypt_blocks(blocks),
        }
    }
}

/// The data key K1 and tweak key K2 as `aes` crate ciphers.
pub(crate) struct SoftKeys {
    data: Cipher,
    tweak: Cipher,
}

impl SoftKeys {
    /// `key` is K1 || K2 (32, 48 or 64 bytes; checked by the caller).
    pub(crate) fn new(key: &[u8]) -> Self {
        let (k1, k2) = key.split_at(key.len() / 2);
        SoftKeys {
            data: Cipher::new(k1),
            tweak: Cipher::new(k2),
        }
    }

    /// Encrypt (`decrypt == false`) or decrypt `data` sector by sector; see
    /// [`super::AesXts::encrypt_sectors`] for the tweak numbering.
    pub(crate) fn crypt(
        &self,
        decrypt: bool,
        first: u64,
        step: u64,
        sector_size: usize,
        data: &mut [u8],
    ) {
        let mut tweak_no = first;
        for sector in data.chunks_exact_mut(sector_size) {
            let mut t = [Block::default()];
            t[0].copy_from_slice(&(tweak_no as u128).to_le_bytes());
            self.tweak.encrypt(&mut t);
            let mut tweak = u128::from_le_bytes(t[0].into());
            for chunk in sector.chunks_mut(CHUNK * 16) {
                tweak = self.crypt_chunk(decrypt, tweak, chunk);
            }
            tweak_no = tweak_no.wrapping_add(step);
        }
    }

    /// XTS over up to `CHUNK` blocks starting with tweak `tweak`; returns the next tweak.
    fn crypt_chunk(&self, decrypt: bool, mut tweak: u128, chunk: &mut [u8]) -> u128 {
        let n = chunk.len() / 16;
        let mut tweaks = [0u128; CHUNK];
        let mut blocks = [Block::default(); CHUNK];
        for ((t, b), src) in tweaks
            .iter_mut()
            .zip(blocks.iter_mut())
            .zip(chunk.chunks_exact(16))
        {
            *t = tweak;
            let x = u128::from_le_bytes(src.try_into().expect("16 bytes")) ^ tweak;
            b.copy_from_slice(&x.to_le_bytes());
            tweak = mul_x(tweak);
        }
        if decrypt {
            self.data.decrypt(&mut blocks[..n]);
        } else {
            self.data.encrypt(&mut blocks[..n]);
        }
        for ((t, b), dst) in tweaks
            .iter()
            .zip(blocks.iter())
            .zip(chunk.chunks_exact_mut(16))
        {
            let x = u128::from_le_bytes((*b).into()) ^ t;
            dst.copy_from_slice(&x.to_le_bytes());
        }
        tweak
    }
}
