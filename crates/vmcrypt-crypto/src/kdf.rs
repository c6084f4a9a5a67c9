//! PBKDF2 (RFC 8018) over every [`HashAlg`], and timing-based iteration calibration.
//!
//! The HMAC state is keyed once and cloned per iteration (the `pbkdf2`/`hmac` crates do
//! this), so one iteration costs two compression-function calls. The truncated Whirlpool
//! variants (wp256, wp384) run HMAC over the truncated digest, as the kernel's
//! `hmac(wp256)` does, through a small PBKDF2 of our own with the same keyed-state reuse.
use crate::HashAlg;
use sha2::Digest;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Derive `out.len()` bytes with PBKDF2-HMAC-`hash`. `iterations == 0` is treated as 1.
pub fn pbkdf2(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    use pbkdf2::pbkdf2_hmac;
    let rounds = iterations.max(1);
    match hash {
        HashAlg::Md5 => pbkdf2_hmac::<md5::Md5>(password, salt, rounds, out),
        HashAlg::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
        HashAlg::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
        HashAlg::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
        HashAlg::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
        HashAlg::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
        HashAlg::Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, rounds, out),
        HashAlg::Sm3 => pbkdf2_hmac::<sm3::Sm3>(password, salt, rounds, out),
        HashAlg::Whirlpool | HashAlg::Wp512 => {
            pbkdf2_hmac::<whirlpool::Whirlpool>(password, salt, rounds, out)
        }
        HashAlg::Wp256 | HashAlg::Wp384 => {
            pbkdf2_truncated_whirlpool(hash.output_len(), password, salt, rounds, out)
        }
    }
}

/// Whirlpool's input block size in bytes (the HMAC key block).
const WHIRLPOOL_BLOCK: usize = 64;

/// HMAC-Whirlpool-truncated-to-`t`-bytes with the inner and outer states keyed once.
struct TruncatedHmac {
    inner: whirlpool::Whirlpool,
    outer: whirlpool::Whirlpool,
    t: usize,
}

impl TruncatedHmac {
    fn new(t: usize, key: &[u8]) -> Self {
        let mut block = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
        if key.len() > WHIRLPOOL_BLOCK {
            let mut h = whirlpool::Whirlpool::new();
            h.update(key);
            let mut digest = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
            finalize_into(h, &mut digest);
            block[..t].copy_from_slice(&digest[..t]);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pad = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
        let mut keyed = |xor: u8| {
            for (p, k) in pad.iter_mut().zip(block.iter()) {
                *p = k ^ xor;
            }
            let mut h = whirlpool::Whirlpool::new();
            h.update(&pad[..]);
            h
        };
        let (inner, outer) = (keyed(0x36), keyed(0x5c));
        TruncatedHmac { inner, outer, t }
    }

    /// The `t`-byte MAC of the concatenation of `parts`, written to `out[..t]`.
    fn mac(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut h = self.inner.clone();
        for p in parts {
            h.update(p);
        }
        let mut digest = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
        finalize_into(h, &mut digest);
        let mut h = self.outer.clone();
        h.update(&digest[..self.t]);
        finalize_into(h, &mut digest);
        out[..self.t].copy_from_slice(&digest[..self.t]);
    }
}

/// Finish `h` straight into `out` (no unwiped temporary digest).
fn finalize_into(h: whirlpool::Whirlpool, out: &mut [u8; WHIRLPOOL_BLOCK]) {
    use sha2::digest::generic_array::GenericArray;
    Digest::finalize_into(h, GenericArray::from_mut_slice(&mut out[..]));
}

/// PBKDF2 (RFC 8018) with HMAC over Whirlpool truncated to `t` bytes.
fn pbkdf2_truncated_whirlpool(t: usize, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
    let prf = TruncatedHmac::new(t, password);
    let mut u = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
    let mut acc = Zeroizing::new([0u8; WHIRLPOOL_BLOCK]);
    for (index, chunk) in out.chunks_mut(t).enumerate() {
        let block_no = (index as u32).wrapping_add(1).to_be_bytes();
        prf.mac(&[salt, &block_no], &mut u[..]);
        acc[..t].copy_from_slice(&u[..t]);
        for _ in 1..rounds {
            let prev = Zeroizing::new(*u);
            prf.mac(&[&prev[..t]], &mut u[..]);
            for (a, b) in acc[..t].iter_mut().zip(&u[..t]) {
                *a ^= b;
            }
        }
        chunk.copy_from_slice(&acc[..chunk.len()]);
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
    fn truncated_pbkdf2_at_full_length_equals_whirlpool_pbkdf2() {
        // Our own PBKDF2/HMAC with t = 64 must equal the pbkdf2 crate's HMAC-Whirlpool;
        // this checks the construction that wp256/wp384 share (key longer than a block
        // included).
        let long_pass = [0x42u8; 100];
        for pass in [&b"pass"[..], &long_pass] {
            for len in [20, 64, 130] {
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                pbkdf2(HashAlg::Whirlpool, pass, b"salt", 5, &mut a);
                pbkdf2_truncated_whirlpool(64, pass, b"salt", 5, &mut b);
                assert_eq!(a, b, "len {len}");
            }
        }
    }

    #[test]
    fn zero_iterations_equal_one() {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        pbkdf2(HashAlg::Sha1, b"p", b"s", 0, &mut a);
        pbkdf2(HashAlg::Sha1, b"p", b"s", 1, &mut b);
        assert_eq!(a, b);
    }
}
