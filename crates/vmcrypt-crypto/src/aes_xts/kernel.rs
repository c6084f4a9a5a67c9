//! [`Kernel`]: the implementations of the hardware AES paths (XTS and CBC decryption),
//! which of them this CPU can run, and which one is used (the fastest, or the one named
//! by the `VMCRYPT_AES_KERNEL` environment variable).
use crate::kernel_choice::{self as choice, KernelChoice};
use vmcrypt_error::Result;

/// The environment variable that forces a kernel by name (benchmarks use it to measure
/// `vaes-avx2` on an AVX-512 machine). Unset or empty: the fastest available kernel.
pub const KERNEL_ENV: &str = "VMCRYPT_AES_KERNEL";

/// One implementation of the AES-XTS and AES-CBC-decryption kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// VAES on 256-bit registers with AVX-512F/VL/BW (32 vector registers), x86_64.
    VaesAvx512,
    /// VAES + VPCLMULQDQ on 256-bit registers with AVX2 only (Zen 3, Alder Lake), x86_64.
    VaesAvx2,
    /// AES-NI on 128-bit registers, x86_64.
    AesNi,
    /// The portable `aes` crate.
    Soft,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::VaesAvx512,
        Kernel::VaesAvx2,
        Kernel::AesNi,
        Kernel::Soft,
    ];

    /// The kernel's name: "vaes-avx512", "vaes-avx2", "aesni" or "soft".
    pub fn name(self) -> &'static str {
        match self {
            Kernel::VaesAvx512 => "vaes-avx512",
            Kernel::VaesAvx2 => "vaes-avx2",
            Kernel::AesNi => "aesni",
            Kernel::Soft => "soft",
        }
    }

    /// The kernel called `name` (as [`Kernel::name`] prints it).
    pub fn from_name(name: &str) -> Result<Kernel> {
        choice::from_name(name)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::VaesAvx512 => super::vaes::available_avx512(),
            #[cfg(target_arch = "x86_64")]
            Kernel::VaesAvx2 => super::vaes::available_avx2(),
            #[cfg(target_arch = "x86_64")]
            Kernel::AesNi => super::aesni::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::VaesAvx512 | Kernel::VaesAvx2 | Kernel::AesNi => false,
            Kernel::Soft => true,
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        choice::best()
    }

    /// The kernel new ciphers use: the one named by [`KERNEL_ENV`] if that is set and not
    /// empty (an error if the name is unknown or the CPU cannot run it), else [`Kernel::best`].
    pub fn selected() -> Result<Kernel> {
        Kernel::from_setting(std::env::var(KERNEL_ENV).ok().as_deref())
    }

    /// [`Kernel::selected`] for a given value of the variable.
    pub(crate) fn from_setting(value: Option<&str>) -> Result<Kernel> {
        choice::from_setting(value)
    }

    /// `self`, or an error naming it if this CPU cannot run it.
    pub(crate) fn check_available(self) -> Result<Kernel> {
        choice::check_available(self)
    }
}

impl KernelChoice for Kernel {
    const ALL: &'static [Kernel] = &Kernel::ALL;
    const WHAT: &'static str = "AES";
    const ENV: &'static str = KERNEL_ENV;
    fn name(self) -> &'static str {
        Kernel::name(self)
    }
    fn available(self) -> bool {
        Kernel::available(self)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU model as the OS reports it (`model name` in /proc/cpuinfo on Linux), or the
/// architecture where that is not available; benchmarks print it beside their numbers.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_picks_the_named_kernel_or_the_best() {
        crate::kernel_choice::tests::check_settings::<Kernel>();
        let e = Kernel::from_setting(Some("avx9")).unwrap_err();
        assert!(
            e.message()
                .starts_with("VMCRYPT_AES_KERNEL=avx9: unknown AES kernel 'avx9' (known: "),
            "{e}"
        );
    }

    #[test]
    fn kernels_are_ordered_fastest_first_and_soft_always_runs() {
        assert!(Kernel::Soft.available());
        let best = Kernel::best();
        let pos = |k| Kernel::ALL.iter().position(|&x| x == k).unwrap();
        assert!(
            Kernel::ALL
                .iter()
                .all(|&k| !k.available() || pos(k) >= pos(best))
        );
    }
}
