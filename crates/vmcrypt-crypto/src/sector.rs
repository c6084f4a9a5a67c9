//! [`SectorCipher`]: a keyed sector cipher, the thing the luks block driver calls.
use crate::CipherSpec;
use vmcrypt_error::Result;

/// A cipher keyed with a volume key (or a key-slot key), encrypting runs of sectors.
///
/// `iv_sector` is the dm-crypt IV sector number of the first sector in `data`; each
/// following sector of `sector_size` bytes advances it by `sector_size / 512` (LUKS2 does
/// not set `iv_large_sectors`). `data.len()` must be a multiple of `sector_size`,
/// `sector_size` a power of two in 512..=4096.
/// Holds expanded keys; they are zeroized on drop.
pub struct SectorCipher {
    spec: CipherSpec,
}

impl SectorCipher {
    /// Key `spec` with `key` (`key.len()` must equal `spec.key_bytes`).
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self> {
        todo!("{spec:?} {}", key.len())
    }

    pub fn spec(&self) -> &CipherSpec {
        &self.spec
    }

    /// Encrypt `data` in place.
    pub fn encrypt(&self, iv_sector: u64, sector_size: usize, data: &mut [u8]) -> Result<()> {
        todo!("{iv_sector} {sector_size} {}", data.len())
    }

    /// Decrypt `data` in place.
    pub fn decrypt(&self, iv_sector: u64, sector_size: usize, data: &mut [u8]) -> Result<()> {
        todo!("{iv_sector} {sector_size} {}", data.len())
    }
}
