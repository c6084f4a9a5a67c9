//! SHA-256 of many equal-length messages on the SHA extensions (SHA-NI), two at a time.
//!
//! One SHA-256 compression is a chain of 32 dependent `sha256rnds2` instructions, so a
//! single message leaves the unit idle between them; hashing two independent messages
//! with their instructions interleaved fills those gaps. Used for the per-block
//! checksums of LUKS2 reencryption (thousands of 512..4096-byte blocks per hotzone).
//! Messages must be a multiple of 64 bytes long: their padding is then one block of
//! its own. This is the `sha-ni-x2` kernel of [`crate::sha256_kernel`], chosen where
//! the CPU has SHA-NI but not AVX-512, and for the last few messages (fewer than
//! sixteen) after `avx512-x16`.
use crate::aes_xts::vaes_ops::{load128, store128};
use crate::sha256_kernel::{IV, K};
use core::arch::x86_64::*;

/// Messages hashed together (`kernel` fills exactly two).
const LANES: usize = 2;

/// Whether this CPU has the SHA extensions (and the SSSE3/SSE4.1 shuffles used here).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("ssse3")
        && is_x86_feature_detected!("sse4.1")
}

/// Hash each `len`-byte message of `data` (`len` a non-zero multiple of 64, `data.len()`
/// a multiple of `len`) into consecutive 32-byte slots of `out`. Panics if the CPU
/// lacks the features ([`available`]).
pub(crate) fn digest_each(len: usize, data: &[u8], out: &mut [u8]) {
    assert!(available(), "SHA-NI kernel on a CPU without SHA-NI");
    assert!(len > 0 && len.is_multiple_of(64) && data.len().is_multiple_of(len));
    assert_eq!(out.len(), data.len() / len * 32);
    // SAFETY: `available` checked the features `kernel` enables.
    unsafe { kernel(len, data, out) }
}

/// A hash state as the SHA instructions hold it: words A, B, E, F and C, D, G, H.
#[derive(Clone, Copy)]
struct State {
    abef: __m128i,
    cdgh: __m128i,
}

#[target_feature(enable = "sha,ssse3,sse4.1")]
fn kernel(len: usize, data: &[u8], out: &mut [u8]) {
    let bits = (len as u64) * 8;
    let mut pad = [0u8; 64];
    pad[0] = 0x80;
    pad[56..].copy_from_slice(&bits.to_be_bytes());
    for (msgs, outs) in data.chunks(len * LANES).zip(out.chunks_mut(32 * LANES)) {
        // A short last group repeats its last message in the idle lanes.
        let n = msgs.len() / len;
        let mut st = [initial(); LANES];
        for b in (0..len).step_by(64) {
            let second = (n - 1).min(1) * len + b;
            compress(&mut st, [&msgs[b..b + 64], &msgs[second..second + 64]]);
        }
        compress(&mut st, [&pad; LANES]);
        for (s, o) in st.iter().zip(outs.chunks_exact_mut(32)) {
            store(*s, o);
        }
    }
}

#[inline]
#[target_feature(enable = "sha,ssse3,sse4.1")]
fn initial() -> State {
    // Words a..d and e..h as loaded, rearranged into the instructions' order.
    let abcd = _mm_set_epi32(IV[3] as i32, IV[2] as i32, IV[1] as i32, IV[0] as i32);
    let efgh = _mm_set_epi32(IV[7] as i32, IV[6] as i32, IV[5] as i32, IV[4] as i32);
    let badc = _mm_shuffle_epi32(abcd, 0xb1);
    let hgfe = _mm_shuffle_epi32(efgh, 0x1b);
    State {
        abef: _mm_alignr_epi8(badc, hgfe, 8),
        cdgh: _mm_blend_epi16(hgfe, badc, 0xf0),
    }
}

/// The digest of `s`, big-endian words a..h, into `out` (32 bytes).
#[inline]
#[target_feature(enable = "sha,ssse3,sse4.1")]
fn store(s: State, out: &mut [u8]) {
    let feba = _mm_shuffle_epi32(s.abef, 0x1b);
    let dchg = _mm_shuffle_epi32(s.cdgh, 0xb1);
    let abcd = _mm_blend_epi16(feba, dchg, 0xf0);
    let efgh = _mm_alignr_epi8(dchg, feba, 8);
    let swap = byte_swap_mask();
    store128(out, 0, _mm_shuffle_epi8(abcd, swap));
    store128(out, 16, _mm_shuffle_epi8(efgh, swap));
}

/// Reverses the bytes of each 32-bit word.
#[inline]
#[target_feature(enable = "ssse3")]
fn byte_swap_mask() -> __m128i {
    _mm_set_epi64x(0x0c0d0e0f_08090a0b, 0x04050607_00010203)
}

/// Round constants `4g..4g + 4` as one register.
#[inline]
#[target_feature(enable = "sse2")]
fn k4(g: usize) -> __m128i {
    _mm_set_epi32(
        K[4 * g + 3] as i32,
        K[4 * g + 2] as i32,
        K[4 * g + 1] as i32,
        K[4 * g] as i32,
    )
}

/// Compress one 64-byte block into each state, the lanes' instructions interleaved.
#[inline]
#[target_feature(enable = "sha,ssse3,sse4.1")]
fn compress(st: &mut [State; LANES], blocks: [&[u8]; LANES]) {
    let saved = *st;
    // w[l][g % 4]: message words 4g..4g + 4 of lane l (a sliding window of four groups).
    let mut w = [[_mm_setzero_si128(); 4]; LANES];
    group::<0>(st, &mut w, &blocks);
    group::<1>(st, &mut w, &blocks);
    group::<2>(st, &mut w, &blocks);
    group::<3>(st, &mut w, &blocks);
    group::<4>(st, &mut w, &blocks);
    group::<5>(st, &mut w, &blocks);
    group::<6>(st, &mut w, &blocks);
    group::<7>(st, &mut w, &blocks);
    group::<8>(st, &mut w, &blocks);
    group::<9>(st, &mut w, &blocks);
    group::<10>(st, &mut w, &blocks);
    group::<11>(st, &mut w, &blocks);
    group::<12>(st, &mut w, &blocks);
    group::<13>(st, &mut w, &blocks);
    group::<14>(st, &mut w, &blocks);
    group::<15>(st, &mut w, &blocks);
    for l in 0..LANES {
        st[l].abef = _mm_add_epi32(st[l].abef, saved[l].abef);
        st[l].cdgh = _mm_add_epi32(st[l].cdgh, saved[l].cdgh);
    }
}

/// Rounds `4G..4G + 4` of each lane (`G` a constant, so the window indices are too).
#[inline]
#[target_feature(enable = "sha,ssse3,sse4.1")]
fn group<const G: usize>(
    st: &mut [State; LANES],
    w: &mut [[__m128i; 4]; LANES],
    blocks: &[&[u8]; LANES],
) {
    let k = k4(G);
    for l in 0..LANES {
        let cur = if G < 4 {
            _mm_shuffle_epi8(load128(blocks[l], 16 * G), byte_swap_mask())
        } else {
            // W[t] = W[t-16] + s0(W[t-15]) + W[t-7] + s1(W[t-2]), four words at once.
            let x = _mm_sha256msg1_epu32(w[l][G % 4], w[l][(G + 1) % 4]);
            let x = _mm_add_epi32(x, _mm_alignr_epi8(w[l][(G + 3) % 4], w[l][(G + 2) % 4], 4));
            _mm_sha256msg2_epu32(x, w[l][(G + 3) % 4])
        };
        w[l][G % 4] = cur;
        let wk = _mm_add_epi32(cur, k);
        // Two rounds on the low words, two on the high: the A, B, E, F of each pair of
        // rounds become the next pair's C, D, G, H.
        let s = &mut st[l];
        s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, wk);
        s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32(wk, 0x0e));
    }
}
