//! Fast AES-CBC decryption of whole sectors (the payload of `aes-cbc-essiv:sha256`, the
//! LUKS1 default before 2013, and of the other `aes-cbc-*` modes). Decryption
//! parallelises, since every plaintext block is D(C[i]) ^ C[i-1]: the kernels keep 8
//! (AES-NI) or 16 (VAES, two per 256-bit register) blocks in flight and fold the XOR
//! into the last AES round. Encryption is serial within a sector and stays on the
//! generic path ([`crate::SectorCipher`] interleaves the chains of several sectors).
//!
//! The kernel is the same [`Kernel`] choice as AES-XTS's: `vaes-avx512`, `vaes-avx2`
//! (`vaes` submodule, one body built for both), `aesni`, or `soft` (the `aes` crate
//! through the generic CBC code).
use crate::aes_xts::Kernel;
use crate::aes_xts::keysched::RoundKeys;
use crate::blockcipher::BlockCipher;
use crate::blockcipher::aes::Aes;
use vmcrypt_error::{Result, bail};

#[cfg(target_arch = "x86_64")]
mod aesni;
#[cfg(target_arch = "x86_64")]
mod vaes;

/// AES keyed for CBC over whole sectors: the `aes` crate cipher (encryption, and
/// decryption on the `soft` kernel) and, on the hardware kernels, the expanded round
/// keys. Both are boxed, so moving an `AesCbc` leaves no key copies behind, and
/// zeroized on drop.
pub struct AesCbc {
    cipher: Box<Aes>,
    hw: Option<Box<RoundKeys>>,
    kernel: Kernel,
}

impl std::fmt::Debug for AesCbc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesCbc")
            .field("kernel", &self.kernel.name())
            .finish_non_exhaustive()
    }
}

impl AesCbc {
    /// Key AES-CBC with a 16, 24 or 32-byte key on [`Kernel::selected`].
    pub fn new(key: &[u8]) -> Result<Self> {
        Self::with_kernel(key, Kernel::selected()?)
    }

    /// Key AES-CBC on a given kernel (tests and benchmarks force one this way); an error
    /// if this CPU cannot run it or the key is not 16, 24 or 32 bytes.
    pub fn with_kernel(key: &[u8], kernel: Kernel) -> Result<Self> {
        let kernel = kernel.check_available()?;
        let cipher = Box::new(Aes::new(key)?);
        let hw = (kernel != Kernel::Soft).then(|| Box::new(RoundKeys::new(key)));
        Ok(AesCbc { cipher, hw, kernel })
    }

    /// The decryption kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The block cipher for the generic paths (CBC encryption).
    pub(crate) fn cipher(&self) -> &dyn BlockCipher {
        self.cipher.as_ref()
    }

    /// CBC-decrypt `data` in place, sector by sector: sector k (of `sector_size` bytes)
    /// starts its chain with the IV `ivs[16k..16k + 16]`.
    ///
    /// An error if `sector_size` is 0 or not a multiple of 16, `data.len()` is not a
    /// multiple of it, or `ivs` does not hold one IV per sector.
    pub fn decrypt_sectors(&self, ivs: &[u8], sector_size: usize, data: &mut [u8]) -> Result<()> {
        if sector_size == 0
            || !sector_size.is_multiple_of(16)
            || !data.len().is_multiple_of(sector_size)
        {
            bail!(
                OutOfRange,
                "AES-CBC: sector size {sector_size} / data length {} not multiples of 16 / \
                 the sector size",
                data.len()
            );
        }
        let sectors = data.len() / sector_size;
        if ivs.len() != 16 * sectors {
            bail!(
                OutOfRange,
                "AES-CBC: {} bytes of IVs for {sectors} sectors (need 16 per sector)",
                ivs.len()
            );
        }
        match (&self.hw, self.kernel) {
            (None, _) => {
                let mut copy = vec![0u8; data.len()];
                crate::sector::cbc_decrypt_chunk(
                    self.cipher.as_ref(),
                    ivs,
                    sector_size,
                    data,
                    &mut copy,
                );
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the kernel is a VAES build only if its `available()` returned true
            // in `with_kernel`, so the CPU has every feature that build enables.
            (Some(k), Kernel::VaesAvx512 | Kernel::VaesAvx2) => unsafe {
                vaes::decrypt(k, self.kernel == Kernel::VaesAvx512, ivs, sector_size, data)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the remaining hardware kernel is AesNi, chosen only if its
            // `available()` returned true in `with_kernel`, so the CPU has AES-NI.
            (Some(k), _) => unsafe { aesni::decrypt(k, ivs, sector_size, data) },
            #[cfg(not(target_arch = "x86_64"))]
            (Some(_), _) => unreachable!("hardware AES kernels exist only on x86_64"),
        }
        Ok(())
    }
}
