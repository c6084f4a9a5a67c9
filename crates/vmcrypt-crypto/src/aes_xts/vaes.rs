//! The VAES XTS kernels: two AES blocks per 256-bit register, one body built twice.
//!
//! * `vaes-avx512` (AVX-512F/VL/BW enabled): LLVM may use 32 vector registers (fewer
//!   spills of tweaks and round keys) and turns the three-way XORs into `vpternlogq`.
//! * `vaes-avx2` (AVX2 + VAES + VPCLMULQDQ only: Zen 3, Alder Lake and later client
//!   cores): 16 vector registers. No AVX-512 instruction is enabled anywhere in its
//!   call tree (see [`super::vaes_ops`]).
//!
//! The body is written once in the `build!` macro, which defines every function of it
//! with the build's feature list: a generic function shared by both builds would be
//! compiled for the narrower list whenever LLVM does not inline it. Both keep eight
//! registers (16 blocks) in flight.
//!
//! 256-bit rather than 512-bit registers in the AVX-512 build: on the Intel cores
//! measured, 512-bit `vaesenc` issues on one port while 256-bit `vaesenc` issues on two,
//! so both move four blocks per cycle, and 256-bit code avoids the AVX-512 clock
//! reduction of older Intel parts.
//!
//! Tweaks: for a sector with encrypted tweak T, the base registers b0..b3 hold
//! T*x^(2j), T*x^(2j+1) (one per 128-bit lane). Register 4k+j of a group is bj * x^(8k),
//! and the next group starts at bj * x^(2G) for G registers per group. Multiplying by
//! x^(8k) is a byte shift of each lane plus a carry-less multiplication of the k bytes
//! shifted out by 0x87 (the reduction x^128 = x^7 + x^2 + x + 1), which keeps the tweak
//! work on the shuffle port, away from the AES ports. The whitening XOR (block ^ tweak ^
//! round key 0) is one three-way XOR, and the final tweak XOR is folded into the last
//! round's key.
use super::HwKeys;
use super::vaes_ops::{
    Rk, broadcast, broadcast_keys, load, load_low, rounds, store, store128, xor3,
};
use core::arch::x86_64::*;

/// Sectors whose tweaks are encrypted together (2 per register).
const BATCH: usize = 16;
/// Registers per group (16 blocks) in both builds: measured on a Sapphire Rapids class
/// Xeon, 16 registers ran 20-30% slower than 8 in the AVX-512 build (the tweaks of a
/// group then no longer fit beside the blocks), and 8 keep two `vaesenc` per cycle
/// busy through a latency of 4 cycles.
const GROUP: usize = 8;

/// Whether this CPU can run the `vaes-avx512` kernel.
pub(crate) fn available_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && available_avx2()
}

/// Whether this CPU can run the `vaes-avx2` kernel.
pub(crate) fn available_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("vpclmulqdq")
        && is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("pclmulqdq")
}

/// XTS-encrypt or -decrypt `data` in place (see `AesXts::encrypt_sectors`) on the
/// AVX-512 (`wide`) or the AVX2 build. `sector_size` is a non-zero multiple of 16 and
/// `data.len()` a multiple of it.
///
/// # Safety
/// The CPU must support the features [`available_avx512`] (`wide`) or
/// [`available_avx2`] (not `wide`) checks.
pub(crate) unsafe fn crypt(
    keys: &HwKeys,
    wide: bool,
    decrypt: bool,
    first: u64,
    step: u64,
    sector_size: usize,
    data: &mut [u8],
) {
    let args = (keys, first, step, sector_size, data);
    macro_rules! pick {
        ($nr:literal, $dec:literal) => {
            if wide {
                avx512::kernel::<$nr, $dec>(args)
            } else {
                avx2::kernel::<$nr, $dec>(args)
            }
        };
    }
    // SAFETY (all arms): the caller guarantees the target features of the kernel `wide`
    // selects.
    unsafe {
        match (keys.data.rounds, decrypt) {
            (10, false) => pick!(10, false),
            (10, true) => pick!(10, true),
            (12, false) => pick!(12, false),
            (12, true) => pick!(12, true),
            (14, false) => pick!(14, false),
            (14, true) => pick!(14, true),
            (r, _) => unreachable!("AES with {r} rounds"),
        }
    }
}

/// The arguments of [`crypt`] after the kernel choice.
type Args<'a> = (&'a HwKeys, u64, u64, usize, &'a mut [u8]);

/// Defines module `$name` holding the kernel's body compiled with `$features` (every
/// function of it, so that none falls back to a narrower feature set when LLVM chooses
/// not to inline it); the small leaf helpers it calls enable AVX2 features only.
macro_rules! build {
    ($name:ident, $features:literal) => {
        mod $name {
            use super::*;

            /// XTS on `chunk` (exactly N registers = 32*N bytes) with tweaks `tw`.
            #[inline]
            #[target_feature(enable = $features)]
            fn crypt_regs<const NR: usize, const DEC: bool, const N: usize>(
                rk: &Rk,
                tw: &[__m256i; N],
                chunk: &mut [u8],
            ) {
                assert_eq!(chunk.len(), 32 * N);
                let mut x = [_mm256_setzero_si256(); N];
                let mut last = [_mm256_setzero_si256(); N];
                for i in 0..N {
                    x[i] = xor3(load(chunk, 32 * i), tw[i], rk[0]);
                    last[i] = _mm256_xor_si256(tw[i], rk[NR]);
                }
                rounds::<NR, DEC, N>(rk, &mut x, &last);
                for (i, v) in x.iter().enumerate() {
                    store(chunk, 32 * i, *v);
                }
            }

            /// XTS on the last block of a sector (`tail.len()` is 16) with tweak lane 0
            /// of `tw`.
            #[inline]
            #[target_feature(enable = $features)]
            fn crypt_tail<const NR: usize, const DEC: bool>(rk: &Rk, tw: __m256i, tail: &mut [u8]) {
                let mut x = [xor3(load_low(tail, 0), tw, rk[0])];
                rounds::<NR, DEC, 1>(rk, &mut x, &[_mm256_xor_si256(tw, rk[NR])]);
                store128(tail, 0, _mm256_castsi256_si128(x[0]));
            }

            /// XTS on one sector whose encrypted tweak is `t`, G registers per group
            /// (G = 4k).
            #[inline]
            #[target_feature(enable = $features)]
            fn crypt_sector<const NR: usize, const DEC: bool, const G: usize>(
                rk: &Rk,
                t: &[u8; 16],
                sector: &mut [u8],
            ) {
                let t = broadcast(t);
                // Index of the first register-sized chunk after the last whole group.
                let n = sector.len() / 32 % G;
                let mut b = [
                    mul_x_lanes(t, 0),
                    mul_x_lanes(t, 2),
                    mul_x_lanes(t, 4),
                    mul_x_lanes(t, 6),
                ];
                let mut groups = sector.chunks_exact_mut(32 * G);
                for group in &mut groups {
                    let tw: [__m256i; G] = core::array::from_fn(|i| mul_x8(b[i % 4], i / 4));
                    crypt_regs::<NR, DEC, G>(rk, &tw, group);
                    b = b.map(|v| mul_x8(v, G / 4));
                }
                // Fewer than 2G blocks left: one register (2 blocks) at a time, then
                // maybe one block.
                let mut regs = groups.into_remainder().chunks_exact_mut(32);
                for (i, reg) in (&mut regs).enumerate() {
                    let j = i % 4;
                    crypt_regs::<NR, DEC, 1>(rk, &[b[j]], reg);
                    if j == 3 {
                        b = b.map(|v| mul_x8(v, 1));
                    }
                }
                let tail = regs.into_remainder();
                if !tail.is_empty() {
                    crypt_tail::<NR, DEC>(rk, b[n % 4], tail);
                }
            }

            /// Encrypt the tweaks le128(`first` + i * `step`) of `n` (<= BATCH) sectors
            /// into `out` with the tweak key; returns the tweak number following the
            /// last one.
            #[inline]
            #[target_feature(enable = $features)]
            fn encrypt_tweaks<const NR: usize>(
                tk: &Rk,
                first: u64,
                step: u64,
                out: &mut [[u8; 16]; BATCH],
                n: usize,
            ) -> u64 {
                let mut no = first;
                let mut next = || {
                    let v = no as i64;
                    no = no.wrapping_add(step);
                    v
                };
                const REGS: usize = BATCH / 2;
                let mut x = [_mm256_setzero_si256(); REGS];
                for v in x.iter_mut().take(n.div_ceil(2)) {
                    let (a, b) = (next(), next());
                    *v = _mm256_xor_si256(_mm256_set_epi64x(0, b, 0, a), tk[0]);
                }
                let last = [tk[NR]; REGS];
                // Only as many registers as needed: a single-sector call costs one AES,
                // not eight.
                match n.div_ceil(2) {
                    1 => rounds::<NR, false, 1>(
                        tk,
                        (&mut x[..1]).try_into().expect("1"),
                        (&last[..1]).try_into().expect("1"),
                    ),
                    2 => rounds::<NR, false, 2>(
                        tk,
                        (&mut x[..2]).try_into().expect("2"),
                        (&last[..2]).try_into().expect("2"),
                    ),
                    3 | 4 => rounds::<NR, false, 4>(
                        tk,
                        (&mut x[..4]).try_into().expect("4"),
                        (&last[..4]).try_into().expect("4"),
                    ),
                    _ => rounds::<NR, false, REGS>(tk, &mut x, &last),
                }
                let bytes = out.as_flattened_mut();
                for (i, v) in x.iter().enumerate() {
                    store(bytes, 32 * i, *v);
                }
                first.wrapping_add(step.wrapping_mul(n as u64))
            }

            /// The kernel: tweaks of BATCH sectors at a time, then their sectors.
            #[target_feature(enable = $features)]
            pub(super) fn kernel<const NR: usize, const DEC: bool>(
                (keys, first, step, sector_size, data): Args<'_>,
            ) {
                let rk = if DEC { &keys.data.dec } else { &keys.data.enc };
                let rk = broadcast_keys::<NR>(rk);
                let tk = broadcast_keys::<NR>(&keys.tweak.enc);
                let mut tweaks = [[0u8; 16]; BATCH];
                let mut no = first;
                for batch in data.chunks_mut(sector_size * BATCH) {
                    let n = batch.len() / sector_size;
                    no = encrypt_tweaks::<NR>(&tk, no, step, &mut tweaks, n);
                    for (sector, t) in batch.chunks_exact_mut(sector_size).zip(&tweaks) {
                        crypt_sector::<NR, DEC, GROUP>(&rk, t, sector);
                    }
                }
            }
        }
    };
}

build!(
    avx512,
    "avx2,avx512f,avx512vl,avx512bw,vaes,vpclmulqdq,aes,pclmulqdq"
);
// The AVX2 build: keep this feature list free of AVX-512 (it must run on Zen 3).
build!(avx2, "avx2,vaes,vpclmulqdq,aes,pclmulqdq");

/// The reduction constant 0x87 in the low qword of each lane.
#[inline]
#[target_feature(enable = "avx2")]
fn poly() -> __m256i {
    _mm256_set_epi64x(0, 0x87, 0, 0x87)
}

/// Multiply each lane by x^(8K) (R = 16 - K, 1 <= K <= 7).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_x8k<const K: i32, const R: i32>(t: __m256i) -> __m256i {
    let out = _mm256_bsrli_epi128::<R>(t);
    _mm256_xor_si256(
        _mm256_bslli_epi128::<K>(t),
        _mm256_clmulepi64_epi128::<0x00>(out, poly()),
    )
}

/// Multiply each lane by x^(8k), 0 <= k <= 4 (k is a constant after inlining).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_x8(t: __m256i, k: usize) -> __m256i {
    match k {
        0 => t,
        1 => mul_x8k::<1, 15>(t),
        2 => mul_x8k::<2, 14>(t),
        3 => mul_x8k::<3, 13>(t),
        4 => mul_x8k::<4, 12>(t),
        _ => unreachable!("tweak step x^(8*{k})"),
    }
}

/// Lane i of `t` (both lanes equal) times x^(c+i), i = 0, 1, c <= 6.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_x_lanes(t: __m256i, c: i64) -> __m256i {
    let cnt = _mm256_set_epi64x(c + 1, c + 1, c, c);
    let inv = _mm256_sub_epi64(_mm256_set1_epi64x(64), cnt);
    let shifted = _mm256_sllv_epi64(t, cnt);
    // Bits shifted out of each qword (a count of 64 gives 0).
    let carry = _mm256_srlv_epi64(t, inv);
    xor3(
        shifted,
        _mm256_bslli_epi128::<8>(carry),
        _mm256_clmulepi64_epi128::<0x01>(carry, poly()),
    )
}
