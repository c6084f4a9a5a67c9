//! Twofish (128-bit block; 128/192/256-bit keys), table-driven, zeroized on drop.
//!
//! The key schedule folds the key-dependent S-boxes and the MDS matrix into four
//! 256-entry `u32` tables (the "full keying" option of the Twofish paper), so the `g`
//! function is four lookups and three XORs. Words are little-endian (the AES-candidate
//! convention, which is what the Linux kernel and therefore dm-crypt/LUKS use).
use super::BlockCipher;
use vmcrypt_error::{Error, Result};
use zeroize::Zeroize;

/// The 4-bit permutations t0..t3 defining q0 (Twofish paper, section 4.3.5).
const Q0_T: [[u8; 16]; 4] = [
    [
        0x8, 0x1, 0x7, 0xD, 0x6, 0xF, 0x3, 0x2, 0x0, 0xB, 0x5, 0x9, 0xE, 0xC, 0xA, 0x4,
    ],
    [
        0xE, 0xC, 0xB, 0x8, 0x1, 0x2, 0x3, 0x5, 0xF, 0x4, 0xA, 0x6, 0x7, 0x0, 0x9, 0xD,
    ],
    [
        0xB, 0xA, 0x5, 0xE, 0x6, 0xD, 0x9, 0x0, 0xC, 0x8, 0xF, 0x3, 0x2, 0x4, 0x7, 0x1,
    ],
    [
        0xD, 0x7, 0xF, 0x4, 0x1, 0x2, 0x6, 0xE, 0x9, 0xB, 0x3, 0x0, 0x8, 0x5, 0xC, 0xA,
    ],
];

/// The 4-bit permutations t0..t3 defining q1.
const Q1_T: [[u8; 16]; 4] = [
    [
        0x2, 0x8, 0xB, 0xD, 0xF, 0x7, 0x6, 0xE, 0x3, 0x1, 0x9, 0x4, 0x0, 0xA, 0xC, 0x5,
    ],
    [
        0x1, 0xE, 0x2, 0xB, 0x4, 0xC, 0x3, 0x7, 0x6, 0xD, 0xA, 0x5, 0xF, 0x9, 0x0, 0x8,
    ],
    [
        0x4, 0xC, 0x7, 0x5, 0x1, 0x6, 0x9, 0xA, 0x0, 0xE, 0xD, 0x8, 0x2, 0xB, 0x3, 0xF,
    ],
    [
        0xB, 0x9, 0x5, 0x1, 0xC, 0x3, 0xD, 0xE, 0x6, 0x4, 0x7, 0xF, 0x2, 0x0, 0x8, 0xA,
    ],
];

/// Rotate a nibble right by one bit.
const fn ror4(x: u8) -> u8 {
    ((x >> 1) | (x << 3)) & 0xF
}

/// One of the fixed 8-bit permutations q0/q1, built from its four nibble tables.
const fn q_perm(t: &[[u8; 16]; 4], x: u8) -> u8 {
    let (a0, b0) = (x >> 4, x & 0xF);
    let a1 = a0 ^ b0;
    let b1 = a0 ^ ror4(b0) ^ ((a0 << 3) & 0xF);
    let (a2, b2) = (t[0][a1 as usize], t[1][b1 as usize]);
    let a3 = a2 ^ b2;
    let b3 = a2 ^ ror4(b2) ^ ((a2 << 3) & 0xF);
    let (a4, b4) = (t[2][a3 as usize], t[3][b3 as usize]);
    (b4 << 4) | a4
}

/// The full 256-byte table of a q permutation.
const fn q_table(t: &[[u8; 16]; 4]) -> [u8; 256] {
    let mut out = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = q_perm(t, i as u8);
        i += 1;
    }
    out
}

/// q0 and q1 as lookup tables, indexed `Q[0]` / `Q[1]`.
const Q: [[u8; 256]; 2] = [q_table(&Q0_T), q_table(&Q1_T)];

/// The MDS matrix (over GF(2^8) mod x^8+x^6+x^5+x^3+1).
const MDS: [[u8; 4]; 4] = [
    [0x01, 0xEF, 0x5B, 0x5B],
    [0x5B, 0xEF, 0xEF, 0x01],
    [0xEF, 0x5B, 0x01, 0xEF],
    [0xEF, 0x01, 0xEF, 0x5B],
];
const MDS_POLY: u16 = 0x169;

/// The Reed-Solomon matrix deriving the S-box key words (mod x^8+x^6+x^3+x^2+1).
const RS: [[u8; 8]; 4] = [
    [0x01, 0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E],
    [0xA4, 0x56, 0x82, 0xF3, 0x1E, 0xC6, 0x68, 0xE5],
    [0x02, 0xA1, 0xFC, 0xC1, 0x47, 0xAE, 0x3D, 0x19],
    [0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E, 0x03],
];
const RS_POLY: u16 = 0x14D;

/// Which q is applied to each byte at each stage of `h`, outermost key word first:
/// the stage keyed by L[3] (256-bit keys only), by L[2] (192/256), then by L[1] and
/// L[0], then the final unkeyed q.
const Q_L3: [usize; 4] = [1, 0, 0, 1];
const Q_L2: [usize; 4] = [1, 1, 0, 0];
const Q_L1: [usize; 4] = [0, 1, 0, 1];
const Q_L0: [usize; 4] = [0, 0, 1, 1];
const Q_OUT: [usize; 4] = [1, 0, 1, 0];

/// Multiply in GF(2^8) modulo `poly`.
fn gf_mul(mut a: u8, mut b: u8, poly: u16) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= (poly & 0xFF) as u8;
        }
        b >>= 1;
    }
    r
}

/// Byte `n` of a little-endian word.
fn byte(x: u32, n: usize) -> u8 {
    (x >> (8 * n)) as u8
}

/// The keyed chain of q permutations that `h` applies to byte position `j`;
/// `l` holds the key words L[0..k].
fn q_chain(j: usize, x: u8, l: &[u32]) -> u8 {
    let mut y = x;
    if l.len() == 4 {
        y = Q[Q_L3[j]][y as usize] ^ byte(l[3], j);
    }
    if l.len() >= 3 {
        y = Q[Q_L2[j]][y as usize] ^ byte(l[2], j);
    }
    y = Q[Q_L1[j]][y as usize] ^ byte(l[1], j);
    y = Q[Q_L0[j]][y as usize] ^ byte(l[0], j);
    Q[Q_OUT[j]][y as usize]
}

/// Column `j` of the MDS matrix times the byte `y`, as a little-endian word.
fn mds_column(j: usize, y: u8) -> u32 {
    (0..4).fold(0u32, |acc, i| {
        acc | u32::from(gf_mul(MDS[i][j], y, MDS_POLY)) << (8 * i)
    })
}

/// The Twofish `h` function: keyed q chains on each byte, then the MDS matrix.
fn h(x: u32, l: &[u32]) -> u32 {
    (0..4).fold(0u32, |acc, j| {
        acc ^ mds_column(j, q_chain(j, byte(x, j), l))
    })
}

/// Reed-Solomon code of 8 key bytes: one S-box key word.
fn rs_word(m: &[u8]) -> u32 {
    (0..4).fold(0u32, |acc, i| {
        let b = (0..8).fold(0u8, |s, c| s ^ gf_mul(RS[i][c], m[c], RS_POLY));
        acc | u32::from(b) << (8 * i)
    })
}

/// A keyed Twofish instance: 40 round subkeys and the key-dependent `g` tables.
pub(crate) struct Twofish {
    /// Whitening keys K0..K7 and round keys K8..K39.
    k: [u32; 40],
    /// `g(x) = s[0][x0] ^ s[1][x1] ^ s[2][x2] ^ s[3][x3]` for the bytes x0..x3 of x.
    s: Box<[[u32; 256]; 4]>,
}

impl Twofish {
    /// Key schedule for a 16, 24 or 32-byte key.
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(Error::unsupported(format!(
                "Twofish key length {} bytes (expected 16, 24 or 32)",
                key.len()
            )));
        }
        let k = key.len() / 8;
        let mut words = [0u32; 8];
        for (w, c) in words.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut me = [0u32; 4];
        let mut mo = [0u32; 4];
        let mut sk = [0u32; 4];
        for i in 0..k {
            me[i] = words[2 * i];
            mo[i] = words[2 * i + 1];
            // The S-box words are used in reverse order: S_{k-1} first.
            sk[k - 1 - i] = rs_word(&key[8 * i..8 * i + 8]);
        }
        let mut tf = Twofish {
            k: [0; 40],
            s: Box::new([[0; 256]; 4]),
        };
        const RHO: u32 = 0x0101_0101;
        for i in 0..20u32 {
            let a = h(2 * i * RHO, &me[..k]);
            let b = h((2 * i + 1) * RHO, &mo[..k]).rotate_left(8);
            tf.k[2 * i as usize] = a.wrapping_add(b);
            tf.k[2 * i as usize + 1] = a.wrapping_add(b.wrapping_mul(2)).rotate_left(9);
        }
        for (j, table) in tf.s.iter_mut().enumerate() {
            for (x, entry) in table.iter_mut().enumerate() {
                *entry = mds_column(j, q_chain(j, x as u8, &sk[..k]));
            }
        }
        words.zeroize();
        me.zeroize();
        mo.zeroize();
        sk.zeroize();
        Ok(tf)
    }

    /// The keyed `g` function.
    #[inline(always)]
    fn g(&self, x: u32) -> u32 {
        let s = &*self.s;
        s[0][x as u8 as usize]
            ^ s[1][(x >> 8) as u8 as usize]
            ^ s[2][(x >> 16) as u8 as usize]
            ^ s[3][(x >> 24) as usize]
    }

    /// `g` of a word rotated left by 8 bits, without the rotation.
    #[inline(always)]
    fn g_rot8(&self, x: u32) -> u32 {
        let s = &*self.s;
        s[0][(x >> 24) as usize]
            ^ s[1][x as u8 as usize]
            ^ s[2][(x >> 8) as u8 as usize]
            ^ s[3][(x >> 16) as u8 as usize]
    }

    /// Encrypt one block given as four little-endian words.
    #[inline(always)]
    fn encrypt_words(&self, w: [u32; 4]) -> [u32; 4] {
        let k = &self.k;
        let (mut a, mut b) = (w[0] ^ k[0], w[1] ^ k[1]);
        let (mut c, mut d) = (w[2] ^ k[2], w[3] ^ k[3]);
        for r in 0..8 {
            let rk = &k[8 + 4 * r..12 + 4 * r];
            let t0 = self.g(a);
            let t1 = self.g_rot8(b);
            c = (c ^ t0.wrapping_add(t1).wrapping_add(rk[0])).rotate_right(1);
            d = d.rotate_left(1) ^ t0.wrapping_add(t1.wrapping_mul(2)).wrapping_add(rk[1]);
            let t0 = self.g(c);
            let t1 = self.g_rot8(d);
            a = (a ^ t0.wrapping_add(t1).wrapping_add(rk[2])).rotate_right(1);
            b = b.rotate_left(1) ^ t0.wrapping_add(t1.wrapping_mul(2)).wrapping_add(rk[3]);
        }
        [c ^ k[4], d ^ k[5], a ^ k[6], b ^ k[7]]
    }

    /// Decrypt one block given as four little-endian words.
    #[inline(always)]
    fn decrypt_words(&self, w: [u32; 4]) -> [u32; 4] {
        let k = &self.k;
        let (mut c, mut d) = (w[0] ^ k[4], w[1] ^ k[5]);
        let (mut a, mut b) = (w[2] ^ k[6], w[3] ^ k[7]);
        for r in (0..8).rev() {
            let rk = &k[8 + 4 * r..12 + 4 * r];
            let t0 = self.g(c);
            let t1 = self.g_rot8(d);
            a = a.rotate_left(1) ^ t0.wrapping_add(t1).wrapping_add(rk[2]);
            b = (b ^ t0.wrapping_add(t1.wrapping_mul(2)).wrapping_add(rk[3])).rotate_right(1);
            let t0 = self.g(a);
            let t1 = self.g_rot8(b);
            c = c.rotate_left(1) ^ t0.wrapping_add(t1).wrapping_add(rk[0]);
            d = (d ^ t0.wrapping_add(t1.wrapping_mul(2)).wrapping_add(rk[1])).rotate_right(1);
        }
        [a ^ k[0], b ^ k[1], c ^ k[2], d ^ k[3]]
    }
}

/// Apply a word-level block function to every 16-byte block of `data`.
#[inline(always)]
fn for_each_block(data: &mut [u8], f: impl Fn([u32; 4]) -> [u32; 4]) {
    debug_assert_eq!(data.len() % 16, 0);
    for block in data.chunks_exact_mut(16) {
        let mut w = [0u32; 4];
        for (x, c) in w.iter_mut().zip(block.chunks_exact(4)) {
            *x = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let out = f(w);
        for (x, c) in out.iter().zip(block.chunks_exact_mut(4)) {
            c.copy_from_slice(&x.to_le_bytes());
        }
    }
}

impl BlockCipher for Twofish {
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) {
        for_each_block(data, |w| self.encrypt_words(w));
    }
    fn decrypt_blocks(&self, data: &mut [u8]) {
        for_each_block(data, |w| self.decrypt_words(w));
    }
}

impl Drop for Twofish {
    fn drop(&mut self) {
        self.k.zeroize();
        for table in self.s.iter_mut() {
            table.zeroize();
        }
    }
}

// Shared block-cipher test helpers; declared here so that blockcipher.rs stays untouched
// (it belongs in blockcipher.rs as `#[cfg(test)] mod testutil;`).
#[cfg(test)]
#[path = "testutil.rs"]
pub(super) mod testutil;

#[cfg(test)]
mod tests;
