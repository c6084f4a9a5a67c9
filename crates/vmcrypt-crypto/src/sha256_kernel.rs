//! [`Sha256Kernel`]: the implementations behind [`crate::HashAlg::digest_each`] for
//! SHA-256 (many equal-length messages, the per-block checksums of LUKS2 reencryption),
//! which of them this CPU can run, and which one is used (the fastest, or the one named
//! by the [`KERNEL_ENV`] environment variable).
//!
//! * `avx512-x16`: AVX-512F/BW, sixteen messages in the sixteen 32-bit lanes of the
//!   vector registers (`sha256_mb`). First choice: on the Sapphire Rapids class Xeon
//!   this was measured on it hashes 1.5-1.65x as fast as `sha-ni-x2` (README), and on
//!   AVX-512 CPUs without SHA-NI (Skylake-SP, Cascade Lake) it is the only vector
//!   kernel. A last group of fewer than sixteen messages goes to `sha-ni-x2` where the
//!   CPU has it (else the kernel repeats lanes).
//! * `sha-ni-x2`: the SHA extensions, two messages interleaved (`sha256_ni`): CPUs with
//!   SHA-NI but no AVX-512 (Zen 1-3, Alder Lake and later client cores, Goldmont).
//! * `single`: the `sha2` crate, one message at a time (its own SHA-NI or portable code).
//!
//! The two vector kernels need messages a multiple of 64 bytes long; other lengths and a
//! shorter last message are hashed by `single`. Zen 4/5 have both AVX-512 and SHA-NI
//! and get `avx512-x16` unmeasured; `VMCRYPT_SHA256_KERNEL=sha-ni-x2` overrides.
use crate::kernel_choice::{self as choice, KernelChoice};
use sha2::Digest;
use vmcrypt_error::Result;

/// The environment variable that forces a kernel by name (tests and benchmarks use it).
/// Unset or empty: the fastest available kernel. Read once, on first use.
pub const KERNEL_ENV: &str = "VMCRYPT_SHA256_KERNEL";

/// One implementation of SHA-256 over many equal-length messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sha256Kernel {
    /// SHA-NI, two messages at a time (x86_64).
    ShaNiX2,
    /// AVX-512F/BW, sixteen messages at a time (x86_64).
    Avx512X16,
    /// The `sha2` crate, one message at a time.
    Single,
}

/// SHA-256 round constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 initial hash value.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Sha256Kernel {
    /// Every kernel, fastest first (the order [`Sha256Kernel::best`] tries them).
    pub const ALL: [Sha256Kernel; 3] = [
        Sha256Kernel::Avx512X16,
        Sha256Kernel::ShaNiX2,
        Sha256Kernel::Single,
    ];

    /// The kernel's name: "avx512-x16", "sha-ni-x2" or "single".
    pub fn name(self) -> &'static str {
        match self {
            Sha256Kernel::ShaNiX2 => "sha-ni-x2",
            Sha256Kernel::Avx512X16 => "avx512-x16",
            Sha256Kernel::Single => "single",
        }
    }

    /// The kernel called `name` (as [`Sha256Kernel::name`] prints it).
    pub fn from_name(name: &str) -> Result<Sha256Kernel> {
        choice::from_name(name)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Sha256Kernel::ShaNiX2 => crate::sha256_ni::available(),
            #[cfg(target_arch = "x86_64")]
            Sha256Kernel::Avx512X16 => crate::sha256_mb::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Sha256Kernel::ShaNiX2 | Sha256Kernel::Avx512X16 => false,
            Sha256Kernel::Single => true,
        }
    }

    /// The first kernel of [`Sha256Kernel::ALL`] this CPU can run.
    pub fn best() -> Sha256Kernel {
        choice::best()
    }

    /// The kernel named by [`KERNEL_ENV`] if that is set and not empty (an error if the
    /// name is unknown or the CPU cannot run it), else [`Sha256Kernel::best`]. Read anew
    /// on each call; callers that hash check it once up front to refuse a bad setting.
    pub fn selected() -> Result<Sha256Kernel> {
        Self::from_setting(std::env::var(KERNEL_ENV).ok().as_deref())
    }

    /// The kernel [`crate::HashAlg::digest_each`] uses: [`Sha256Kernel::selected`] as
    /// it was on first use, or [`Sha256Kernel::best`] if that was an error.
    pub fn in_use() -> Sha256Kernel {
        static IN_USE: std::sync::OnceLock<Sha256Kernel> = std::sync::OnceLock::new();
        *IN_USE.get_or_init(|| Self::selected().unwrap_or_else(|_| Self::best()))
    }

    /// [`Sha256Kernel::selected`] for a given value of the variable.
    pub(crate) fn from_setting(value: Option<&str>) -> Result<Sha256Kernel> {
        choice::from_setting(value)
    }

    /// SHA-256 of each `len`-byte message of `data` (`len` not 0; the last message may be
    /// shorter) into consecutive 32-byte slots of `out` (exactly one per message), on
    /// this kernel. Panics if this CPU cannot run it ([`Sha256Kernel::available`]).
    pub fn digest_each(self, len: usize, data: &[u8], out: &mut [u8]) {
        assert!(len > 0);
        assert_eq!(
            out.len(),
            data.len().div_ceil(len) * 32,
            "one slot per message"
        );
        assert!(self.available(), "SHA-256 kernel {self} needs CPU features");
        if !len.is_multiple_of(64) {
            return single(len, data, out);
        }
        let whole = data.len() / len * len;
        let (data, rest) = data.split_at(whole);
        let (out, rest_out) = out.split_at_mut(whole / len * 32);
        single(len, rest, rest_out);
        match self {
            #[cfg(target_arch = "x86_64")]
            Sha256Kernel::ShaNiX2 => crate::sha256_ni::digest_each(len, data, out),
            #[cfg(target_arch = "x86_64")]
            Sha256Kernel::Avx512X16 => {
                // A short last group goes to SHA-NI where the CPU has it (the 16-lane
                // kernel would hash repeated lanes for nothing).
                let full = data.len() / len / 16 * 16 * len;
                let (a, b) = data.split_at(full);
                let (oa, ob) = out.split_at_mut(full / len * 32);
                crate::sha256_mb::digest_each(len, a, oa);
                if Sha256Kernel::ShaNiX2.available() {
                    crate::sha256_ni::digest_each(len, b, ob);
                } else {
                    crate::sha256_mb::digest_each(len, b, ob);
                }
            }
            _ => single(len, data, out),
        }
    }
}

/// SHA-256 of each `len`-byte message of `data` (the last may be shorter), one at a time.
fn single(len: usize, data: &[u8], out: &mut [u8]) {
    for (m, o) in data.chunks(len).zip(out.chunks_exact_mut(32)) {
        o.copy_from_slice(&sha2::Sha256::digest(m));
    }
}

impl KernelChoice for Sha256Kernel {
    const ALL: &'static [Sha256Kernel] = &Sha256Kernel::ALL;
    const WHAT: &'static str = "SHA-256";
    const ENV: &'static str = KERNEL_ENV;
    fn name(self) -> &'static str {
        Sha256Kernel::name(self)
    }
    fn available(self) -> bool {
        Sha256Kernel::available(self)
    }
}

impl std::fmt::Display for Sha256Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_picks_the_named_kernel_or_the_best() {
        crate::kernel_choice::tests::check_settings::<Sha256Kernel>();
        let e = Sha256Kernel::from_setting(Some("avx9")).unwrap_err();
        assert_eq!(
            e.message(),
            "VMCRYPT_SHA256_KERNEL=avx9: unknown SHA-256 kernel 'avx9' \
             (known: avx512-x16, sha-ni-x2, single)"
        );
    }

    #[test]
    fn constants_are_sha256s() {
        // The first 32 bits of the fractional parts of the square roots of the first 8
        // primes and of the cube roots of the first 64 (FIPS 180-4, 4.2.2 and 5.3.3).
        let primes: Vec<u32> = (2u32..312)
            .filter(|n| (2..*n).all(|d| n % d != 0))
            .take(64)
            .collect();
        let frac = |x: f64| ((x - x.floor()) * 4294967296.0) as u32;
        for (i, p) in primes.iter().enumerate() {
            assert_eq!(K[i], frac((*p as f64).cbrt()), "K[{i}]");
            if i < 8 {
                assert_eq!(IV[i], frac((*p as f64).sqrt()), "IV[{i}]");
            }
        }
    }
}
