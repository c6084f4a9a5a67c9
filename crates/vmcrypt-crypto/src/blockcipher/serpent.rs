//! Serpent (128-bit block; 128/192/256-bit keys), bitsliced, zeroized on drop.
//!
//! This is the Linux kernel / libgcrypt / nettle convention ("serpent", not the
//! byte-reversed "tnepres"): key and blocks are read as little-endian 32-bit words,
//! and keys shorter than 256 bits are padded with a single 1 bit (a 0x01 byte) and
//! zeros, as the Serpent specification says.
//!
//! The cipher runs in the specification's bitslice mode: the four 32-bit words of a
//! block are the bit planes, so each S-box is a boolean circuit on whole words. The
//! circuits are not hand-written: each S-box output bit is evaluated as its algebraic
//! normal form, derived at compile time from the published 4-bit tables. The round
//! code is generic over the number of blocks processed side by side (`[u32; N]`
//! planes); [`LANES`] picks it.
use super::BlockCipher;
use vmcrypt_error::{Error, Result};
use zeroize::Zeroize;

/// The eight Serpent S-boxes (specification, section 2).
const SBOX: [[u8; 16]; 8] = [
    [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
    [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
    [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
    [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
    [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
    [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
    [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
    [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];

/// Golden-ratio constant of the key schedule.
const PHI: u32 = 0x9E37_79B9;

/// Number of blocks processed side by side. The code is generic over this, but on the
/// x86-64 baseline (SSE2, no vector rotate) LLVM does not vectorise the interleaved
/// form, and one block at a time measured fastest (see examples/cipher_speed.rs).
const LANES: usize = 1;

/// The inverse of a 4-bit permutation.
const fn invert(s: &[u8; 16]) -> [u8; 16] {
    let mut inv = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        inv[s[i] as usize] = i as u8;
        i += 1;
    }
    inv
}

/// Algebraic normal form of the four output bits of a 4-bit S-box: bit `m` of
/// `anf[o]` is set when the monomial `prod_{i in m} x_i` occurs in output bit `o`
/// (Moebius transform of the truth table).
const fn anf(s: &[u8; 16]) -> [u16; 4] {
    let mut out = [0u16; 4];
    let mut o = 0;
    while o < 4 {
        let mut a = [0u8; 16];
        let mut x = 0;
        while x < 16 {
            a[x] = (s[x] >> o) & 1;
            x += 1;
        }
        let mut i = 0;
        while i < 4 {
            let mut x = 0;
            while x < 16 {
                if x & (1 << i) != 0 {
                    a[x] ^= a[x ^ (1 << i)];
                }
                x += 1;
            }
            i += 1;
        }
        let mut m = 0;
        while m < 16 {
            out[o] |= (a[m] as u16) << m;
            m += 1;
        }
        o += 1;
    }
    out
}

/// ANF of all S-boxes and of their inverses.
const fn anf_all(inverse: bool) -> [[u16; 4]; 8] {
    let mut out = [[0u16; 4]; 8];
    let mut i = 0;
    while i < 8 {
        out[i] = if inverse {
            anf(&invert(&SBOX[i]))
        } else {
            anf(&SBOX[i])
        };
        i += 1;
    }
    out
}
const ANF: [[u16; 4]; 8] = anf_all(false);
const ANF_INV: [[u16; 4]; 8] = anf_all(true);

/// The four bit planes (words 0..3) of `N` blocks.
type State<const N: usize> = [[u32; N]; 4];

#[inline(always)]
fn and<const N: usize>(a: &[u32; N], b: &[u32; N]) -> [u32; N] {
    std::array::from_fn(|i| a[i] & b[i])
}

#[inline(always)]
fn xor_into<const N: usize>(acc: &mut [u32; N], b: &[u32; N]) {
    acc.iter_mut().zip(b).for_each(|(a, b)| *a ^= b);
}

#[inline(always)]
fn rotl<const N: usize>(a: &mut [u32; N], r: u32) {
    a.iter_mut().for_each(|x| *x = x.rotate_left(r));
}

#[inline(always)]
fn rotr<const N: usize>(a: &mut [u32; N], r: u32) {
    a.iter_mut().for_each(|x| *x = x.rotate_right(r));
}

/// XOR into `$acc` every monomial of `$mono` whose bit is set in the constant `$f`.
/// Spelled out per monomial so that the conditions are compile-time constants.
macro_rules! xor_terms {
    ($acc:expr, $f:expr, $mono:expr; $($m:literal)*) => {
        $( if $f >> $m & 1 != 0 { xor_into(&mut $acc, &$mono[$m]); } )*
    };
}

/// Apply S-box `S` (or its inverse if `INV`) to every bit position of the state,
/// evaluating each output bit as its algebraic normal form.
#[inline(always)]
fn sbox<const S: usize, const INV: bool, const N: usize>(x: &mut State<N>) {
    let f: [u16; 4] = const { if INV { ANF_INV[S] } else { ANF[S] } };
    // mono[m] = AND of x[i] over the bits i of m; mono[0] = all ones.
    let mut mono = [[u32::MAX; N]; 16];
    mono[1] = x[0];
    mono[2] = x[1];
    mono[4] = x[2];
    mono[8] = x[3];
    mono[3] = and(&x[0], &x[1]);
    mono[5] = and(&x[0], &x[2]);
    mono[6] = and(&x[1], &x[2]);
    mono[9] = and(&x[0], &x[3]);
    mono[10] = and(&x[1], &x[3]);
    mono[12] = and(&x[2], &x[3]);
    mono[7] = and(&mono[3], &x[2]);
    mono[11] = and(&mono[3], &x[3]);
    mono[13] = and(&mono[5], &x[3]);
    mono[14] = and(&mono[6], &x[3]);
    mono[15] = and(&mono[7], &x[3]);
    let mut out = [[0u32; N]; 4];
    xor_terms!(out[0], f[0], mono; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    xor_terms!(out[1], f[1], mono; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    xor_terms!(out[2], f[2], mono; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    xor_terms!(out[3], f[3], mono; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    *x = out;
}

/// The Serpent linear transformation.
// Lane loops index all four planes at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn lt<const N: usize>(x: &mut State<N>) {
    rotl(&mut x[0], 13);
    rotl(&mut x[2], 3);
    for i in 0..N {
        x[1][i] ^= x[0][i] ^ x[2][i];
        x[3][i] ^= x[2][i] ^ (x[0][i] << 3);
    }
    rotl(&mut x[1], 1);
    rotl(&mut x[3], 7);
    for i in 0..N {
        x[0][i] ^= x[1][i] ^ x[3][i];
        x[2][i] ^= x[3][i] ^ (x[1][i] << 7);
    }
    rotl(&mut x[0], 5);
    rotl(&mut x[2], 22);
}

/// The inverse linear transformation.
// Lane loops index all four planes at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn lt_inv<const N: usize>(x: &mut State<N>) {
    rotr(&mut x[2], 22);
    rotr(&mut x[0], 5);
    for i in 0..N {
        x[2][i] ^= x[3][i] ^ (x[1][i] << 7);
        x[0][i] ^= x[1][i] ^ x[3][i];
    }
    rotr(&mut x[3], 7);
    rotr(&mut x[1], 1);
    for i in 0..N {
        x[3][i] ^= x[2][i] ^ (x[0][i] << 3);
        x[1][i] ^= x[0][i] ^ x[2][i];
    }
    rotr(&mut x[2], 3);
    rotr(&mut x[0], 13);
}

/// XOR a round key into every block of the state.
#[inline(always)]
fn add_key<const N: usize>(x: &mut State<N>, k: &[u32; 4]) {
    for (plane, kw) in x.iter_mut().zip(k) {
        plane.iter_mut().for_each(|w| *w ^= kw);
    }
}

/// A keyed Serpent instance: the 33 round keys.
pub(crate) struct Serpent {
    k: [[u32; 4]; 33],
}

impl Serpent {
    /// Key schedule for a 16, 24 or 32-byte key.
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(Error::unsupported(format!(
                "Serpent key length {} bytes (expected 16, 24 or 32)",
                key.len()
            )));
        }
        // Pad to 256 bits with a single 1 bit, then run the prekey recurrence
        // w_i = (w_{i-8} ^ w_{i-5} ^ w_{i-3} ^ w_{i-1} ^ phi ^ i) <<< 11.
        let mut padded = [0u8; 32];
        padded[..key.len()].copy_from_slice(key);
        if key.len() < 32 {
            padded[key.len()] = 1;
        }
        let mut w = [0u32; 140];
        for (x, c) in w.iter_mut().zip(padded.chunks_exact(4)) {
            *x = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 8..140 {
            let v = w[i - 8] ^ w[i - 5] ^ w[i - 3] ^ w[i - 1] ^ PHI ^ (i as u32 - 8);
            w[i] = v.rotate_left(11);
        }
        let mut k = [[0u32; 4]; 33];
        for (i, rk) in k.iter_mut().enumerate() {
            // Round key i goes through S-box (3 - i) mod 8, in bitslice mode.
            let mut st: State<1> = std::array::from_fn(|j| [w[8 + 4 * i + j]]);
            sbox_dyn((35 - i) % 8, &mut st);
            *rk = std::array::from_fn(|j| st[j][0]);
            st.zeroize();
        }
        padded.zeroize();
        w.zeroize();
        Ok(Serpent { k })
    }

    /// Encrypt `N` blocks held as bit planes.
    #[inline(always)]
    fn encrypt_state<const N: usize>(&self, x: &mut State<N>) {
        for i in 0..4 {
            let k = &self.k[8 * i..8 * i + 9];
            macro_rules! round {
                ($($s:literal)*) => {$(
                    add_key(x, &k[$s]);
                    sbox::<$s, false, N>(x);
                    if $s < 7 || i < 3 {
                        lt(x);
                    } else {
                        add_key(x, &k[8]);
                    }
                )*};
            }
            round!(0 1 2 3 4 5 6 7);
        }
    }

    /// Decrypt `N` blocks held as bit planes.
    #[inline(always)]
    fn decrypt_state<const N: usize>(&self, x: &mut State<N>) {
        for i in (0..4).rev() {
            let k = &self.k[8 * i..8 * i + 9];
            macro_rules! round {
                ($($s:literal)*) => {$(
                    if $s < 7 || i < 3 {
                        lt_inv(x);
                    } else {
                        add_key(x, &k[8]);
                    }
                    sbox::<$s, true, N>(x);
                    add_key(x, &k[$s]);
                )*};
            }
            round!(7 6 5 4 3 2 1 0);
        }
    }
}

/// S-box `s` applied to a single block (key schedule only).
fn sbox_dyn(s: usize, x: &mut State<1>) {
    match s {
        0 => sbox::<0, false, 1>(x),
        1 => sbox::<1, false, 1>(x),
        2 => sbox::<2, false, 1>(x),
        3 => sbox::<3, false, 1>(x),
        4 => sbox::<4, false, 1>(x),
        5 => sbox::<5, false, 1>(x),
        6 => sbox::<6, false, 1>(x),
        _ => sbox::<7, false, 1>(x),
    }
}

/// Load `N` consecutive 16-byte blocks as bit planes (little-endian words).
#[inline(always)]
fn load<const N: usize>(bytes: &[u8]) -> State<N> {
    std::array::from_fn(|j| {
        std::array::from_fn(|b| {
            let o = 16 * b + 4 * j;
            u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
        })
    })
}

/// Store bit planes back as `N` consecutive 16-byte blocks.
#[inline(always)]
fn store<const N: usize>(x: &State<N>, bytes: &mut [u8]) {
    for (j, plane) in x.iter().enumerate() {
        for (b, w) in plane.iter().enumerate() {
            let o = 16 * b + 4 * j;
            bytes[o..o + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Run `f` over the blocks of `data`, `LANES` at a time; the tail goes through a
/// zero-padded scratch batch.
#[inline(always)]
fn for_each_batch(data: &mut [u8], f: impl Fn(&mut State<LANES>)) {
    debug_assert_eq!(data.len() % 16, 0);
    let mut chunks = data.chunks_exact_mut(16 * LANES);
    for chunk in &mut chunks {
        let mut x = load::<LANES>(chunk);
        f(&mut x);
        store(&x, chunk);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut scratch = [0u8; 16 * LANES];
        scratch[..tail.len()].copy_from_slice(tail);
        let mut x = load::<LANES>(&scratch);
        f(&mut x);
        store(&x, &mut scratch);
        tail.copy_from_slice(&scratch[..tail.len()]);
        scratch.zeroize();
        x.zeroize();
    }
}

impl BlockCipher for Serpent {
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) {
        for_each_batch(data, |x| self.encrypt_state(x));
    }
    fn decrypt_blocks(&self, data: &mut [u8]) {
        for_each_batch(data, |x| self.decrypt_state(x));
    }
}

impl Drop for Serpent {
    fn drop(&mut self) {
        self.k.zeroize();
    }
}

#[cfg(test)]
mod tests;
