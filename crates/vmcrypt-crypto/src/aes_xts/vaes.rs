//! The VAES XTS kernel (x86_64 with VAES, VPCLMULQDQ, AVX-512VL/BW): two AES blocks per
//! 256-bit register, sixteen registers (one 512-byte group) in flight.
//!
//! 256-bit rather than 512-bit registers: on the Intel cores measured, 512-bit `vaesenc`
//! issues on one port while 256-bit `vaesenc` issues on two, so both move four blocks
//! per cycle, and 256-bit code avoids the AVX-512 clock reduction of older Intel parts.
//! The AVX-512VL instructions used on 256-bit registers (three-way XOR, masked loads)
//! are "light" ones.
//!
//! Tweaks: for a sector with encrypted tweak T, the base registers b0..b3 hold
//! T*x^(2j), T*x^(2j+1) (one per 128-bit lane). Register 4k+j of a group is bj * x^(8k),
//! and the next group starts at bj * x^32. Multiplying by x^(8k) is a byte shift of each
//! lane plus a carry-less multiplication of the k bytes shifted out by 0x87 (the
//! reduction x^128 = x^7 + x^2 + x + 1), which keeps the tweak work on the shuffle port,
//! away from the two AES ports. The whitening XOR (block ^ tweak ^ round key 0) is one
//! three-way XOR, and the final tweak XOR is folded into the last round's key.
use super::HwKeys;
use super::keysched::MAX_ROUNDS;
use core::arch::x86_64::*;

/// Sectors whose tweaks are encrypted together (2 per register).
const BATCH: usize = 16;
/// Registers per group (16 registers = 32 blocks = 512 bytes).
const GROUP: usize = 16;

/// Round keys broadcast to both lanes.
type Rk = [__m256i; MAX_ROUNDS + 1];

/// Whether this CPU has every feature the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("vpclmulqdq")
        && is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("avx2")
}

/// XTS-encrypt or -decrypt `data` in place (see `AesXts::encrypt_sectors`).
/// `sector_size` is a non-zero multiple of 16 and `data.len()` a multiple of it.
///
/// # Safety
/// The CPU must support the features [`available`] checks.
pub(crate) unsafe fn crypt(
    keys: &HwKeys,
    decrypt: bool,
    first: u64,
    step: u64,
    sector_size: usize,
    data: &mut [u8],
) {
    // SAFETY (all arms): the caller guarantees the target features of `kernel`.
    unsafe {
        match (keys.data.rounds, decrypt) {
            (10, false) => kernel::<10, false>(keys, first, step, sector_size, data),
            (10, true) => kernel::<10, true>(keys, first, step, sector_size, data),
            (12, false) => kernel::<12, false>(keys, first, step, sector_size, data),
            (12, true) => kernel::<12, true>(keys, first, step, sector_size, data),
            (14, false) => kernel::<14, false>(keys, first, step, sector_size, data),
            (14, true) => kernel::<14, true>(keys, first, step, sector_size, data),
            (r, _) => unreachable!("AES with {r} rounds"),
        }
    }
}

/// A 16-byte value (round key or tweak) broadcast to both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn broadcast(bytes: &[u8; 16]) -> __m256i {
    let lo = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    _mm256_broadcastsi128_si256(_mm_set_epi64x(hi as i64, lo as i64))
}

#[inline]
#[target_feature(enable = "avx2")]
fn broadcast_keys<const NR: usize>(keys: &[[u8; 16]; MAX_ROUNDS + 1]) -> Rk {
    let mut rk = [_mm256_setzero_si256(); MAX_ROUNDS + 1];
    for (r, k) in rk.iter_mut().zip(keys).take(NR + 1) {
        *r = broadcast(k);
    }
    rk
}

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

/// Lane i of `t` (both lanes equal) times x^(c+i), i = 0, 1, c <= 6.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,vpclmulqdq")]
fn mul_x_lanes(t: __m256i, c: i64) -> __m256i {
    let cnt = _mm256_set_epi64x(c + 1, c + 1, c, c);
    let inv = _mm256_sub_epi64(_mm256_set1_epi64x(64), cnt);
    let shifted = _mm256_sllv_epi64(t, cnt);
    // Bits shifted out of each qword (a count of 64 gives 0).
    let carry = _mm256_srlv_epi64(t, inv);
    _mm256_ternarylogic_epi64::<0x96>(
        shifted,
        _mm256_bslli_epi128::<8>(carry),
        _mm256_clmulepi64_epi128::<0x01>(carry, poly()),
    )
}

/// AES rounds 1..=NR on `x` (round 0 already applied), the last with per-register keys.
#[inline]
#[target_feature(enable = "avx2,vaes")]
fn rounds<const NR: usize, const DEC: bool, const N: usize>(
    rk: &Rk,
    x: &mut [__m256i; N],
    last: &[__m256i; N],
) {
    // An opaque round count keeps this a loop: fully unrolled, LLVM's scheduler reorders
    // the rounds into one dependent chain per register, which halves the throughput.
    let nr = core::hint::black_box(NR);
    for k in &rk[1..nr] {
        for v in x.iter_mut() {
            *v = if DEC {
                _mm256_aesdec_epi128(*v, *k)
            } else {
                _mm256_aesenc_epi128(*v, *k)
            };
        }
    }
    for (v, k) in x.iter_mut().zip(last) {
        *v = if DEC {
            _mm256_aesdeclast_epi128(*v, *k)
        } else {
            _mm256_aesenclast_epi128(*v, *k)
        };
    }
}

/// XTS on `chunk` (exactly N registers = 32*N bytes) with tweaks `tw`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,vaes")]
fn crypt_regs<const NR: usize, const DEC: bool, const N: usize>(
    rk: &Rk,
    tw: &[__m256i; N],
    chunk: &mut [u8],
) {
    assert_eq!(chunk.len(), 32 * N);
    let p = chunk.as_mut_ptr();
    let mut x = [_mm256_setzero_si256(); N];
    let mut last = [_mm256_setzero_si256(); N];
    for i in 0..N {
        // SAFETY: chunk.len() == 32 * N, so bytes 32i..32i+32 are in bounds; loadu has
        // no alignment requirement; avx2 is enabled for this function.
        let d = unsafe { _mm256_loadu_si256(p.add(32 * i).cast()) };
        x[i] = _mm256_ternarylogic_epi64::<0x96>(d, tw[i], rk[0]);
        last[i] = _mm256_xor_si256(tw[i], rk[NR]);
    }
    rounds::<NR, DEC, N>(rk, &mut x, &last);
    for (i, v) in x.iter().enumerate() {
        // SAFETY: as for the load above.
        unsafe { _mm256_storeu_si256(p.add(32 * i).cast(), *v) };
    }
}

/// XTS on the last block of a sector (`tail.len()` is 16) with tweak lane 0 of `tw`,
/// using a masked load and store.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,vaes")]
fn crypt_tail<const NR: usize, const DEC: bool>(rk: &Rk, tw: __m256i, tail: &mut [u8]) {
    assert!(tail.len() < 32);
    let mask = (1u32 << tail.len()) - 1;
    let p = tail.as_mut_ptr();
    // SAFETY: the mask enables exactly bytes 0..tail.len(), which are in bounds; AVX-512
    // masked loads do not access (or fault on) masked-off bytes; avx512bw+vl are enabled.
    let d = unsafe { _mm256_maskz_loadu_epi8(mask, p.cast()) };
    let mut x = [_mm256_ternarylogic_epi64::<0x96>(d, tw, rk[0])];
    rounds::<NR, DEC, 1>(rk, &mut x, &[_mm256_xor_si256(tw, rk[NR])]);
    // SAFETY: as for the masked load.
    unsafe { _mm256_mask_storeu_epi8(p.cast(), mask, x[0]) };
}

/// XTS on one sector whose encrypted tweak is `t`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,vaes,vpclmulqdq")]
fn crypt_sector<const NR: usize, const DEC: bool>(rk: &Rk, t: &[u8; 16], sector: &mut [u8]) {
    let t = broadcast(t);
    // Index of the first register-sized chunk after the last whole group.
    let n = sector.len() / 32 % GROUP;
    let mut b = [
        mul_x_lanes(t, 0),
        mul_x_lanes(t, 2),
        mul_x_lanes(t, 4),
        mul_x_lanes(t, 6),
    ];
    let mut groups = sector.chunks_exact_mut(32 * GROUP);
    for group in &mut groups {
        let mut tw = [_mm256_setzero_si256(); GROUP];
        for j in 0..4 {
            tw[j] = b[j];
            tw[4 + j] = mul_x8k::<1, 15>(b[j]);
            tw[8 + j] = mul_x8k::<2, 14>(b[j]);
            tw[12 + j] = mul_x8k::<3, 13>(b[j]);
        }
        crypt_regs::<NR, DEC, GROUP>(rk, &tw, group);
        b = b.map(|v| mul_x8k::<4, 12>(v));
    }
    // Fewer than 32 blocks left: one register (2 blocks) at a time, then maybe one block.
    let mut regs = groups.into_remainder().chunks_exact_mut(32);
    for (i, reg) in (&mut regs).enumerate() {
        let j = i % 4;
        crypt_regs::<NR, DEC, 1>(rk, &[b[j]], reg);
        if j == 3 {
            b = b.map(|v| mul_x8k::<1, 15>(v));
        }
    }
    let tail = regs.into_remainder();
    if !tail.is_empty() {
        crypt_tail::<NR, DEC>(rk, b[n % 4], tail);
    }
}

/// Encrypt the tweaks le128(`first` + i * `step`) of `n` (<= BATCH) sectors into `out`
/// with the tweak key; returns the tweak number following the last one.
#[inline]
#[target_feature(enable = "avx2,vaes")]
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
    // Only as many registers as needed: a single-sector call costs one AES, not eight.
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
    let p = out.as_mut_ptr().cast::<u8>();
    for (i, v) in x.iter().enumerate() {
        // SAFETY: `out` is BATCH * 16 = REGS * 32 contiguous bytes and i < REGS, so
        // bytes 32i..32i+32 are in bounds; storeu needs no alignment.
        unsafe { _mm256_storeu_si256(p.add(32 * i).cast(), *v) };
    }
    first.wrapping_add(step.wrapping_mul(n as u64))
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,vaes,vpclmulqdq,aes")]
fn kernel<const NR: usize, const DEC: bool>(
    keys: &HwKeys,
    first: u64,
    step: u64,
    sector_size: usize,
    data: &mut [u8],
) {
    let rk = broadcast_keys::<NR>(if DEC { &keys.data.dec } else { &keys.data.enc });
    let tk = broadcast_keys::<NR>(&keys.tweak.enc);
    let mut tweaks = [[0u8; 16]; BATCH];
    let mut no = first;
    for batch in data.chunks_mut(sector_size * BATCH) {
        let n = batch.len() / sector_size;
        no = encrypt_tweaks::<NR>(&tk, no, step, &mut tweaks, n);
        for (sector, t) in batch.chunks_exact_mut(sector_size).zip(&tweaks) {
            crypt_sector::<NR, DEC>(&rk, t, sector);
        }
    }
}
