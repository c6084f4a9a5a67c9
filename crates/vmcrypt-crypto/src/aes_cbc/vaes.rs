//! CBC decryption on VAES: two blocks per 256-bit register, eight registers in flight.
//! The XOR with the previous ciphertext block is folded into the last round's key
//! (`aesdeclast(x, k ^ c) = aesdeclast(x, k) ^ c`); the previous blocks of a register are
//! one unaligned load 16 bytes before it, read before anything of the group is stored,
//! so decryption in place is safe. Built twice like the XTS kernel
//! ([`crate::aes_xts`]'s `vaes` module): with AVX-512 enabled and with AVX2 only, the
//! body written once in the `build!` macro.
use crate::aes_xts::keysched::RoundKeys;
use crate::aes_xts::vaes_ops::{
    Rk, broadcast_keys, load, load_low, load128, rounds, store, store128,
};
use core::arch::x86_64::*;

/// Registers per group (16 blocks).
const GROUP: usize = 8;

/// CBC-decrypt `data` in place, sector k with the IV `ivs[16k..16k + 16]`, on the
/// AVX-512 (`wide`) or the AVX2 build. `sector_size` is a non-zero multiple of 16,
/// `data.len()` a multiple of it and `ivs` 16 bytes per sector.
///
/// # Safety
/// The CPU must support the features `aes_xts::vaes::available_avx512` (`wide`) or
/// `available_avx2` (not `wide`) check.
pub(crate) unsafe fn decrypt(
    keys: &RoundKeys,
    wide: bool,
    ivs: &[u8],
    sector_size: usize,
    data: &mut [u8],
) {
    let args = (keys, ivs, sector_size, data);
    macro_rules! pick {
        ($nr:literal) => {
            if wide {
                avx512::kernel::<$nr>(args)
            } else {
                avx2::kernel::<$nr>(args)
            }
        };
    }
    // SAFETY (all arms): the caller guarantees the target features of the kernel `wide`
    // selects.
    unsafe {
        match keys.rounds {
            10 => pick!(10),
            12 => pick!(12),
            14 => pick!(14),
            r => unreachable!("AES with {r} rounds"),
        }
    }
}

/// The arguments of [`decrypt`] after the kernel choice.
type Args<'a> = (&'a RoundKeys, &'a [u8], usize, &'a mut [u8]);

/// Defines module `$name` holding the kernel compiled with `$features` (every function,
/// as in the XTS kernel's `build!`).
macro_rules! build {
    ($name:ident, $features:literal) => {
        mod $name {
            use super::*;

            /// Decrypt `chunk` (N registers) whose preceding ciphertext block is `chain`; returns
            /// the chunk's last ciphertext block.
            #[inline]
            #[target_feature(enable = $features)]
            fn decrypt_regs<const NR: usize, const N: usize>(
                rk: &Rk,
                chain: __m128i,
                chunk: &mut [u8],
            ) -> __m128i {
                assert_eq!(chunk.len(), 32 * N);
                let mut x = [_mm256_setzero_si256(); N];
                let mut last = [_mm256_setzero_si256(); N];
                for i in 0..N {
                    x[i] = _mm256_xor_si256(load(chunk, 32 * i), rk[0]);
                    let prev = if i == 0 {
                        _mm256_set_m128i(load128(chunk, 0), chain)
                    } else {
                        load(chunk, 32 * i - 16)
                    };
                    last[i] = _mm256_xor_si256(prev, rk[NR]);
                }
                let next = load128(chunk, 32 * N - 16);
                rounds::<NR, true, N>(rk, &mut x, &last);
                for (i, v) in x.iter().enumerate() {
                    store(chunk, 32 * i, *v);
                }
                next
            }

            /// CBC-decrypt one sector whose IV is `iv`.
            #[inline]
            #[target_feature(enable = $features)]
            fn decrypt_sector<const NR: usize>(rk: &Rk, iv: __m128i, sector: &mut [u8]) {
                let mut chain = iv;
                let mut groups = sector.chunks_exact_mut(32 * GROUP);
                for group in &mut groups {
                    chain = decrypt_regs::<NR, GROUP>(rk, chain, group);
                }
                let mut regs = groups.into_remainder().chunks_exact_mut(32);
                for reg in &mut regs {
                    chain = decrypt_regs::<NR, 1>(rk, chain, reg);
                }
                let tail = regs.into_remainder();
                if !tail.is_empty() {
                    let mut x = [_mm256_xor_si256(load_low(tail, 0), rk[0])];
                    let last = [_mm256_xor_si256(_mm256_zextsi128_si256(chain), rk[NR])];
                    rounds::<NR, true, 1>(rk, &mut x, &last);
                    store128(tail, 0, _mm256_castsi256_si128(x[0]));
                }
            }

            /// The kernel: sector by sector.
            #[target_feature(enable = $features)]
            pub(super) fn kernel<const NR: usize>((keys, ivs, sector_size, data): Args<'_>) {
                let rk = broadcast_keys::<NR>(&keys.dec);
                for (sector, iv) in data.chunks_exact_mut(sector_size).zip(ivs.chunks_exact(16)) {
                    decrypt_sector::<NR>(&rk, load128(iv, 0), sector);
                }
            }
        }
    };
}

build!(avx512, "avx2,avx512f,avx512vl,avx512bw,vaes,aes");
// The AVX2 build: keep this feature list free of AVX-512 (it must run on Zen 3).
build!(avx2, "avx2,vaes,aes");
