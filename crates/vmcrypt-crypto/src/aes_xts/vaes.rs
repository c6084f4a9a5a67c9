//! The VAES + AVX-512 XTS kernel (x86_64): four AES blocks per 512-bit register, eight
//! registers (one 512-byte group) in flight.
//!
//! Tweaks: for a sector with encrypted tweak T, register pair (lo, hi) holds
//! T*x^0..3 and T*x^4..7, one per 128-bit lane. Later registers of a group are
//! lo/hi * x^8, x^16, x^24 and the next group starts at lo/hi * x^32; multiplying by
//! x^(8k) is a byte shift of each lane plus a carry-less multiplication of the k bytes
//! shifted out by 0x87 (the reduction polynomial x^7 + x^2 + x + 1), which keeps the tweak
//! work off the AES port. The whitening XOR (block ^ tweak ^ round key 0) is one
//! three-way XOR, and the final tweak XOR is folded into the last round's key.
use super::HwKeys;
use super::keysched::MAX_ROUNDS;
use core::arch::x86_64::*;

/// Sectors whose tweaks are encrypted together (4 per register).
const BATCH: usize = 16;

/// Round keys broadcast to all four lanes.
type Rk = [__m512i; MAX_ROUNDS + 1];

/// Whether this CPU has every feature the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("vpclmulqdq")
        && is_x86_feature_detected!("aes")
}

/// XTS-encrypt or -decrypt `data` in place (see `AesXts::encrypt_sectors`).
/// `sector_size` is a non-zero multiple of 16 and `data.len()` a multiple of it.
///
/// # Safety
/// The CPU must support the features [`available`] checks.
pub(crate) unsafe fn crypt(keys: &HwKeys, decrypt: bool, first: u64, step: u64, sector_size: usize, data: &mut [u8]) {
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

/// A 16-byte value (round key or tweak) as a 128-bit lane, broadcast to all four lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast(bytes: &[u8; 16]) -> __m512i {
    let lo = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    _mm512_broadcast_i32x4(_mm_set_epi64x(hi as i64, lo as i64))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast_keys<const NR: usize>(keys: &[[u8; 16]; MAX_ROUNDS + 1]) -> Rk {
    let mut rk = [_mm512_setzero_si512(); MAX_ROUNDS + 1];
    for (r, k) in rk.iter_mut().zip(keys).take(NR + 1) {
        *r = broadcast(k);
    }
    rk
}

/// The reduction constant 0x87 in the low qword of each lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn poly() -> __m512i {
    _mm512_broadcast_i32x4(_mm_set_epi64x(0, 0x87))
}

/// Multiply each lane by x^(8K) (R = 16 - K, K <= 7).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn mul_x8k<const K: i32, const R: i32>(t: __m512i) -> __m512i {
    let out = _mm512_bsrli_epi128::<R>(t);
    _mm512_xor_si512(_mm512_bslli_epi128::<K>(t), _mm512_clmulepi64_epi128::<0x00>(out, poly()))
}

/// Lane i of `t` (all lanes equal) times x^(c+i), i = 0..3, c <= 4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn mul_x_lanes(t: __m512i, c: i64) -> __m512i {
    let cnt = _mm512_set_epi64(c + 3, c + 3, c + 2, c + 2, c + 1, c + 1, c, c);
    let inv = _mm512_sub_epi64(_mm512_set1_epi64(64), cnt);
    let shifted = _mm512_sllv_epi64(t, cnt);
    // Bits shifted out of each qword (a count of 64 gives 0).
    let carry = _mm512_srlv_epi64(t, inv);
    _mm512_ternarylogic_epi64::<0x96>(
        shifted,
        _mm512_bslli_epi128::<8>(carry),
        _mm512_clmulepi64_epi128::<0x01>(carry, poly()),
    )
}

/// AES rounds 1..=NR on `x` (round 0 already applied), the last with per-register keys.
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn rounds<const NR: usize, const DEC: bool, const N: usize>(rk: &Rk, x: &mut [__m512i; N], last: &[__m512i; N]) {
    for k in &rk[1..NR] {
        for v in x.iter_mut() {
            *v = if DEC { _mm512_aesdec_epi128(*v, *k) } else { _mm512_aesenc_epi128(*v, *k) };
        }
    }
    for (v, k) in x.iter_mut().zip(last) {
        *v = if DEC { _mm512_aesdeclast_epi128(*v, *k) } else { _mm512_aesenclast_epi128(*v, *k) };
    }
}

/// XTS on `chunk` (exactly N registers = 64*N bytes) with tweaks `tw`.
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn crypt_regs<const NR: usize, const DEC: bool, const N: usize>(rk: &Rk, tw: &[__m512i; N], chunk: &mut [u8]) {
    assert_eq!(chunk.len(), 64 * N);
    let p = chunk.as_mut_ptr();
    let mut x = [_mm512_setzero_si512(); N];
    let mut last = [_mm512_setzero_si512(); N];
    for i in 0..N {
        // SAFETY: chunk.len() == 64 * N, so bytes 64i..64i+64 are in bounds; loadu has
        // no alignment requirement; avx512f is enabled for this function.
        let d = unsafe { _mm512_loadu_si512(p.add(64 * i).cast()) };
        x[i] = _mm512_ternarylogic_epi64::<0x96>(d, tw[i], rk[0]);
        last[i] = _mm512_xor_si512(tw[i], rk[NR]);
    }
    rounds::<NR, DEC, N>(rk, &mut x, &last);
    for (i, v) in x.iter().enumerate() {
        // SAFETY: as for the load above.
        unsafe { _mm512_storeu_si512(p.add(64 * i).cast(), *v) };
    }
}

/// XTS on the last 1..=3 blocks of a sector (`tail.len()` is 16, 32 or 48) with lane
/// tweaks `tw`, using masked loads and stores.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn crypt_tail<const NR: usize, const DEC: bool>(rk: &Rk, tw: __m512i, tail: &mut [u8]) {
    assert!(tail.len() < 64);
    let mask = (1u64 << tail.len()) - 1;
    let p = tail.as_mut_ptr();
    // SAFETY: the mask enables exactly bytes 0..tail.len(), which are in bounds; AVX-512
    // masked loads do not access (or fault on) masked-off bytes; avx512bw is enabled.
    let d = unsafe { _mm512_maskz_loadu_epi8(mask, p.cast()) };
    let mut x = [_mm512_ternarylogic_epi64::<0x96>(d, tw, rk[0])];
    rounds::<NR, DEC, 1>(rk, &mut x, &[_mm512_xor_si512(tw, rk[NR])]);
    // SAFETY: as for the masked load.
    unsafe { _mm512_mask_storeu_epi8(p.cast(), mask, x[0]) };
}

/// XTS on one sector whose encrypted tweak is `t`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq")]
fn crypt_sector<const NR: usize, const DEC: bool>(rk: &Rk, t: &[u8; 16], sector: &mut [u8]) {
    let t = broadcast(t);
    let mut lo = mul_x_lanes(t, 0);
    let mut hi = mul_x_lanes(t, 4);
    let mut groups = sector.chunks_exact_mut(512);
    for group in &mut groups {
        let (lo2, hi2) = (mul_x8k::<1, 15>(lo), mul_x8k::<1, 15>(hi));
        let tw = [
            lo,
            hi,
            lo2,
            hi2,
            mul_x8k::<2, 14>(lo),
            mul_x8k::<2, 14>(hi),
            mul_x8k::<2, 14>(lo2),
            mul_x8k::<2, 14>(hi2),
        ];
        crypt_regs::<NR, DEC, 8>(rk, &tw, group);
        lo = mul_x8k::<4, 12>(lo);
        hi = mul_x8k::<4, 12>(hi);
    }
    let mut regs = groups.into_remainder().chunks_exact_mut(64);
    for reg in &mut regs {
        crypt_regs::<NR, DEC, 1>(rk, &[lo], reg);
        (lo, hi) = (hi, mul_x8k::<1, 15>(lo));
    }
    let tail = regs.into_remainder();
    if !tail.is_empty() {
        crypt_tail::<NR, DEC>(rk, lo, tail);
    }
}

/// Encrypt the tweaks le128(`first` + i * `step`) of `out.len()` (<= BATCH) sectors with
/// the tweak key; returns the tweak number following the last one.
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn encrypt_tweaks<const NR: usize>(tk: &Rk, first: u64, step: u64, out: &mut [[u8; 16]; BATCH], n: usize) -> u64 {
    let mut no = first;
    let mut next = || {
        let v = no as i64;
        no = no.wrapping_add(step);
        v
    };
    let mut x = [_mm512_setzero_si512(); BATCH / 4];
    for v in x.iter_mut().take(n.div_ceil(4)) {
        let (a, b, c, d) = (next(), next(), next(), next());
        *v = _mm512_xor_si512(_mm512_set_epi64(0, d, 0, c, 0, b, 0, a), tk[0]);
    }
    let last = [tk[NR]; BATCH / 4];
    match n.div_ceil(4) {
        1 => rounds::<NR, false, 1>(tk, (&mut x[..1]).try_into().expect("1"), (&last[..1]).try_into().expect("1")),
        2 => rounds::<NR, false, 2>(tk, (&mut x[..2]).try_into().expect("2"), (&last[..2]).try_into().expect("2")),
        3 => rounds::<NR, false, 3>(tk, (&mut x[..3]).try_into().expect("3"), (&last[..3]).try_into().expect("3")),
        _ => rounds::<NR, false, 4>(tk, &mut x, &last),
    }
    let p = out.as_mut_ptr().cast::<u8>();
    for (i, v) in x.iter().enumerate() {
        // SAFETY: `out` is BATCH * 16 = 4 * 64 contiguous bytes and i < BATCH / 4, so
        // bytes 64i..64i+64 are in bounds; storeu needs no alignment.
        unsafe { _mm512_storeu_si512(p.add(64 * i).cast(), *v) };
    }
    first.wrapping_add(step.wrapping_mul(n as u64))
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,vaes,vpclmulqdq,aes")]
fn kernel<const NR: usize, const DEC: bool>(keys: &HwKeys, first: u64, step: u64, sector_size: usize, data: &mut [u8]) {
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
