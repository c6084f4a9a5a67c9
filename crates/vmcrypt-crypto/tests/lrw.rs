//! LRW (the kernel's `lrw(aes)` as dm-crypt uses it) through [`SectorCipher`]: the Linux
//! kernel's testmgr LRW-AES vectors (from the IEEE P1619 LRW-AES drafts and Ken Buchanan's
//! 512-byte vector), an independent reference built from OpenSSL AES-ECB and a bitwise
//! GF(2^128) product, and round trips over every 16-byte-block family.
mod common;

use openssl::symm::{Cipher, Mode};
use vmcrypt_crypto::{CipherSpec, SectorCipher};

fn spec(family: &str, mode: &str, key_bytes: usize) -> CipherSpec {
    CipherSpec::from_luks(family, mode, key_bytes).unwrap()
}

/// Plaintext of the single-block vectors: "0123456789ABCDEF".
const SINGLE_PT: &[u8; 16] = b"0123456789ABCDEF";

/// (key = AES key || K2, IV as a big-endian 128-bit block index, ciphertext).
const SINGLE_BLOCK: [(&str, u128, &str); 7] = [
    (
        "4562ac25f828176d4c268414b5680185258e2a05e73e9d03ee5a830ccc094c87",
        1,
        "f1b273cd65a3df5fe95d489254634eb8",
    ),
    (
        "59704714f557478cd779e80f548879440d48f0b7b15a53ea1caa6b29c2cafbaf",
        2,
        "00c82bae95bbcde5274f0769b260e136",
    ),
    (
        "d82a9134b26a565030fe69e2377f9847cdf90b160c648fb6b00d0d1bae85871f",
        2 << 32,
        "76322183ed8ff182f9596203690e5e01",
    ),
    (
        "0f6aeff8d3d2bb152583f73c1f012874cac6bc354d4a655490ae61cf7baebdccade494c54a29ae70",
        1,
        "9c0f152f55a2d8f0d67b8f9e2822bc41",
    ),
    (
        "8ad4ee102fbd81fff886ceac93c5adc6a01907c09df7bbdd5213b2b7f0ff11d8d608d0cd2eb1176f",
        2 << 32,
        "d4276a7f14913d65c860480287e33406",
    ),
    (
        "f8d476ffd646ee6c2384cb1c77d6195dfef1a9f37bbc8d21a79c21f8cb900289\
         a845348ec8c5b5f126f50e76fefd1b1e",
        1,
        "bd06b8e1db98899ec498e491cf1c702b",
    ),
    (
        "fb7615b23d80891dd470980bc79584c8b2fb64ce6097878d17fce45a49e830b7\
         6e7817e72d5e12d46064047af12f9e0c",
        2 << 32,
        "5b908ec1abdd675f3d698a9553c89ce5",
    ),
];

#[test]
fn kernel_single_block_vectors() {
    for (key, iv, want) in SINGLE_BLOCK {
        let key = hex::decode(key).unwrap();
        // plain64be puts be64(sector) in the IV's last 8 bytes: IV = iv as a be128.
        let sector = u64::try_from(iv).unwrap();
        let cipher = SectorCipher::new(&spec("aes", "lrw-plain64be", key.len()), &key).unwrap();
        // Blocks are independent, so block 0 of a sector starting with the vector's
        // plaintext is the vector's ciphertext.
        let mut data = common::bytes(512, 9);
        data[..16].copy_from_slice(SINGLE_PT);
        cipher.encrypt(sector, 512, &mut data).unwrap();
        assert_eq!(
            hex::encode(&data[..16]),
            want,
            "{}-byte key, iv {iv:#x}",
            key.len()
        );
        cipher.decrypt(sector, 512, &mut data).unwrap();
        assert_eq!(&data[..16], SINGLE_PT);
    }
}

/// Ken Buchanan's 512-byte LRW-AES-256 vector (kernel testmgr), IV 1.
const LONG_KEY: &str = "f8d476ffd646ee6c2384cb1c77d6195dfef1a9f37bbc8d21a79c21f8cb900289\
                        a845348ec8c5b5f126f50e76fefd1b1e";

fn long_hex(lines: &[&str]) -> Vec<u8> {
    hex::decode(lines.concat()).unwrap()
}

fn long_plaintext() -> Vec<u8> {
    long_hex(&[
        "0511b718abc62dac705df62294cde56c176bf61cf0f36ef850381f7149b657d6",
        "8fcb8d6be3a62990fe2a6282ae6d8bf6ad1e9e205f38be04da108eeda2a487ab",
        "da6bb40c75bad37cc9ac4231957cc904ebd56e32698adba615d73f4f2f666903",
        "9c1f540fde1ff3654c9612ed7c9203016fbc3593acf127f1b496825a5fb0a050",
        "89a48e664485ccfd331470e396b2c3d3bb545a1af974a2c52d6475ddb454e674",
        "8cd39d9e86ab5153b7933e6fd04e2c40f6a82e3e9df466a5761273441a56d772",
        "88cd218c4c0ffeda95e03aa6a58446cdd53e9d3ae267e6601ae2708558c21b09",
        "e1d72ccaada88ff9acb30edbca2ee2b85171d93c6cf156f8ea9cf1fb0ce6b710",
        "1cf8a97ce85335c1903e764a74a4212cf62c4e0f943a882e41096a337df6dd3f",
        "8d23317484eb886eccb9bc2283190722a52ddfa5f380857884396a6d6a994fa5",
        "15fe46b0e46ca5413cce8f426071a7750840658a82bff5437196a94d448a20be",
        "fa4dbbc07d319665e775e53efd923bc955bb167ef7c28ca4401de5ef0edfe49a",
        "627365fd4663253d2bafe564fea55ccf24f3b4ac64badf4bc6967d812d8d97f7",
        "c5687784322bcc857496f0127761b9eb71aa82cb1cdb89c8c6b5e35c7d390724",
        "da398745c02bbb01acbc2a5c7ffce8ce6d9c6fedd3c1a1d6c555a9662fe1c832",
        "a65da43a9873e845a4c7a8b4f61303f6e92ec4290f84dbc421c4c2756789370a",
    ])
}

fn long_ciphertext() -> Vec<u8> {
    long_hex(&[
        "1a1da930adf92f9bb61daeeff02ff85a393cbf2ab245b2231b633ccfaabecf4e",
        "fae829c220682b3c2e8bf76e25bde33d6627d6afd6643ee3e8584697395107de",
        "cb37bca9c05f75c30e84231d16d41c599c1a0255ab3a971ddfddc70651d770ae",
        "23c68cf51ea0e582b8b2bf04a0328e68ebaf6e2d94222fce4cb559e2a22fa098",
        "1a97c6d4b50059f2841472b19a6ea37fea20e7cb65773adfc8976715c22a27cc",
        "1855a1240b2424af5bec68b8c8f5ba63ffed89ced53d88f325ef057c3aefebd8",
        "7a320dd11e5859999025b526b0e32b6c4ca98b844f5e0150413058c56274521d",
        "45246a42644f971ca866b56d79d40d48c55ff39032dddde1e4a99ffcc3525a46",
        "e481849536597a6baab360adce9f9f28e0017522c44ea9625c620d00cb13e843",
        "72d42d5346b5d1162218df3433f5d61cb879789794ff72134c27fccbbf0153a6",
        "b4506ededfb543a459df52f97ce0116f2d148e24612ce117ccce510c198a8230",
        "94d53d6a53065ebdb7ebfafd2751de851e865311539400ee2b8c082abfddae11",
        "cb1ea2079a80cf629b09dc953c968eb109bde4ebdbca707a9efa3118453c2133",
        "b0b32beaf3712de103ad1b48d46727f062e43dfb9b0876e7dd2b0139045a587a",
        "f71190ecbd515c326bd73539026bf2a6d00d07e106c45b7de46ad7ee151f83b4",
        "a3a75ec390b7efd3b74ff8924cb73c29cd7e2b5d43ea42e7743f7d588875de3e",
    ])
}

#[test]
fn kernel_512_byte_vector() {
    let key = hex::decode(LONG_KEY).unwrap();
    let cipher = SectorCipher::new(&spec("aes", "lrw-plain64be", 48), &key).unwrap();
    let (pt, ct) = (long_plaintext(), long_ciphertext());
    let mut data = pt.clone();
    cipher.encrypt(1, 512, &mut data).unwrap();
    assert_eq!(hex::encode(&data), hex::encode(&ct));
    cipher.decrypt(1, 512, &mut data).unwrap();
    assert_eq!(data, pt);
}

/// Bit-by-bit product in GF(2^128), bbe convention (bit k of the big-endian integer is
/// the coefficient of x^k), modulo x^128 + x^7 + x^2 + x + 1.
fn gf_mul(a: u128, b: u128) -> u128 {
    let (mut acc, mut a) = (0u128, a);
    for k in 0..128 {
        if (b >> k) & 1 == 1 {
            acc ^= a;
        }
        let carry = a >> 127;
        a = (a << 1) ^ (carry * 0x87);
    }
    acc
}

fn aes_ecb(key: &[u8]) -> Cipher {
    match key.len() {
        16 => Cipher::aes_128_ecb(),
        24 => Cipher::aes_192_ecb(),
        32 => Cipher::aes_256_ecb(),
        n => panic!("no AES-{}", n * 8),
    }
}

/// dm-crypt's IV for `sector` (AES, 16-byte IVs) for the generators used below.
fn reference_iv(ivgen: &str, key: &[u8], sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    match ivgen {
        "plain" => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
        "plain64" => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        "benbi" => iv[8..].copy_from_slice(&((sector << 5) + 1).to_be_bytes()),
        "essiv:sha256" => {
            iv[..8].copy_from_slice(&sector.to_le_bytes());
            let salt = openssl::sha::sha256(key);
            let c = common::ossl(Cipher::aes_256_ecb(), Mode::Encrypt, &salt, None, &iv);
            iv.copy_from_slice(&c);
        }
        other => panic!("no reference for {other}"),
    }
    iv
}

/// LRW-AES, one block at a time: C = E_K1(P ^ T) ^ T, T = K2 * (I + j).
fn reference_lrw(ivgen: &str, key: &[u8], first: u64, sector_size: usize, data: &[u8]) -> Vec<u8> {
    let (k1, k2) = key.split_at(key.len() - 16);
    let k2 = u128::from_be_bytes(k2.try_into().unwrap());
    let mut out = Vec::with_capacity(data.len());
    for (s, sector) in data.chunks(sector_size).enumerate() {
        let iv_sector = first + (s * sector_size / 512) as u64;
        let i = u128::from_be_bytes(reference_iv(ivgen, key, iv_sector));
        for (j, block) in sector.chunks(16).enumerate() {
            let t = gf_mul(k2, i.wrapping_add(j as u128)).to_be_bytes();
            let x: Vec<u8> = block.iter().zip(&t).map(|(p, t)| p ^ t).collect();
            let c = common::ossl(aes_ecb(k1), Mode::Encrypt, k1, None, &x);
            out.extend(c.iter().zip(&t).map(|(c, t)| c ^ t));
        }
    }
    out
}

#[test]
fn matches_openssl_reference() {
    let cases = [
        ("plain64", 32, 512, 0u64, 3),
        ("plain64", 48, 4096, 0x1234_5678_9abc, 2),
        ("plain64", 40, 512, u64::MAX - 1, 2),
        ("benbi", 32, 512, 7, 3),
        ("plain", 32, 512, (1 << 32) - 1, 2),
        ("essiv:sha256", 48, 1024, 99, 3),
    ];
    for (n, (ivgen, key_len, sector_size, first, sectors)) in cases.into_iter().enumerate() {
        let key = common::bytes(key_len, 40 + n as u8);
        let plain = common::bytes(sector_size * sectors, 60 + n as u8);
        let cipher =
            SectorCipher::new(&spec("aes", &format!("lrw-{ivgen}"), key_len), &key).unwrap();
        let mut data = plain.clone();
        cipher.encrypt(first, sector_size, &mut data).unwrap();
        let want = reference_lrw(ivgen, &key, first, sector_size, &plain);
        assert!(data == want, "lrw-{ivgen} {key_len} {sector_size} {first}");
        cipher.decrypt(first, sector_size, &mut data).unwrap();
        assert!(data == plain);
    }
}

#[test]
fn round_trips_and_split_calls_every_family() {
    for family in ["aes", "twofish", "serpent"] {
        for (ivgen, key_len) in [("plain64", 32), ("benbi", 40), ("essiv:sha256", 48)] {
            let s = spec(family, &format!("lrw-{ivgen}"), key_len);
            let key = common::bytes(key_len, 1);
            let cipher = SectorCipher::new(&s, &key).unwrap();
            // More than one 16 KiB internal chunk.
            let plain = common::bytes(40 * 1024, 2);
            let mut whole = plain.clone();
            cipher.encrypt(1000, 512, &mut whole).unwrap();
            assert_ne!(whole, plain, "{s}");
            // Sector by sector gives the same ciphertext.
            let mut pieces = plain.clone();
            for (k, sector) in pieces.chunks_mut(512).enumerate() {
                cipher.encrypt(1000 + k as u64, 512, sector).unwrap();
            }
            assert!(pieces == whole, "{s} split");
            cipher.decrypt(1000, 512, &mut whole).unwrap();
            assert!(whole == plain, "{s} round trip");
            // A different tweak key changes every block.
            let mut other_key = key.clone();
            *other_key.last_mut().unwrap() ^= 1;
            let other = SectorCipher::new(&s, &other_key).unwrap();
            let mut c2 = plain.clone();
            other.encrypt(1000, 512, &mut c2).unwrap();
            cipher.encrypt(1000, 512, &mut whole).unwrap();
            let same = c2.chunks(16).zip(whole.chunks(16)).filter(|(a, b)| a == b);
            assert_eq!(same.count(), 0, "{s} tweak key unused");
        }
    }
}

#[test]
fn bad_keys_are_errors() {
    let s = spec("aes", "lrw-plain64", 32);
    assert!(SectorCipher::new(&s, &[0u8; 16]).is_err());
    assert!(SectorCipher::new(&s, &[0u8; 48]).is_err());
}
