//! Building blocks of the VAES kernels (XTS here, CBC decryption in [`crate::aes_cbc`]):
//! round keys broadcast to both 128-bit lanes, the AES rounds over several registers,
//! and bounds-checked unaligned loads and stores.
//!
//! Everything here enables only AVX2, VAES and VPCLMULQDQ, never AVX-512: it is inlined
//! into both the `vaes-avx2` kernels (which must run on CPUs without AVX-512) and the
//! `vaes-avx512` ones (whose wider feature set lets LLVM use 32 registers and fuse
//! three-way XORs).
use super::aesni::from_bytes;
use super::keysched::MAX_ROUNDS;
use core::arch::x86_64::*;

/// Round keys broadcast to both lanes.
pub(crate) type Rk = [__m256i; MAX_ROUNDS + 1];

/// A 16-byte value broadcast to both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn broadcast(bytes: &[u8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(from_bytes(bytes))
}

/// Round keys 0..=NR broadcast to both lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn broadcast_keys<const NR: usize>(keys: &[[u8; 16]; MAX_ROUNDS + 1]) -> Rk {
    let mut rk = [_mm256_setzero_si256(); MAX_ROUNDS + 1];
    for (r, k) in rk.iter_mut().zip(keys).take(NR + 1) {
        *r = broadcast(k);
    }
    rk
}

/// a ^ b ^ c (one `vpternlogq` where AVX-512VL is enabled in the caller).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn xor3(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
    _mm256_xor_si256(_mm256_xor_si256(a, b), c)
}

/// AES rounds 1..=NR on `x` (round 0 already applied), the last with per-register keys
/// (the round key with an XOR folded in: the XTS tweak or the CBC chaining value).
#[inline]
#[target_feature(enable = "avx2,vaes")]
pub(crate) fn rounds<const NR: usize, const DEC: bool, const N: usize>(
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

/// Bytes `at..at + 32` of `buf` (panics if out of bounds).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load(buf: &[u8], at: usize) -> __m256i {
    let b: &[u8; 32] = buf[at..at + 32].try_into().expect("32 bytes");
    // SAFETY: `b` is 32 readable bytes; loadu has no alignment requirement; avx2 is
    // enabled for this function.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// Store `v` to bytes `at..at + 32` of `buf` (panics if out of bounds).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn store(buf: &mut [u8], at: usize, v: __m256i) {
    let b: &mut [u8; 32] = (&mut buf[at..at + 32]).try_into().expect("32 bytes");
    // SAFETY: `b` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(b.as_mut_ptr().cast(), v) }
}

/// Bytes `at..at + 16` of `buf` in the low lane, zero in the high lane.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load_low(buf: &[u8], at: usize) -> __m256i {
    _mm256_zextsi128_si256(load128(buf, at))
}

/// Bytes `at..at + 16` of `buf` (panics if out of bounds).
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn load128(buf: &[u8], at: usize) -> __m128i {
    let b: &[u8; 16] = buf[at..at + 16].try_into().expect("16 bytes");
    // SAFETY: `b` is 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Store `v` to bytes `at..at + 16` of `buf` (panics if out of bounds).
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn store128(buf: &mut [u8], at: usize, v: __m128i) {
    let b: &mut [u8; 16] = (&mut buf[at..at + 16]).try_into().expect("16 bytes");
    // SAFETY: `b` is 16 writable bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}
