//! AES key expansion (FIPS-197 section 5.2) and the round keys of the equivalent inverse
//! cipher (FIPS-197 section 5.3.5), as plain byte arrays that the AES-NI and VAES kernels
//! load. Written here (rather than taken from the `aes` crate) because the hardware
//! kernels need the raw round keys, which the crate does not expose.
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Most rounds of any AES variant (AES-256), so at most 15 round keys.
pub(crate) const MAX_ROUNDS: usize = 14;

/// Multiply two elements of GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1.
const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// The AES S-box, computed at compile time: multiplicative inverse (a^254, 0 -> 0)
/// followed by the affine map b ^ rotl(b,1) ^ rotl(b,2) ^ rotl(b,3) ^ rotl(b,4) ^ 0x63.
const SBOX: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut x = 0usize;
    while x < 256 {
        // a^254 by square-and-multiply: 254 = 0b1111_1110.
        let a = x as u8;
        let mut inv = 1u8;
        let mut i = 0;
        while i < 8 {
            inv = gf_mul(inv, inv);
            if (254u32 >> (7 - i)) & 1 != 0 {
                inv = gf_mul(inv, a);
            }
            i += 1;
        }
        let b = inv;
        table[x] =
            b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        x += 1;
    }
    table
};

/// Expanded AES round keys for one key: `enc[0..=rounds]` for the cipher and
/// `dec[0..=rounds]` for the equivalent inverse cipher (as `aesdec`/`aesdeclast` use them).
/// Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct RoundKeys {
    pub(crate) enc: [[u8; 16]; MAX_ROUNDS + 1],
    pub(crate) dec: [[u8; 16]; MAX_ROUNDS + 1],
    pub(crate) rounds: usize,
}

impl RoundKeys {
    /// Expand a 16, 24 or 32-byte key. Panics on other lengths (callers check).
    pub(crate) fn new(key: &[u8]) -> Self {
        let nk = key.len() / 4;
        assert!(
            matches!(key.len(), 16 | 24 | 32),
            "AES key length {}",
            key.len()
        );
        let rounds = nk + 6;
        let total = 4 * (rounds + 1);
        let mut w = [[0u8; 4]; 4 * (MAX_ROUNDS + 1)];
        for (i, word) in w.iter_mut().take(nk).enumerate() {
            word.copy_from_slice(&key[4 * i..4 * i + 4]);
        }
        let mut rcon = 1u8;
        for i in nk..total {
            let mut t = w[i - 1];
            if i % nk == 0 {
                t = [
                    SBOX[t[1] as usize] ^ rcon,
                    SBOX[t[2] as usize],
                    SBOX[t[3] as usize],
                    SBOX[t[0] as usize],
                ];
                rcon = gf_mul(rcon, 2);
            } else if nk > 6 && i % nk == 4 {
                t = t.map(|b| SBOX[b as usize]);
            }
            for j in 0..4 {
                w[i][j] = w[i - nk][j] ^ t[j];
            }
        }
        let mut keys = RoundKeys {
            enc: [[0; 16]; MAX_ROUNDS + 1],
            dec: [[0; 16]; MAX_ROUNDS + 1],
            rounds,
        };
        for r in 0..=rounds {
            for c in 0..4 {
                keys.enc[r][4 * c..4 * c + 4].copy_from_slice(&w[4 * r + c]);
            }
        }
        w.zeroize();
        keys.dec[0] = keys.enc[rounds];
        keys.dec[rounds] = keys.enc[0];
        for r in 1..rounds {
            keys.dec[r] = inv_mix_columns(&keys.enc[rounds - r]);
        }
        keys
    }
}

/// InvMixColumns applied to a 16-byte state (four 4-byte columns).
fn inv_mix_columns(s: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for c in 0..4 {
        let a = &s[4 * c..4 * c + 4];
        for r in 0..4 {
            out[4 * c + r] = gf_mul(a[r], 0x0e)
                ^ gf_mul(a[(r + 1) % 4], 0x0b)
                ^ gf_mul(a[(r + 2) % 4], 0x0d)
                ^ gf_mul(a[(r + 3) % 4], 0x09);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbox_known_entries() {
        // FIPS-197 figure 7: S(00)=63, S(01)=7c, S(53)=ed, S(ff)=16.
        assert_eq!(SBOX[0x00], 0x63);
        assert_eq!(SBOX[0x01], 0x7c);
        assert_eq!(SBOX[0x53], 0xed);
        assert_eq!(SBOX[0xff], 0x16);
    }

    #[test]
    fn fips197_appendix_a_last_round_keys() {
        // FIPS-197 Appendix A.1 (AES-128): w[40..43] = d014f9a8 c9ee2589 e13f0cc8 b6630ca6.
        let k = RoundKeys::new(&hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap());
        assert_eq!(k.rounds, 10);
        assert_eq!(hex::encode(k.enc[10]), "d014f9a8c9ee2589e13f0cc8b6630ca6");
        // A.2 (AES-192): w[48..51] = e98ba06f 448c773c 8ecc7204 01002202.
        let k = RoundKeys::new(
            &hex::decode("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b").unwrap(),
        );
        assert_eq!(k.rounds, 12);
        assert_eq!(hex::encode(k.enc[12]), "e98ba06f448c773c8ecc720401002202");
        // A.3 (AES-256): w[56..59] = fe4890d1 e6188d0b 046df344 706c631e.
        let k = RoundKeys::new(
            &hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap(),
        );
        assert_eq!(k.rounds, 14);
        assert_eq!(hex::encode(k.enc[14]), "fe4890d1e6188d0b046df344706c631e");
    }

    #[test]
    fn inv_mix_columns_inverts_mix_columns() {
        // FIPS-197 / common MixColumns test column: db 13 53 45 -> 8e 4d a1 bc.
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[0x8e, 0x4d, 0xa1, 0xbc]);
        assert_eq!(&inv_mix_columns(&s)[..4], &[0xdb, 0x13, 0x53, 0x45]);
    }
}
