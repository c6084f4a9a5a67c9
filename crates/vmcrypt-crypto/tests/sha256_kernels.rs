//! Every SHA-256 kernel this CPU can run, forced by name, against the `sha2` crate and
//! OpenSSL: message lengths 64..=4096 (multiples of 64), 1..=40 messages (full groups of
//! 16, short groups, a shorter last message), and the `VMCRYPT_SHA256_KERNEL` override.
//! A kernel the CPU lacks is printed as not run, by name. The shorter-message checks run
//! again under each emulated CPU of `common::cpu_models`, where the kernels not run must
//! be the ones the model lacks.
mod common;

use common::cpu_models::{MODELS, SHA256_KERNELS};
use sha2::Digest;
use vmcrypt_crypto::HashAlg;
use vmcrypt_crypto::sha256_kernel::{KERNEL_ENV, Sha256Kernel};

fn data(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// The digests of each `len`-byte message of `msgs` (the last may be shorter) by the
/// `sha2` crate and by OpenSSL, which must agree.
fn reference(len: usize, msgs: &[u8]) -> Vec<[u8; 32]> {
    let md = openssl::hash::MessageDigest::sha256();
    msgs.chunks(len)
        .map(|m| {
            let want: [u8; 32] = sha2::Sha256::digest(m).into();
            assert_eq!(want[..], openssl::hash::hash(md, m).unwrap()[..]);
            want
        })
        .collect()
}

/// Hash `msgs` in `len`-byte messages on `k` and check every digest against `want`
/// (the [`reference`] of at least as many messages: a prefix of `msgs` is hashed).
fn check(k: Sha256Kernel, len: usize, msgs: &[u8], want: &[[u8; 32]]) {
    let count = msgs.len().div_ceil(len);
    assert!(want.len() >= count);
    let mut out = vec![0u8; count * 32];
    k.digest_each(len, msgs, &mut out);
    for (i, (o, w)) in out.chunks(32).zip(want).enumerate() {
        assert_eq!(o, w, "{k}: message {i} of {count} x {len} bytes");
    }
}

/// The kernels this CPU runs; the others are printed as not run.
fn runnable() -> Vec<Sha256Kernel> {
    Sha256Kernel::ALL
        .into_iter()
        .filter(|k| {
            if !k.available() {
                println!("sha256 kernel {k}: NOT RUN (this CPU lacks its features)");
            }
            k.available()
        })
        .collect()
}

#[test]
fn every_kernel_matches_sha2_and_openssl() {
    let buf = data(40 * 4096);
    let kernels = runnable();
    for len in (64..=4096).step_by(64) {
        let want = reference(len, &buf[..40 * len]);
        for &k in &kernels {
            for count in 1..=40 {
                check(k, len, &buf[..len * count], &want);
            }
        }
    }
    for k in kernels {
        println!("sha256 kernel {k}: checked lengths 64..=4096 x 1..=40 messages");
    }
}

#[test]
fn shorter_last_message_and_odd_lengths() {
    let buf = data(40 * 4096);
    let kernels = runnable();
    for len in [64, 512, 4096] {
        for count in [1, 2, 15, 16, 17, 33, 40] {
            for short in [1, 63, len - 1] {
                let msgs = &buf[..len * count - short];
                let want = reference(len, msgs);
                for &k in &kernels {
                    check(k, len, msgs, &want);
                }
            }
        }
    }
    // Not a multiple of 64: every kernel falls back to one message at a time.
    for len in [1, 55, 100, 4095] {
        let msgs = &buf[..len * 17 + 3];
        let want = reference(len, msgs);
        for &k in &kernels {
            check(k, len, msgs, &want);
        }
    }
    for &k in &kernels {
        check(k, 512, &[], &[]);
    }
}

/// [`shorter_last_message_and_odd_lengths`] (every kernel the CPU runs, full and short
/// groups, odd lengths) under `qemu-x86_64 -cpu MODEL` for each model: it passes there,
/// and it skips exactly the kernels the model lacks.
#[test]
fn each_emulated_cpu_runs_its_kernels() {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().expect("a UTF-8 test binary path");
    let args = [
        "--exact",
        "shorter_last_message_and_odd_lengths",
        "--nocapture",
    ];
    for m in &MODELS {
        let out = m.run(&[], exe, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ctx = format!(
            "-cpu {}:\n{stdout}{}",
            m.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{ctx}");
        for k in SHA256_KERNELS {
            let skipped = stdout.contains(&format!("sha256 kernel {k}: NOT RUN"));
            assert_eq!(skipped, !m.runs_sha256(k), "{k}, {ctx}");
        }
    }
}

#[test]
fn unknown_kernel_names_are_refused() {
    let err = Sha256Kernel::from_name("avx1024").unwrap_err();
    assert!(err.message().contains("avx1024") && err.message().contains("sha-ni-x2"));
    for k in Sha256Kernel::ALL {
        assert_eq!(Sha256Kernel::from_name(k.name()).unwrap(), k);
    }
}

/// Run by `env_var_forces_the_kernel` in a child process with the variable set; on its
/// own it checks that `digest_each` runs on the selected kernel's choice.
#[test]
fn env_child_reports_kernel() {
    let want = Sha256Kernel::selected().unwrap();
    assert_eq!(Sha256Kernel::in_use(), want);
    let msgs = data(40 * 512);
    let mut out = vec![0u8; 40 * 32];
    HashAlg::Sha256.digest_each(512, &msgs, &mut out);
    let mut again = vec![0u8; 40 * 32];
    want.digest_each(512, &msgs, &mut again);
    assert_eq!(out, again);
    println!("sha256 kernel in use: {want}");
}

#[test]
fn env_var_forces_the_kernel() {
    let run = |value: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child_reports_kernel", "--nocapture"])
            .env(KERNEL_ENV, value)
            .output()
            .unwrap()
    };
    for k in Sha256Kernel::ALL {
        let out = run(k.name());
        let stdout = String::from_utf8_lossy(&out.stdout);
        if k.available() {
            assert!(out.status.success(), "{k}: {stdout}");
            assert!(
                stdout.contains(&format!("sha256 kernel in use: {k}\n")),
                "{stdout}"
            );
        } else {
            println!("sha256 kernel {k}: NOT RUN by name (this CPU lacks its features)");
            assert!(!out.status.success(), "{k}: {stdout}");
        }
    }
    let out = run("");
    let best = Sha256Kernel::best();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("in use: {best}\n")));
}
