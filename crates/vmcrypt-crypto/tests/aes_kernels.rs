//! Every AES kernel this CPU can run (forced by name) against OpenSSL on every run:
//! AES-128/256-XTS and AES-128/192/256-CBC decryption, 512- and 4096-byte sectors (and
//! odd sizes that reach every tail path), several sectors per call, unaligned tweak
//! starts, both directions. Kernels the CPU lacks are reported by name as not run, and
//! the set that ran is checked against the CPU's features as std detects them. The same
//! check runs again under each emulated CPU of `common::cpu_models` (no AVX-512, VAES,
//! SHA-NI, AVX or AES-NI in turn), where the set must be the one the model's features
//! give.
mod common;

use common::cpu_models::{AES_KERNELS, MODELS};
use common::{bytes, ossl};
use openssl::symm::{Cipher, Mode};
use std::io::Write;
use vmcrypt_crypto::aes_cbc::AesCbc;
use vmcrypt_crypto::aes_xts::{AesXts, KERNEL_ENV, Kernel};
use vmcrypt_crypto::{CipherSpec, SectorCipher};

/// Which kernels the CPU should support, decided here independently of
/// `Kernel::available`.
fn expected_available(k: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let vaes = has!("avx2") && has!("vaes") && has!("vpclmulqdq") && has!("aes");
        match k {
            Kernel::VaesAvx512 => vaes && has!("avx512f") && has!("avx512vl") && has!("avx512bw"),
            Kernel::VaesAvx2 => vaes,
            Kernel::AesNi => has!("aes"),
            Kernel::Soft => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        k == Kernel::Soft
    }
}

/// Sector sizes: single blocks and registers, odd register counts with a 16-byte tail,
/// whole groups plus remainders, and the two real ones.
const XTS_SECTORS: [usize; 7] = [16, 48, 272, 512, 528, 1008, 4096];
const CBC_SECTORS: [usize; 8] = [16, 32, 48, 272, 512, 528, 1008, 4096];
/// Tweak starts: unaligned, carrying over 2^32, and wrapping past u64::MAX.
const TWEAKS: [u64; 4] = [0x0123_4567_89ab_cdef, 7, 0xffff_fffe, u64::MAX - 1];

fn xts_cipher(key_len: usize) -> Cipher {
    if key_len == 32 {
        Cipher::aes_128_xts()
    } else {
        Cipher::aes_256_xts()
    }
}

/// OpenSSL XTS of consecutive sectors, sector k with tweak le128(first + k * step).
fn ossl_xts(mode: Mode, key: &[u8], first: u64, step: u64, ss: usize, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for (k, sector) in data.chunks(ss).enumerate() {
        let iv = (first.wrapping_add(step.wrapping_mul(k as u64)) as u128).to_le_bytes();
        out.extend(ossl(xts_cipher(key.len()), mode, key, Some(&iv), sector));
    }
    out
}

fn check_xts(kernel: Kernel) {
    for key_len in [32, 64] {
        let mut key = bytes(key_len, key_len as u8);
        key[key_len / 2] ^= 0xa5; // OpenSSL refuses K1 == K2.
        let xts = AesXts::with_kernel(&key, kernel).unwrap();
        assert_eq!(xts.kernel(), kernel);
        for ss in XTS_SECTORS {
            for (i, &first) in TWEAKS.iter().enumerate() {
                let (count, step) = ([1, 3, 17, 5][i], [1, 8, 1, 8][i]);
                let plain = bytes(ss * count, i as u8);
                let ctx = format!(
                    "{kernel} AES-{}-XTS, {count} x {ss}, tweak {first:#x}",
                    key_len * 4
                );
                let want = ossl_xts(Mode::Encrypt, &key, first, step, ss, &plain);
                let mut buf = plain.clone();
                xts.encrypt_sectors(first, step, ss, &mut buf);
                assert!(buf == want, "encryption differs from OpenSSL: {ctx}");
                let mut buf = want.clone();
                xts.decrypt_sectors(first, step, ss, &mut buf);
                assert!(buf == plain, "decryption of OpenSSL's ciphertext: {ctx}");
                assert_eq!(ossl_xts(Mode::Decrypt, &key, first, step, ss, &want), plain);
            }
        }
    }
}

fn cbc_cipher(key_len: usize) -> Cipher {
    match key_len {
        16 => Cipher::aes_128_cbc(),
        24 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    }
}

fn check_cbc(kernel: Kernel) {
    for key_len in [16, 24, 32] {
        let key = bytes(key_len, 40 + key_len as u8);
        let cbc = AesCbc::with_kernel(&key, kernel).unwrap();
        assert_eq!(cbc.kernel(), kernel);
        for ss in CBC_SECTORS {
            for count in [1, 3, 9] {
                let plain = bytes(ss * count, count as u8);
                let ivs = bytes(16 * count, 99);
                let mut buf: Vec<u8> = plain
                    .chunks(ss)
                    .zip(ivs.chunks(16))
                    .flat_map(|(p, iv)| ossl(cbc_cipher(key_len), Mode::Encrypt, &key, Some(iv), p))
                    .collect();
                cbc.decrypt_sectors(&ivs, ss, &mut buf).unwrap();
                assert!(
                    buf == plain,
                    "{kernel} AES-{}-CBC decryption of OpenSSL's ciphertext, {count} x {ss}",
                    key_len * 8
                );
            }
        }
    }
}

/// Runs every available kernel; prints (past the test harness's capture) which ran and
/// which this CPU lacks, and fails unless exactly the kernels the CPU supports ran.
#[test]
fn every_available_kernel_matches_openssl() {
    let mut ran = Vec::new();
    let mut not_run = Vec::new();
    for kernel in Kernel::ALL {
        if kernel.available() {
            check_xts(kernel);
            check_cbc(kernel);
            ran.push(kernel.name());
        } else {
            assert!(
                AesXts::with_kernel(&[1u8; 32], kernel).is_err()
                    && AesCbc::with_kernel(&[1u8; 16], kernel).is_err(),
                "{kernel} is unavailable but can be keyed"
            );
            not_run.push(kernel.name());
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "AES kernels checked against OpenSSL (XTS + CBC): {}; NOT RUN (this CPU lacks them): {}",
        ran.join(", "),
        if not_run.is_empty() {
            "none".to_string()
        } else {
            not_run.join(", ")
        }
    );
    let expected: Vec<_> = Kernel::ALL
        .into_iter()
        .filter(|&k| expected_available(k))
        .map(Kernel::name)
        .collect();
    assert_eq!(ran, expected, "kernels run vs kernels this CPU supports");
    assert!(
        ran.contains(&Kernel::best().name()),
        "the best kernel did not run"
    );
    assert_eq!(ran[0], Kernel::best().name());
}

/// [`every_available_kernel_matches_openssl`] under `qemu-x86_64 -cpu MODEL` for each
/// model: it passes there, and the kernels it ran are the ones the model runs.
#[test]
fn every_kernel_of_each_emulated_cpu_matches_openssl() {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().expect("a UTF-8 test binary path");
    let args = ["--exact", "every_available_kernel_matches_openssl"];
    for m in &MODELS {
        let out = m.run(&[], exe, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ran: Vec<_> = AES_KERNELS.into_iter().filter(|k| m.runs_aes(k)).collect();
        let line = format!(
            "AES kernels checked against OpenSSL (XTS + CBC): {}; NOT RUN",
            ran.join(", ")
        );
        assert!(
            out.status.success() && stderr.contains(&line),
            "-cpu {}: wanted {line:?}\n{}{stderr}",
            m.name,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn unknown_kernel_names_are_refused() {
    let err = Kernel::from_name("vaes-avx1024").unwrap_err();
    assert!(err.message().contains("vaes-avx1024") && err.message().contains("vaes-avx2"));
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_name(k.name()).unwrap(), k);
    }
}

/// Run by `env_var_forces_the_kernel` in a child process with the variable set; on its
/// own it checks that the ciphers use `Kernel::selected()`.
#[test]
fn env_child_reports_kernels() {
    let want = Kernel::selected().unwrap();
    let xts = AesXts::new(&[3u8; 64]).unwrap();
    let cbc = AesCbc::new(&[3u8; 32]).unwrap();
    let spec = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 32).unwrap();
    let sc = SectorCipher::new(&spec, &[3u8; 32]).unwrap();
    assert_eq!((xts.kernel(), cbc.kernel()), (want, want));
    assert_eq!(sc.kernel(), Some(want.name()));
    println!(
        "kernels: {} {} {:?}",
        xts.backend(),
        cbc.kernel(),
        sc.kernel()
    );
}

#[test]
fn env_var_forces_the_kernel() {
    let run = |value: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child_reports_kernels", "--nocapture"])
            .env(KERNEL_ENV, value)
            .output()
            .unwrap()
    };
    for k in Kernel::ALL.into_iter().filter(|k| k.available()) {
        let out = run(k.name());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = format!("kernels: {k} {k} Some(\"{k}\")");
        assert!(
            out.status.success() && stdout.contains(&line),
            "{k}: {stdout}"
        );
    }
    // An unknown name fails the child, naming the value.
    let out = run("no-such-kernel");
    assert!(!out.status.success());
    let all = [out.stdout, out.stderr].concat();
    assert!(String::from_utf8_lossy(&all).contains("unknown AES kernel 'no-such-kernel'"));
}

#[test]
fn cbc_refuses_partial_sectors_and_missing_ivs() {
    let cbc = AesCbc::new(&[5u8; 32]).unwrap();
    let mut data = vec![0u8; 1024];
    let err = cbc
        .decrypt_sectors(&[0u8; 16], 24, &mut data[..48])
        .unwrap_err();
    assert!(err.message().contains("sector size 24"), "{err}");
    let err = cbc
        .decrypt_sectors(&[0u8; 32], 512, &mut data[..1000])
        .unwrap_err();
    assert!(err.message().contains("data length 1000"), "{err}");
    let err = cbc.decrypt_sectors(&[0u8; 16], 512, &mut data).unwrap_err();
    assert!(
        err.message().contains("16 bytes of IVs for 2 sectors"),
        "{err}"
    );
    assert_eq!(data, vec![0u8; 1024], "nothing written on error");
    assert!(AesCbc::new(&[5u8; 20]).is_err());
}
