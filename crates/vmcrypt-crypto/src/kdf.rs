//! PBKDF2 (RFC 8018) over every [`HashAlg`], and timing-based iteration calibration.
use crate::HashAlg;
use std::time::Duration;

/// Derive `out.len()` bytes with PBKDF2-HMAC-`hash`.
pub fn pbkdf2(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    todo!("{hash:?} {} {} {iterations} {}", password.len(), salt.len(), out.len())
}

/// Measure PBKDF2-`hash` iterations per second for a `key_len`-byte output (as cryptsetup
/// benchmarks it: runs for roughly `budget`).
pub fn pbkdf2_iterations_per_second(hash: HashAlg, key_len: usize, budget: Duration) -> u64 {
    todo!("{hash:?} {key_len} {budget:?}")
}
