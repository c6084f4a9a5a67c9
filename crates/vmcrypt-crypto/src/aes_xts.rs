//! The fast AES-XTS kernel (IEEE 1619, no ciphertext stealing: sectors are multiples of
//! 16 bytes). Picks a VAES/AVX-512 path at run time when the CPU has it.
use vmcrypt_error::Result;

/// AES-XTS keyed with a 32/48/64-byte key (data key || tweak key).
pub struct AesXts {}

impl AesXts {
    pub fn new(key: &[u8]) -> Result<Self> {
        todo!("{}", key.len())
    }

    /// Encrypt `data` (a multiple of `sector_size`) in place. Sector k of `data` uses
    /// tweak le128(`first_tweak` + k * `tweak_step`).
    pub fn encrypt_sectors(
        &self,
        first_tweak: u64,
        tweak_step: u64,
        sector_size: usize,
        data: &mut [u8],
    ) {
        todo!("{first_tweak} {tweak_step} {sector_size} {}", data.len())
    }

    /// Decrypt, the inverse of [`AesXts::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        first_tweak: u64,
        tweak_step: u64,
        sector_size: usize,
        data: &mut [u8],
    ) {
        todo!("{first_tweak} {tweak_step} {sector_size} {}", data.len())
    }

    /// Which implementation was picked ("vaes-avx512", "aesni", "soft").
    pub fn backend(&self) -> &'static str {
        todo!()
    }
}
