//! CBC decryption on AES-NI (128-bit registers): eight blocks in flight, the XOR with
//! the previous ciphertext block folded into the last round's key, every ciphertext
//! block of a group read before any of it is overwritten.
use crate::aes_xts::aesni::{Rk, from_bytes, rounds};
use crate::aes_xts::keysched::RoundKeys;
use crate::aes_xts::vaes_ops::{load128, store128};
use core::arch::x86_64::*;

/// Blocks per group.
const GROUP: usize = 8;

/// CBC-decrypt `data` in place, sector k with the IV `ivs[16k..16k + 16]`.
/// `sector_size` is a non-zero multiple of 16, `data.len()` a multiple of it and `ivs`
/// 16 bytes per sector.
///
/// # Safety
/// The CPU must support AES-NI.
pub(crate) unsafe fn decrypt(keys: &RoundKeys, ivs: &[u8], sector_size: usize, data: &mut [u8]) {
    // SAFETY (all arms): the caller guarantees AES-NI, the only feature `kernel` enables
    // beyond the x86_64 baseline.
    unsafe {
        match keys.rounds {
            10 => kernel::<10>(keys, ivs, sector_size, data),
            12 => kernel::<12>(keys, ivs, sector_size, data),
            14 => kernel::<14>(keys, ivs, sector_size, data),
            r => unreachable!("AES with {r} rounds"),
        }
    }
}

/// Decrypt `chunk` (N blocks) whose preceding ciphertext block is `chain`; returns the
/// chunk's last ciphertext block.
#[inline]
#[target_feature(enable = "sse2,aes")]
fn decrypt_blocks<const NR: usize, const N: usize>(
    rk: &Rk,
    chain: __m128i,
    chunk: &mut [u8],
) -> __m128i {
    assert_eq!(chunk.len(), 16 * N);
    let mut x = [_mm_setzero_si128(); N];
    let mut last = [_mm_setzero_si128(); N];
    let mut prev = chain;
    for i in 0..N {
        let c = load128(chunk, 16 * i);
        x[i] = _mm_xor_si128(c, rk[0]);
        last[i] = _mm_xor_si128(prev, rk[NR]);
        prev = c;
    }
    rounds::<NR, true, N>(rk, &mut x, &last);
    for (i, v) in x.iter().enumerate() {
        store128(chunk, 16 * i, *v);
    }
    prev
}

#[target_feature(enable = "sse2,aes")]
fn kernel<const NR: usize>(keys: &RoundKeys, ivs: &[u8], sector_size: usize, data: &mut [u8]) {
    let rk: Rk = core::array::from_fn(|r| from_bytes(&keys.dec[r]));
    for (sector, iv) in data.chunks_exact_mut(sector_size).zip(ivs.chunks_exact(16)) {
        let mut chain = load128(iv, 0);
        let mut groups = sector.chunks_exact_mut(16 * GROUP);
        for group in &mut groups {
            chain = decrypt_blocks::<NR, GROUP>(&rk, chain, group);
        }
        for block in groups.into_remainder().chunks_exact_mut(16) {
            chain = decrypt_blocks::<NR, 1>(&rk, chain, block);
        }
    }
}
