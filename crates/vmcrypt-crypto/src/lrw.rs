//! LRW (Liskov-Rivest-Wagner) tweak arithmetic, as the Linux kernel's `lrw(...)` template
//! runs it for dm-crypt's `aes-lrw-*` ciphers.
//!
//! The volume key is `K1 || K2`: K1 keys the block cipher, the last 16 bytes K2 are the
//! tweak key. The sector's 16-byte IV is read as a big-endian 128-bit block index `I` of
//! the sector's first block, incremented by one per 16-byte block. Block `j` becomes
//! `C = E_K1(P ^ T) ^ T` with `T = K2 * I` in GF(2^128), in the kernel's "bbe"
//! convention: the 16 bytes are a big-endian integer whose bit `k` is the coefficient of
//! `x^k`, reduced modulo `x^128 + x^7 + x^2 + x + 1`.
//!
//! `LrwKey` holds per-key tables: `K2 * (n << 4w)` for every nibble `n` and position
//! `w` (a full product is 32 lookups, once per sector), and `K2 * (2^(k+1) - 1)` (the
//! XOR of `I` and `I + 1` when `I` ends in `k` one bits), so moving to the next block
//! costs one XOR. Every table index derives from the IV, never from the key.
use zeroize::Zeroizing;

/// Length of the tweak key K2 in bytes (one GF(2^128) element).
pub const TWEAK_KEY_BYTES: usize = 16;

/// Nibble positions in a 128-bit block index.
const WINDOWS: usize = 32;

/// The tweak key K2 expanded into multiplication tables; wiped on drop.
pub(crate) struct LrwKey {
    /// `nibble[16 * w + n] = K2 * (n << 4w)`.
    nibble: Zeroizing<Vec<u128>>,
    /// `step[k] = K2 * (2^(k+1) - 1)`.
    step: Zeroizing<Vec<u128>>,
}

/// Multiply by `x` in the bbe convention: shift towards the high end and reduce.
fn mul_x(a: u128) -> u128 {
    (a << 1) ^ (((a as i128 >> 127) as u128) & 0x87)
}

impl LrwKey {
    /// Expand the 16-byte tweak key `k2`.
    pub(crate) fn new(k2: &[u8; TWEAK_KEY_BYTES]) -> Self {
        // powers[i] = K2 * x^i.
        let mut powers = Zeroizing::new(vec![0u128; 128]);
        let mut p = Zeroizing::new(u128::from_be_bytes(*k2));
        for slot in powers.iter_mut() {
            *slot = *p;
            *p = mul_x(*p);
        }
        let mut nibble = Zeroizing::new(vec![0u128; WINDOWS * 16]);
        for (w, table) in nibble.chunks_exact_mut(16).enumerate() {
            for n in 1..16usize {
                let low = n & (n - 1);
                let bit = (n ^ low).trailing_zeros() as usize;
                table[n] = table[low] ^ powers[4 * w + bit];
            }
        }
        let mut step = Zeroizing::new(vec![0u128; 128]);
        let mut acc = 0u128;
        for (slot, power) in step.iter_mut().zip(powers.iter()) {
            acc ^= power;
            *slot = acc;
        }
        Self { nibble, step }
    }

    /// `K2 * i` in GF(2^128).
    pub(crate) fn mul(&self, i: u128) -> u128 {
        let mut acc = 0u128;
        for (w, table) in self.nibble.chunks_exact(16).enumerate() {
            acc ^= table[((i >> (4 * w)) & 15) as usize];
        }
        acc
    }

    /// Write the tweaks of consecutive blocks (`out.len() / 16` of them) starting at block
    /// index `i` into `out`, big-endian.
    pub(crate) fn tweaks(&self, mut i: u128, out: &mut [u8]) {
        let mut t = self.mul(i);
        let mut blocks = out.chunks_exact_mut(16);
        if let Some(first) = blocks.next() {
            first.copy_from_slice(&t.to_be_bytes());
        }
        for block in blocks {
            // I ^ (I + 1) = 2^(k+1) - 1 where k = number of trailing one bits of I
            // (k = 127 covers the wrap from all-ones to zero).
            t ^= self.step[(i.trailing_ones() as usize).min(127)];
            i = i.wrapping_add(1);
            block.copy_from_slice(&t.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit carry-less multiplication modulo x^128 + x^7 + x^2 + x + 1.
    fn slow_mul(a: u128, b: u128) -> u128 {
        let (mut acc, mut a) = (0u128, a);
        for k in 0..128 {
            if (b >> k) & 1 == 1 {
                acc ^= a;
            }
            a = mul_x(a);
        }
        acc
    }

    fn sample(seed: u64) -> u128 {
        // splitmix64, twice.
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        (u128::from(next()) << 64) | u128::from(next())
    }

    #[test]
    fn reduction_polynomial() {
        // x^127 * x = x^128 = x^7 + x^2 + x + 1.
        assert_eq!(mul_x(1 << 127), 0x87);
        assert_eq!(mul_x(0x8000_0000_0000_0000_0000_0000_0000_0001), 0x85);
    }

    #[test]
    fn table_product_matches_bitwise_product() {
        for s in 0..50 {
            let k2 = sample(s);
            let key = LrwKey::new(&k2.to_be_bytes());
            for i in [0, 1, 2, u128::MAX, 1 << 127, sample(1000 + s)] {
                assert_eq!(key.mul(i), slow_mul(k2, i), "k2 {k2:x} i {i:x}");
            }
        }
    }

    #[test]
    fn multiplication_commutes() {
        let (a, b) = (sample(7), sample(8));
        assert_eq!(slow_mul(a, b), slow_mul(b, a));
    }

    #[test]
    fn incremental_tweaks_equal_direct_products() {
        let k2 = sample(3);
        let key = LrwKey::new(&k2.to_be_bytes());
        let starts = [0, 5, 0xff, u128::MAX - 20, (1u128 << 64) - 3, sample(4)];
        for start in starts {
            let mut out = vec![0u8; 16 * 40];
            key.tweaks(start, &mut out);
            for (j, t) in out.chunks_exact(16).enumerate() {
                let i = start.wrapping_add(j as u128);
                assert_eq!(t, slow_mul(k2, i).to_be_bytes(), "start {start:x} j {j}");
            }
        }
    }
}
