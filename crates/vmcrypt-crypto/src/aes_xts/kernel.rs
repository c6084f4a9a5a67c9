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

/// The CPU model: the processor's own brand string (CPUID) on x86_64, else `model name`
/// in /proc/cpuinfo (Linux), else the architecture; benchmarks print it beside their
/// numbers. CPUID comes first because it is what the kernel choice sees: under
/// `qemu-x86_64 -cpu MODEL` /proc/cpuinfo still describes the host.
pub fn cpu_model() -> String {
    cpuid_brand()
        .or_else(proc_cpuinfo_model)
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The 48-byte brand string of CPUID leaves 0x8000_0002..=0x8000_0004, trimmed; `None`
/// where the CPU has no such leaves or leaves them blank.
#[cfg(target_arch = "x86_64")]
fn cpuid_brand() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return None;
    }
    let bytes: Vec<u8> = (0x8000_0002..=0x8000_0004)
        .flat_map(|leaf| {
            let r = __cpuid(leaf);
            [r.eax, r.ebx, r.ecx, r.edx].map(u32::to_le_bytes)
        })
        .flatten()
        .take_while(|&b| b != 0)
        .collect();
    let brand = String::from_utf8_lossy(&bytes).trim().to_string();
    (!brand.is_empty()).then_some(brand)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_brand() -> Option<String> {
    None
}

/// `model name` of the first CPU in /proc/cpuinfo.
fn proc_cpuinfo_model() -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
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

    /// Natively the brand string is what Linux prints as `model name` (the kernel reads
    /// the same CPUID leaves), so the two sources agree wherever both exist.
    #[test]
    fn cpu_model_is_the_brand_string_linux_reports() {
        let model = cpu_model();
        assert!(!model.is_empty());
        if let (Some(brand), Some(proc)) = (cpuid_brand(), proc_cpuinfo_model()) {
            assert_eq!(brand, proc);
            assert_eq!(model, brand);
        }
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
