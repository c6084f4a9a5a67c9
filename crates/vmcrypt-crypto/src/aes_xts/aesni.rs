//! The AES-NI XTS kernel (x86_64, 128-bit registers): eight blocks in flight, tweaks
//! multiplied by x with SSE2 shifts, the tweak XOR folded into the first and last round.
use super::HwKeys;
use super::keysched::MAX_ROUNDS;
use core::arch::x86_64::*;

/// Blocks processed together (and sectors whose tweaks are encrypted together).
const LANES: usize = 8;

/// Round keys as registers.
pub(crate) type Rk = [__m128i; MAX_ROUNDS + 1];

/// Whether this CPU has AES-NI (SSE2 is part of x86_64).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("aes")
}

/// XTS-encrypt or -decrypt `data` in place (see `AesXts::encrypt_sectors`).
/// `sector_size` is a non-zero multiple of 16 and `data.len()` a multiple of it.
///
/// # Safety
/// The CPU must support AES-NI.
pub(crate) unsafe fn crypt(
    keys: &HwKeys,
    decrypt: bool,
    first: u64,
    step: u64,
    sector_size: usize,
    data: &mut [u8],
) {
    // SAFETY (all arms): the caller guarantees AES-NI, the only feature `kernel` enables
    // beyond the x86_64 baseline.
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

/// A 16-byte little-endian value as a register.
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn from_bytes(bytes: &[u8; 16]) -> __m128i {
    let lo = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    _mm_set_epi64x(hi as i64, lo as i64)
}

/// Multiply a tweak by x: shift the 128-bit value left by one; the bit leaving qword 0
/// enters qword 1, the bit leaving qword 1 is reduced into 0x87.
#[inline]
#[target_feature(enable = "sse2")]
fn mul_x(t: __m128i) -> __m128i {
    // Dword 0 <- dword 3, dword 2 <- dword 1; arithmetic shift spreads their top bits.
    let tops = _mm_srai_epi32::<31>(_mm_shuffle_epi32::<0x13>(t));
    _mm_xor_si128(
        _mm_slli_epi64::<1>(t),
        _mm_and_si128(tops, _mm_set_epi32(0, 1, 0, 0x87)),
    )
}

/// AES rounds 1..=NR on `x` (round 0 already applied), the last with per-block keys.
#[inline]
#[target_feature(enable = "sse2,aes")]
pub(crate) fn rounds<const NR: usize, const DEC: bool, const N: usize>(
    rk: &Rk,
    x: &mut [__m128i; N],
    last: &[__m128i; N],
) {
    // An opaque round count keeps this a round-major loop (see `vaes::rounds`).
    let nr = core::hint::black_box(NR);
    for k in &rk[1..nr] {
        for v in x.iter_mut() {
            *v = if DEC {
                _mm_aesdec_si128(*v, *k)
            } else {
                _mm_aesenc_si128(*v, *k)
            };
        }
    }
    for (v, k) in x.iter_mut().zip(last) {
        *v = if DEC {
            _mm_aesdeclast_si128(*v, *k)
        } else {
            _mm_aesenclast_si128(*v, *k)
        };
    }
}

/// XTS on `chunk` (exactly N blocks) starting with tweak `t`; returns the next tweak.
#[inline]
#[target_feature(enable = "sse2,aes")]
fn crypt_blocks<const NR: usize, const DEC: bool, const N: usize>(
    rk: &Rk,
    mut t: __m128i,
    chunk: &mut [u8],
) -> __m128i {
    assert_eq!(chunk.len(), 16 * N);
    let p = chunk.as_mut_ptr();
    let mut x = [_mm_setzero_si128(); N];
    let mut last = [_mm_setzero_si128(); N];
    for i in 0..N {
        // SAFETY: chunk.len() == 16 * N, so bytes 16i..16i+16 are in bounds; loadu has
        // no alignment requirement (SSE2 is baseline on x86_64).
        let d = unsafe { _mm_loadu_si128(p.add(16 * i).cast()) };
        x[i] = _mm_xor_si128(d, _mm_xor_si128(t, rk[0]));
        last[i] = _mm_xor_si128(t, rk[NR]);
        t = mul_x(t);
    }
    rounds::<NR, DEC, N>(rk, &mut x, &last);
    for (i, v) in x.iter().enumerate() {
        // SAFETY: as for the load above.
        unsafe { _mm_storeu_si128(p.add(16 * i).cast(), *v) };
    }
    t
}

/// XTS on one sector whose encrypted tweak is `t`.
#[inline]
#[target_feature(enable = "sse2,aes")]
fn crypt_sector<const NR: usize, const DEC: bool>(rk: &Rk, t: &[u8; 16], sector: &mut [u8]) {
    let mut t = from_bytes(t);
    let mut groups = sector.chunks_exact_mut(16 * LANES);
    for group in &mut groups {
        t = crypt_blocks::<NR, DEC, LANES>(rk, t, group);
    }
    for block in groups.into_remainder().chunks_exact_mut(16) {
        t = crypt_blocks::<NR, DEC, 1>(rk, t, block);
    }
}

/// Encrypt the tweaks le128(`first` + i * `step`) of `n` (<= LANES) sectors into `out`;
/// returns the tweak number following the last one.
#[inline]
#[target_feature(enable = "sse2,aes")]
fn encrypt_tweaks<const NR: usize>(
    tk: &Rk,
    first: u64,
    step: u64,
    out: &mut [[u8; 16]; LANES],
    n: usize,
) -> u64 {
    let mut no = first;
    let mut x = [_mm_setzero_si128(); LANES];
    for v in x.iter_mut().take(n) {
        *v = _mm_xor_si128(_mm_set_epi64x(0, no as i64), tk[0]);
        no = no.wrapping_add(step);
    }
    rounds::<NR, false, LANES>(tk, &mut x, &[tk[NR]; LANES]);
    for (o, v) in out.iter_mut().zip(&x) {
        // SAFETY: `o` is a 16-byte array; storeu needs no alignment.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), *v) };
    }
    no
}

#[target_feature(enable = "sse2,aes")]
fn kernel<const NR: usize, const DEC: bool>(
    keys: &HwKeys,
    first: u64,
    step: u64,
    sector_size: usize,
    data: &mut [u8],
) {
    let src = if DEC { &keys.data.dec } else { &keys.data.enc };
    let rk: Rk = core::array::from_fn(|r| from_bytes(&src[r]));
    let tk: Rk = core::array::from_fn(|r| from_bytes(&keys.tweak.enc[r]));
    let mut tweaks = [[0u8; 16]; LANES];
    let mut no = first;
    for batch in data.chunks_mut(sector_size * LANES) {
        let n = batch.len() / sector_size;
        no = encrypt_tweaks::<NR>(&tk, no, step, &mut tweaks, n);
        for (sector, t) in batch.chunks_exact_mut(sector_size).zip(&tweaks) {
            crypt_sector::<NR, DEC>(&rk, t, sector);
        }
    }
}
