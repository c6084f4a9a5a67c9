//! The fast AES-XTS kernel (IEEE 1619, no ciphertext stealing: sectors are multiples of
//! 16 bytes). Picks a [`Kernel`] at run time (the fastest this CPU has, or the one
//! [`KERNEL_ENV`] names):
//!
//! * `vaes-avx512`: VAES on 256-bit registers, AVX-512VL/BW enabled (2 blocks per
//!   register, 8 registers in flight), tweaks advanced 8 or 16 blocks at a time with byte
//!   shifts and carry-less multiplication, the tweak XOR folded into the first and last
//!   AES round.
//! * `vaes-avx2`: the same code built for AVX2 + VAES + VPCLMULQDQ only (Zen 3, Alder
//!   Lake): 16 vector registers instead of 32, no AVX-512 instruction.
//! * `aesni`: 128-bit AES-NI, 8 blocks in flight.
//! * `soft`: the `aes` crate (portable; used on other CPUs and architectures).
//!
//! Submodules: [`keysched`] (AES key expansion for the hardware paths), `kernel` (the
//! [`Kernel`] choice), [`soft`], and x86_64 only: `aesni`, `vaes` (both VAES builds) and
//! `vaes_ops` (their building blocks, shared with [`crate::aes_cbc`]).
use vmcrypt_error::{Error, Result};

#[cfg(target_arch = "x86_64")]
pub(crate) mod aesni;
mod kernel;
pub(crate) mod keysched;
mod soft;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vaes;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vaes_ops;

pub use kernel::{KERNEL_ENV, Kernel, cpu_model};
use keysched::RoundKeys;
use soft::SoftKeys;

/// Expanded round keys of the data key K1 (encryption and equivalent-inverse decryption
/// schedules) and the tweak key K2, for the hardware backends. Zeroized on drop.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct HwKeys {
    pub(crate) data: RoundKeys,
    pub(crate) tweak: RoundKeys,
}

/// Key state of the chosen backend; boxed so that moving an [`AesXts`] never leaves
/// copies of expanded keys behind (both variants zeroize on drop).
enum Keys {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Hw(Box<HwKeys>),
    Soft(Box<SoftKeys>),
}

/// AES-XTS keyed with a 32/48/64-byte key (data key || tweak key).
///
/// Expanded keys are zeroized on drop; `Debug` shows only the key size and backend.
pub struct AesXts {
    keys: Keys,
    backend: Kernel,
    key_bits: usize,
}

impl std::fmt::Debug for AesXts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesXts")
            .field("key_bits", &self.key_bits)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl AesXts {
    /// Key AES-XTS. `key` is 32, 48 or 64 bytes (AES-128/192/256-XTS): the first half is
    /// the data key K1, the second half the tweak key K2. Runs on [`Kernel::selected`]
    /// (an error if [`KERNEL_ENV`] names a kernel this CPU lacks).
    pub fn new(key: &[u8]) -> Result<Self> {
        Self::with_kernel(key, Kernel::selected()?)
    }

    /// Key AES-XTS on a given kernel (tests and benchmarks use this to force a path); an
    /// error if this CPU cannot run it.
    pub fn with_kernel(key: &[u8], backend: Kernel) -> Result<Self> {
        if !matches!(key.len(), 32 | 48 | 64) {
            return Err(Error::unsupported(format!(
                "AES-XTS key must be 32, 48 or 64 bytes (AES-128/192/256), got {} bytes",
                key.len()
            )));
        }
        let backend = backend.check_available()?;
        let (k1, k2) = key.split_at(key.len() / 2);
        let keys = match backend {
            Kernel::Soft => Keys::Soft(Box::new(SoftKeys::new(key))),
            Kernel::VaesAvx512 | Kernel::VaesAvx2 | Kernel::AesNi => Keys::Hw(Box::new(HwKeys {
                data: RoundKeys::new(k1),
                tweak: RoundKeys::new(k2),
            })),
        };
        Ok(AesXts {
            keys,
            backend,
            key_bits: k1.len() * 8,
        })
    }

    /// Encrypt `data` in place. Sector k of `data` (k = 0, 1, ..) is encrypted with the
    /// tweak T = AES_K2(le128(`first_tweak` + k * `tweak_step`)) (wrapping in u64);
    /// block j of a sector uses T * x^j in GF(2^128), as IEEE 1619, dm-crypt and OpenSSL.
    ///
    /// # Panics
    /// If `sector_size` is 0 or not a multiple of 16, or `data.len()` is not a multiple of
    /// `sector_size`. Callers ([`crate::SectorCipher`]) validate these first.
    pub fn encrypt_sectors(
        &self,
        first_tweak: u64,
        tweak_step: u64,
        sector_size: usize,
        data: &mut [u8],
    ) {
        self.crypt(false, first_tweak, tweak_step, sector_size, data);
    }

    /// Decrypt `data` in place, the inverse of [`AesXts::encrypt_sectors`] (same tweaks,
    /// same panics).
    pub fn decrypt_sectors(
        &self,
        first_tweak: u64,
        tweak_step: u64,
        sector_size: usize,
        data: &mut [u8],
    ) {
        self.crypt(true, first_tweak, tweak_step, sector_size, data);
    }

    /// Which implementation was picked: "vaes-avx512", "vaes-avx2", "aesni" or "soft".
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.backend
    }

    fn crypt(&self, decrypt: bool, first: u64, step: u64, sector_size: usize, data: &mut [u8]) {
        assert!(
            sector_size > 0
                && sector_size.is_multiple_of(16)
                && data.len().is_multiple_of(sector_size),
            "AES-XTS: sector size {sector_size} / data length {} not multiples of 16 / the sector size",
            data.len()
        );
        if data.is_empty() {
            return;
        }
        match (&self.keys, self.backend) {
            (Keys::Soft(k), _) => k.crypt(decrypt, first, step, sector_size, data),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `backend` is a VAES kernel only if its `available()` returned true
            // in `with_kernel`, so the CPU has every feature that build enables.
            (Keys::Hw(k), Kernel::VaesAvx512 | Kernel::VaesAvx2) => unsafe {
                let wide = self.backend == Kernel::VaesAvx512;
                vaes::crypt(k, wide, decrypt, first, step, sector_size, data)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the remaining hardware kernel is AesNi, chosen only if
            // `aesni::available()` returned true in `with_kernel`, so the CPU has AES-NI.
            (Keys::Hw(k), _) => unsafe { aesni::crypt(k, decrypt, first, step, sector_size, data) },
            #[cfg(not(target_arch = "x86_64"))]
            (Keys::Hw(_), _) => unreachable!("hardware AES-XTS backends exist only on x86_64"),
        }
    }
}
