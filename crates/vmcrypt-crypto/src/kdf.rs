//! PBKDF2 (RFC 8018) over every [`HashAlg`], and timing-based iteration calibration.
//!
//! The HMAC state is keyed once and cloned per iteration (the `pbkdf2`/`hmac` crates do
//! this), so one iteration costs two compression-function calls.
use crate::HashAlg;
use std::time::{Duration, Instant};

/// Derive `out.len()` bytes with PBKDF2-HMAC-`hash`. `iterations == 0` is treated as 1.
pub fn pbkdf2(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    use pbkdf2::pbkdf2_hmac;
    let rounds = iterations.max(1);
    match hash {
        HashAlg::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
        HashAlg::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
        HashAlg::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
        HashAlg::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
        HashAlg::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
        HashAlg::Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, rounds, out),
        HashAlg::Whirlpool => pbkdf2_hmac::<whirlpool::Whirlpool>(password, salt, rounds, out),
    }
}

/// The shortest run that counts as a measurement (timer resolution and noise).
const MIN_SAMPLE: Duration = Duration::from_millis(20);

/// Measure PBKDF2-`hash` iterations per second for a `key_len`-byte output (as cryptsetup
/// benchmarks it: runs for roughly `budget`).
///
/// Runs with doubling iteration counts until one run takes at least half of `budget`
/// (and at least 20 ms), then extrapolates from that run. The result is at least 1.
pub fn pbkdf2_iterations_per_second(hash: HashAlg, key_len: usize, budget: Duration) -> u64 {
    let target = (budget / 2).max(MIN_SAMPLE);
    let password = b"vmcrypt benchmark passphrase";
    let salt = [0x5au8; 32];
    let mut out = zeroize::Zeroizing::new(vec![0u8; key_len.max(1)]);
    let mut iterations: u32 = 1000;
    loop {
        let start = Instant::now();
        pbkdf2(hash, password, &salt, iterations, &mut out);
        let elapsed = start.elapsed();
        if elapsed >= target || iterations == u32::MAX {
            let per_sec = f64::from(iterations) / elapsed.as_secs_f64().max(1e-9);
            return (per_sec as u64).max(1);
        }
        iterations = iterations.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_is_plausible() {
        let ips = pbkdf2_iterations_per_second(HashAlg::Sha256, 32, Duration::from_millis(60));
        // Any machine does more than 10k and (today) fewer than 100M iterations a second.
        assert!((10_000..100_000_000).contains(&ips), "{ips}");
    }

    #[test]
    fn zero_iterations_equal_one() {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        pbkdf2(HashAlg::Sha1, b"p", b"s", 0, &mut a);
        pbkdf2(HashAlg::Sha1, b"p", b"s", 1, &mut b);
        assert_eq!(a, b);
    }
}
