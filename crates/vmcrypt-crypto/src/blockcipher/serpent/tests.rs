//! Serpent known-answer tests in the kernel/libgcrypt/nettle byte order, the QEMU-made
//! LUKS1 serpent-cbc-plain image, key padding and round trips.
use super::Serpent;
use crate::blockcipher::BlockCipher;
use crate::blockcipher::twofish::testutil::{
    cbc_plain_decrypt_sectors, pseudo_random, qemu_payload, sha256_hex, unhex,
};

fn encrypt_one(key: &[u8], pt: &[u8]) -> Vec<u8> {
    let c = Serpent::new(key).unwrap();
    let mut b = pt.to_vec();
    c.encrypt_blocks(&mut b);
    let mut back = b.clone();
    c.decrypt_blocks(&mut back);
    assert_eq!(back, pt, "decrypt(encrypt(x)) for key {}", hex::encode(key));
    b
}

fn reversed(hex: &str) -> Vec<u8> {
    let mut v = unhex(hex);
    v.reverse();
    v
}

/// libgcrypt's own Serpent self-test vectors (as also used by nettle's test suite);
/// libgcrypt uses the same little-endian convention as the Linux kernel, so key,
/// plaintext and ciphertext bytes are taken as written.
#[test]
fn libgcrypt_vectors() {
    let cases = [
        (
            "00000000000000000000000000000000",
            "D29D576FCEA3A3A7ED9099F29273D78E",
            "B2288B968AE8B08648D1CE9606FD992D",
        ),
        (
            "000000000000000000000000000000000000000000000000",
            "D29D576FCEABA3A7ED9899F2927BD78E",
            "130E353E1037C22405E8FAEFB2C3C3E9",
        ),
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "D095576FCEA3E3A7ED98D9F29073D78E",
            "B90EE5862DE69168F2BDD5125B45472B",
        ),
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00000000010000000200000003000000",
            "2061A42782BD52EC691EC383B03BA77C",
        ),
    ];
    for (key, pt, ct) in cases {
        assert_eq!(encrypt_one(&unhex(key), &unhex(pt)), unhex(ct), "key {key}");
    }
}

/// NESSIE "Set 4" vectors from the Serpent authors' verified test-vector files; these
/// are printed in the same byte order the kernel uses, so no adjustment is needed.
#[test]
fn nessie_set4_vectors() {
    let cases = [
        (
            "000102030405060708090A0B0C0D0E0F",
            "00112233445566778899AABBCCDDEEFF",
            "563E2CF8740A27C164804560391E9B27",
        ),
        (
            "2BD6459F82C5B300952C49104881FF48",
            "EA024714AD5C4D84EA024714AD5C4D84",
            "92D7F8EF2C36C53409F275902F06539F",
        ),
        (
            "000102030405060708090A0B0C0D0E0F1011121314151617",
            "00112233445566778899AABBCCDDEEFF",
            "6AB816C82DE53B93005008AFA2246A02",
        ),
        (
            "2BD6459F82C5B300952C49104881FF482BD6459F82C5B300",
            "EA024714AD5C4D84EA024714AD5C4D84",
            "827B18C2678A239DFC5512842000E204",
        ),
        (
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
            "00112233445566778899AABBCCDDEEFF",
            "2868B7A2D28ECD5E4FDEFAC3C4330074",
        ),
        (
            "2BD6459F82C5B300952C49104881FF482BD6459F82C5B300952C49104881FF48",
            "EA024714AD5C4D84EA024714AD5C4D84",
            "3E507730776B93FDEA661235E1DD99F0",
        ),
    ];
    for (key, pt, ct) in cases {
        assert_eq!(encrypt_one(&unhex(key), &unhex(pt)), unhex(ct), "key {key}");
    }
}

/// First entries of the AES-submission ecb_vk.txt / ecb_vt.txt tables. Those files print
/// key, plaintext and ciphertext as big numbers (most significant byte first), so every
/// value is byte-reversed to get the kernel's little-endian byte strings.
#[test]
fn aes_submission_vk_vt_byte_reversed() {
    let z16 = "00000000000000000000000000000000";
    let one = "80000000000000000000000000000000";
    let cases = [
        (one.to_string(), z16, "49AFBFAD9D5A34052CD8FFA5986BD2DD"),
        (z16.to_string(), one, "10B5FFB720B8CB9002A1142B0BA2E94A"),
        (
            format!("{one}0000000000000000"),
            z16,
            "E78E5402C7195568AC3678F7A3F60C66",
        ),
        (
            format!("{z16}0000000000000000"),
            one,
            "B10B271BA25257E1294F2B51F076D0D9",
        ),
        (
            format!("{one}{z16}"),
            z16,
            "ABED96E766BF28CBC0EBD21A82EF0819",
        ),
        (
            format!("{z16}{z16}"),
            one,
            "DA5A7992B1B4AE6F8C004BC8A7DE5520",
        ),
    ];
    for (key, pt, ct) in cases {
        assert_eq!(
            encrypt_one(&reversed(&key), &reversed(pt)),
            reversed(ct),
            "key {key}"
        );
    }
}

/// Short keys are padded with one 1 bit: a 16/24-byte key K behaves like the 32-byte
/// key K || 01 || 00...
#[test]
fn short_key_padding() {
    let pt = pseudo_random(7, 64);
    for len in [16, 24] {
        let key = pseudo_random(len as u64, len);
        let mut long = key.clone();
        long.push(1);
        long.resize(32, 0);
        assert_eq!(
            encrypt_one(&key, &pt),
            encrypt_one(&long, &pt),
            "{len}-byte key"
        );
    }
}

/// QEMU-made LUKS1 serpent-cbc-plain image (see /work/shared/vectors/qemu/README.txt):
/// decrypting the payload with the master key must give the published plaintext hash.
#[test]
fn qemu_luks1_serpent128_cbc_plain() {
    let c = Serpent::new(&unhex("fa2d435c73b274a09a56f3ace4d443a1")).unwrap();
    let mut data = qemu_payload("luks1-serpent128-cbc-plain-sha256.luks", 528384, 524288);
    cbc_plain_decrypt_sectors(&c, &mut data);
    assert_eq!(
        sha256_hex(&data),
        "3d32c0dfee37f2cc9a3edd2dbc67b4111d766748b2c98e70c1a9527ca544b818"
    );
}

/// Buffers of every length up to a few batches: ECB over a buffer equals block by
/// block (covers full batches and padded tails), and decrypt inverts it.
#[test]
fn round_trip_multi_block() {
    for (n, len) in [(1u64, 16usize), (2, 24), (3, 32)] {
        let key = pseudo_random(n, len);
        let c = Serpent::new(&key).unwrap();
        for blocks in [1usize, 3, 8, 9, 16, 37] {
            let plain = pseudo_random(100 + n, 16 * blocks);
            let mut buf = plain.clone();
            c.encrypt_blocks(&mut buf);
            for (i, block) in plain.chunks_exact(16).enumerate() {
                let mut one = block.to_vec();
                c.encrypt_blocks(&mut one);
                assert_eq!(one, buf[16 * i..16 * i + 16], "block {i} of {blocks}");
            }
            c.decrypt_blocks(&mut buf);
            assert_eq!(buf, plain, "{len}-byte key, {blocks} blocks");
        }
    }
}

#[test]
fn rejects_bad_key_lengths() {
    for len in [0, 8, 15, 17, 31, 33, 64] {
        let err = Serpent::new(&vec![0u8; len]).err().expect("must fail");
        assert!(err.to_string().contains(&len.to_string()), "{err}");
    }
}
