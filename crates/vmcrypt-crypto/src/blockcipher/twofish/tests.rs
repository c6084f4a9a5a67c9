//! Twofish known-answer tests (Twofish paper / AES submission), the QEMU-made LUKS1
//! twofish-xts-plain64 image, and round trips.
use super::Twofish;
use crate::blockcipher::BlockCipher;
use crate::blockcipher::twofish::testutil::{
    pseudo_random, qemu_payload, sha256_hex, unhex, xts_decrypt_sectors,
};

fn encrypt_one(key: &[u8], pt: &[u8]) -> Vec<u8> {
    let c = Twofish::new(key).unwrap();
    let mut b = pt.to_vec();
    c.encrypt_blocks(&mut b);
    let mut back = b.clone();
    c.decrypt_blocks(&mut back);
    assert_eq!(back, pt, "decrypt(encrypt(x)) for key {}", hex::encode(key));
    b
}

/// Twofish paper, Appendix A ("Twofish test vectors"): zero plaintext.
#[test]
fn paper_appendix_a() {
    let cases = [
        (
            "00000000000000000000000000000000",
            "9F589F5CF6122C32B6BFEC2F2AE8C35A",
        ),
        (
            "0123456789ABCDEFFEDCBA98765432100011223344556677",
            "CFD1D2E5A9BE9CDF501F13B892BD2248",
        ),
        (
            "0123456789ABCDEFFEDCBA987654321000112233445566778899AABBCCDDEEFF",
            "37527BE0052334B89F0CFCCAE87CFA20",
        ),
    ];
    for (key, ct) in cases {
        assert_eq!(encrypt_one(&unhex(key), &[0u8; 16]), unhex(ct), "key {key}");
    }
}

/// The iterated tables of the AES submission (ecb_tbl.txt): start with key = pt = 0;
/// each step the new key is the old plaintext followed by the head of the old key and
/// the new plaintext is the old ciphertext. Checks I=1..3 (128-bit) and I=49 for every
/// key size (the I=49 values as quoted from ecb_ival.txt by strongSwan's test suite).
#[test]
fn ecb_tbl_iterated() {
    let first_128 = [
        "9F589F5CF6122C32B6BFEC2F2AE8C35A",
        "D491DB16E7B1C39E86CB086B789F5419",
        "019F9809DE1711858FAAC3A3BA20FBC3",
    ];
    let i49 = [
        (
            16,
            "BCA724A54533C6987E14AA827952F921",
            "6B459286F3FFD28D49F15B1581B08E42",
            "5D9D4EEFFA9151575524F115815A12E0",
        ),
        (
            24,
            "FB66522C332FCC4C042ABE32FA9E902FDEA4F3DA75EC7A8E",
            "F0AB73301125FA21EF70BE5385FB76B6",
            "E75449212BEEF9F4A390BD860A640941",
        ),
        (
            32,
            "248A7F3528B168ACFDD1386E3F51E30C2E2158BC3E5FC714C1EEECA0EA696D48",
            "431058F4DBC7F734DA4F02F04CC4F459",
            "37FE26FF1CF66175F5DDF4C33B97A205",
        ),
    ];
    for (len, key49, pt49, ct49) in i49 {
        let mut key = vec![0u8; len];
        let mut pt = vec![0u8; 16];
        for i in 1..=49 {
            let ct = encrypt_one(&key, &pt);
            if len == 16 && i <= 3 {
                assert_eq!(ct, unhex(first_128[i - 1]), "128-bit I={i}");
            }
            if i == 49 {
                assert_eq!(key, unhex(key49), "{len}-byte key at I=49");
                assert_eq!(pt, unhex(pt49), "{len}-byte pt at I=49");
                assert_eq!(ct, unhex(ct49), "{len}-byte ct at I=49");
            }
            let mut next = pt.clone();
            next.extend_from_slice(&key[..len - 16]);
            key = next;
            pt = ct;
        }
    }
}

/// Bouncy Castle's TwofishTest values (key 00 01 .., plaintext 00 01 .. 0f).
#[test]
fn counting_key_and_plaintext() {
    let key = (0u8..32).collect::<Vec<_>>();
    let pt = (0u8..16).collect::<Vec<_>>();
    for (len, ct) in [
        (16, "9fb63337151be9c71306d159ea7afaa4"),
        (24, "95accc625366547617f8be4373d10cd7"),
        (32, "8ef0272c42db838bcf7b07af0ec30f38"),
    ] {
        assert_eq!(encrypt_one(&key[..len], &pt), unhex(ct), "{len}-byte key");
    }
}

/// QEMU-made LUKS1 twofish-xts-plain64 image (see /work/shared/vectors/qemu/README.txt):
/// decrypting the payload with the master key must give the published plaintext hash.
#[test]
fn qemu_luks1_twofish256_xts_plain64() {
    let mk = unhex(
        "5f14d6d64260a86244849a1e5bfa7ed4d1b908aab2924902ddb58fb88142eba0\
         72e20fa310888c2b16948855790dd533e129d26fafdc0dedd05cdcf82a7f17bb",
    );
    let k1 = Twofish::new(&mk[..32]).unwrap();
    let k2 = Twofish::new(&mk[32..]).unwrap();
    let mut data = qemu_payload("luks1-twofish256-xts-plain64-sha512.luks", 2068480, 524288);
    xts_decrypt_sectors(&k1, &k2, &mut data);
    assert_eq!(
        sha256_hex(&data),
        "b807dfe16c93e99a32903d7653b1c3ca97959f96e42973f06353c4d7942cbcab"
    );
}

/// Multi-block buffers: ECB over a buffer equals block-by-block, and decrypt inverts it.
#[test]
fn round_trip_multi_block() {
    for (n, len) in [(1u64, 16usize), (2, 24), (3, 32)] {
        let key = pseudo_random(n, len);
        let c = Twofish::new(&key).unwrap();
        let plain = pseudo_random(100 + n, 16 * 37);
        let mut buf = plain.clone();
        c.encrypt_blocks(&mut buf);
        assert_ne!(buf, plain);
        for (i, block) in plain.chunks_exact(16).enumerate() {
            let mut one = block.to_vec();
            c.encrypt_blocks(&mut one);
            assert_eq!(one, buf[16 * i..16 * i + 16], "block {i}");
        }
        c.decrypt_blocks(&mut buf);
        assert_eq!(buf, plain, "{len}-byte key");
    }
}

#[test]
fn rejects_bad_key_lengths() {
    for len in [0, 8, 15, 17, 31, 33, 64] {
        let err = Twofish::new(&vec![0u8; len]).err().expect("must fail");
        assert!(err.to_string().contains(&len.to_string()), "{err}");
    }
}
