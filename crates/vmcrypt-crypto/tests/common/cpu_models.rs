//! The x86 CPUs the kernel-choice tests emulate with `qemu-x86_64 -cpu MODEL` (QEMU's
//! TCG: the program sees the model's CPUID, and an instruction the model lacks kills it
//! with SIGILL), and which AES and SHA-256 kernels each should get, derived from the
//! model's features. Written once, here, and included by the tests of vmcrypt-crypto
//! (the kernels against OpenSSL) and vmcrypt (the binary's choice and images) with
//! `#[path]`.
#![allow(dead_code)] // each including test binary uses part of it

use std::path::PathBuf;
use std::process::{Command, Output};

/// The user-mode emulator, from the `qemu-user` package (QEMU >= 10, bookworm-backports).
pub const QEMU_USER: &str = "qemu-x86_64";
/// The line QEMU prints for each feature of a model TCG cannot emulate.
pub const TCG_WARNING: &str = "TCG doesn't support requested feature";

/// A QEMU CPU model: its name for `-cpu`, the brand string its CPUID reports, and the
/// features of its definition (QEMU's target/i386/cpu.c) that the kernels depend on.
pub struct Model {
    pub name: &'static str,
    pub brand: &'static str,
    pub features: &'static [&'static str],
}

/// Zen 2, Zen 3, Haswell, Westmere, and qemu64 without AES-NI: CPUs without AVX-512,
/// VAES, SHA-NI, AVX or AES-NI in turn.
pub const MODELS: [Model; 5] = [
    Model {
        name: "EPYC-Rome",
        brand: "AMD EPYC-Rome Processor",
        features: &["aes", "pclmulqdq", "ssse3", "sse4.1", "avx", "avx2", "sha"],
    },
    Model {
        name: "EPYC-Milan-v2",
        brand: "AMD EPYC-Milan-v2 Processor",
        features: &[
            "aes",
            "pclmulqdq",
            "ssse3",
            "sse4.1",
            "avx",
            "avx2",
            "sha",
            "vaes",
            "vpclmulqdq",
        ],
    },
    Model {
        name: "Haswell",
        brand: "Intel Core Processor (Haswell)",
        features: &["aes", "pclmulqdq", "ssse3", "sse4.1", "avx", "avx2"],
    },
    Model {
        name: "Westmere",
        brand: "Westmere E56xx/L56xx/X56xx (Nehalem-C)",
        features: &["aes", "pclmulqdq", "ssse3", "sse4.1"],
    },
    Model {
        name: "qemu64",
        brand: "QEMU Virtual CPU version 2.5+",
        features: &[],
    },
];

/// Features of those definitions that TCG cannot emulate: QEMU drops them from CPUID
/// and names each in a [`TCG_WARNING`] line ([`Model::tcg_dropped`] checks that), so
/// under TCG EPYC-Milan-v2 has VAES but no VPCLMULQDQ and cannot run a VAES kernel.
pub const TCG_LACKS: &[&str] = &["vpclmulqdq"];

/// The AES kernels, fastest first, as `VMCRYPT_AES_KERNEL` names them.
pub const AES_KERNELS: [&str; 4] = ["vaes-avx512", "vaes-avx2", "aesni", "soft"];
/// The SHA-256 kernels, fastest first, as `VMCRYPT_SHA256_KERNEL` names them.
pub const SHA256_KERNELS: [&str; 3] = ["avx512-x16", "sha-ni-x2", "single"];

impl Model {
    pub fn named(name: &str) -> &'static Model {
        MODELS
            .iter()
            .find(|m| m.name == name)
            .expect("a model of MODELS")
    }

    /// Whether the emulated CPU has `feature`: the model defines it and TCG runs it.
    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature) && !TCG_LACKS.contains(&feature)
    }

    /// Whether the AES kernel `kernel` can run on the emulated CPU (the CPUID bits each
    /// kernel's module asks for).
    pub fn runs_aes(&self, kernel: &str) -> bool {
        let h = |f| self.has(f);
        let vaes = h("aes") && h("pclmulqdq") && h("avx2") && h("vaes") && h("vpclmulqdq");
        match kernel {
            "vaes-avx512" => vaes && h("avx512f") && h("avx512vl") && h("avx512bw"),
            "vaes-avx2" => vaes,
            "aesni" => h("aes"),
            "soft" => true,
            _ => panic!("unknown AES kernel {kernel}"),
        }
    }

    /// Whether the SHA-256 kernel `kernel` can run on the emulated CPU.
    pub fn runs_sha256(&self, kernel: &str) -> bool {
        let h = |f| self.has(f);
        match kernel {
            "avx512-x16" => h("avx512f") && h("avx512bw"),
            "sha-ni-x2" => h("sha") && h("ssse3") && h("sse4.1"),
            "single" => true,
            _ => panic!("unknown SHA-256 kernel {kernel}"),
        }
    }

    /// The AES kernel vmcrypt should pick: the fastest one the CPU runs.
    pub fn expected_aes(&self) -> &'static str {
        AES_KERNELS.into_iter().find(|k| self.runs_aes(k)).unwrap()
    }

    /// The SHA-256 kernel vmcrypt should pick: the fastest one the CPU runs.
    pub fn expected_sha256(&self) -> &'static str {
        SHA256_KERNELS
            .into_iter()
            .find(|k| self.runs_sha256(k))
            .unwrap()
    }

    /// Fails the test unless QEMU's stderr of a run says TCG dropped each feature of
    /// [`TCG_LACKS`] this model defines (so the table stays true for the QEMU installed).
    #[track_caller]
    pub fn tcg_dropped(&self, stderr: &str) {
        for f in TCG_LACKS.iter().filter(|f| self.features.contains(f)) {
            let bit = format!(".{f} [bit ");
            let said = stderr
                .lines()
                .any(|l| l.contains(TCG_WARNING) && l.contains(&bit));
            assert!(said, "-cpu {}: does TCG run {f} now?\n{stderr}", self.name);
        }
    }

    /// `qemu-x86_64 -cpu MODEL PROGRAM ARGS` with the variables `env` set for PROGRAM
    /// (`VMCRYPT_AES_KERNEL` and `VMCRYPT_SHA256_KERNEL` cleared unless set there): the
    /// output, after failing the test if the program died of a signal (SIGILL: an
    /// instruction the model lacks).
    pub fn run(&self, env: &[(&str, &str)], program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(qemu_user());
        cmd.args(["-cpu", self.name]);
        for var in ["VMCRYPT_AES_KERNEL", "VMCRYPT_SHA256_KERNEL"] {
            if !env.iter().any(|&(k, _)| k == var) {
                cmd.args(["-U", var]);
            }
        }
        for (k, v) in env {
            cmd.args(["-E", &format!("{k}={v}")]);
        }
        let out = cmd
            .arg(program)
            .args(args)
            .output()
            .expect("running qemu-x86_64");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("uncaught target signal"),
            "{program} {args:?} died under -cpu {} (an instruction the CPU lacks?)\n{stderr}",
            self.name
        );
        out
    }
}

/// The path of `qemu-x86_64`; fails the test, naming the package, when it is missing
/// (the emulated-CPU tests are never skipped).
pub fn qemu_user() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU_USER))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{QEMU_USER} not found: install qemu-user (QEMU >= 10, bookworm-backports)")
        })
}

/// `stderr` without QEMU's [`TCG_WARNING`] lines.
pub fn without_tcg_warnings(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains(TCG_WARNING))
        .map(|l| format!("{l}\n"))
        .collect()
}
