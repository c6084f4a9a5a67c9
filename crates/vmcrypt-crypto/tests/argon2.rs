//! Argon2 known answers: RFC 9106 section 5 through the `argon2` crate (secret + AD, to
//! check how we drive it), the reference `argon2` CLI (libargon2) for the no-secret case
//! LUKS2 uses, and real cryptsetup LUKS2 key slots (derive, decrypt the key material, AF
//! merge, compare with the volume key README.txt lists). Plus limits and calibration.
mod common;

use std::time::Duration;
use vmcrypt_crypto::argon::{
    Argon2Cost, Argon2Type, KdfLimits, argon2, calibrate_argon2, default_argon2_lanes,
    default_argon2_memory_kib,
};
use vmcrypt_crypto::{CipherSpec, HashAlg, SectorCipher, af};
use vmcrypt_error::ErrorKind;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

/// RFC 9106 section 5.2 / 5.3: password 32 x 01, salt 16 x 02, secret 8 x 03, associated
/// data 12 x 04, t = 3, m = 32 KiB, p = 4, 32-byte tag, version 0x13.
#[test]
fn rfc9106_vectors_through_the_crate() {
    let cases = [
        (
            argon2::Algorithm::Argon2i,
            "c8 14 d9 d1 dc 7f 37 aa 13 f0 d7 7f 24 94 bd a1 \
             c8 de 6b 01 6d d3 88 d2 99 52 a4 c4 67 2b 6c e8",
        ),
        (
            argon2::Algorithm::Argon2id,
            "0d 64 0d f5 8d 78 76 6c 08 c0 37 a3 4a 8b 53 c9 \
             d0 1e f0 45 2d 75 b6 5e b5 25 20 e9 6b 01 e6 59",
        ),
    ];
    for (alg, tag) in cases {
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .data(argon2::AssociatedData::new(&[0x04; 12]).unwrap())
            .output_len(32)
            .build()
            .unwrap();
        let ctx = argon2::Argon2::new_with_secret(&[0x03; 8], alg, argon2::Version::V0x13, params)
            .unwrap();
        let mut out = [0u8; 32];
        ctx.hash_password_into(&[0x01; 32], &[0x02; 16], &mut out)
            .unwrap();
        assert_eq!(out.to_vec(), unhex(tag), "{alg:?}");
    }
}

/// Known answers from the reference implementation's CLI (Debian package `argon2`,
/// 0~20171227-0.3+deb12u1), each produced by the command in the comment
/// (`-r` prints the raw tag in hex, version 0x13 is its default).
#[test]
fn libargon2_cli_known_answers() {
    use Argon2Type::{Argon2i, Argon2id};
    let cases: [(&str, &str, Argon2Type, u32, u32, u32, &str); 5] = [
        // echo -n password | argon2 somesalt -id -t 2 -k 65536 -p 4 -l 32 -r
        (
            "password",
            "somesalt",
            Argon2id,
            2,
            65536,
            4,
            "1a9677b0afe81fda7b548895e7a1bfeb8668ffc19a530e37e088a668fab1c02a",
        ),
        // echo -n password | argon2 somesalt -i -t 3 -k 4096 -p 1 -l 32 -r
        (
            "password",
            "somesalt",
            Argon2i,
            3,
            4096,
            1,
            "896874eaf0fc172dbbc1ff67a67e855d68825f82baa56e947b5067cf3d3b67c0",
        ),
        // echo -n "vmcrypt passphrase" | argon2 saltsaltsaltsalt -id -t 1 -k 8 -p 1 -l 64 -r
        (
            "vmcrypt passphrase",
            "saltsaltsaltsalt",
            Argon2id,
            1,
            8,
            1,
            "345883e9bc28d5889d68db650732ea07b2444a65f33f37aa62905d96f1bbcfbb\
             906a9ee60f50daaab221a92feaf3bc7ef89aad5e54cac501cae5df3a351b4fa7",
        ),
        // echo -n x | argon2 0123456789abcdef -i -t 4 -k 1024 -p 2 -l 64 -r
        (
            "x",
            "0123456789abcdef",
            Argon2i,
            4,
            1024,
            2,
            "b13d7d2d6758f88ae1bff6ec7400c2bbcbd46cf88dda3f489a449b37ea238cff\
             0e308d30e34091856224544b5118aed07f970cbbce514d9ed02a1d646f0fabdb",
        ),
        // echo -n luks | argon2 somesaltsomesalt -id -t 5 -k 2048 -p 3 -l 17 -r
        // (2048 KiB is not a multiple of 4 x 3: Argon2 rounds it down to 2040)
        (
            "luks",
            "somesaltsomesalt",
            Argon2id,
            5,
            2048,
            3,
            "872aaa1790679c981f56b7c51ecd5295d1",
        ),
    ];
    for (pass, salt, ty, time, memory_kib, lanes, expected) in cases {
        let expected = unhex(expected);
        let mut out = vec![0u8; expected.len()];
        let cost = Argon2Cost {
            time,
            memory_kib,
            lanes,
        };
        argon2(ty, pass.as_bytes(), salt.as_bytes(), cost, &mut out).unwrap();
        assert_eq!(hex::encode(&out), hex::encode(&expected), "{ty:?} {cost:?}");
    }
}

fn read(rel: &str) -> Vec<u8> {
    let path = common::shared_data::shared_path("vectors/cryptsetup").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The volume key README.txt lists in item `item` (two hex lines after "volume key:").
fn readme_volume_key(item: &str) -> Vec<u8> {
    let readme = String::from_utf8(read("README.txt")).unwrap();
    let start = readme
        .find(&format!("\n{item}"))
        .expect("item in README.txt");
    let section = &readme[start..];
    let at = section.find("volume key:").unwrap() + "volume key:".len();
    let hex: String = section[at..]
        .lines()
        .take(2)
        .flat_map(|l| l.split_whitespace())
        .collect();
    hex::decode(hex).unwrap()
}

/// Base64 (RFC 4648, with padding) as LUKS2 JSON stores salts.
fn base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Unlock key slot 0 of a cryptsetup-made LUKS2 image with an Argon2 KDF and return the
/// merged volume key. The slot's parameters come from the luksDump JSON in meta/.
fn unlock_slot0(image: &str, json: &str, passphrase: &str) -> Vec<u8> {
    let meta: serde_json::Value = serde_json::from_slice(&read(json)).unwrap();
    let ks = &meta["keyslots"]["0"];
    let kdf = &ks["kdf"];
    let ty = Argon2Type::from_luks2_name(kdf["type"].as_str().unwrap()).unwrap();
    let cost = Argon2Cost {
        time: kdf["time"].as_u64().unwrap() as u32,
        memory_kib: kdf["memory"].as_u64().unwrap() as u32,
        lanes: kdf["cpus"].as_u64().unwrap() as u32,
    };
    KdfLimits::default().check_argon2(cost).unwrap();
    let salt = base64(kdf["salt"].as_str().unwrap());
    let key_size = ks["key_size"].as_u64().unwrap() as usize;
    let mut slot_key = vec![0u8; key_size];
    argon2(ty, &read(passphrase), &salt, cost, &mut slot_key).unwrap();

    let area = &ks["area"];
    let offset: usize = area["offset"].as_str().unwrap().parse().unwrap();
    let size: usize = area["size"].as_str().unwrap().parse().unwrap();
    let stripes = ks["af"]["stripes"].as_u64().unwrap() as u32;
    assert_eq!(ks["af"]["hash"], "sha256");
    let (cipher, mode) = area["encryption"]
        .as_str()
        .unwrap()
        .split_once('-')
        .unwrap();
    let spec = CipherSpec::from_luks(cipher, mode, key_size).unwrap();
    let sc = SectorCipher::new(&spec, &slot_key).unwrap();
    let material_len = key_size * stripes as usize;
    assert!(material_len <= size);
    let mut material = read(image)[offset..offset + material_len.next_multiple_of(512)].to_vec();
    sc.decrypt(0, 512, &mut material).unwrap();
    let vk = af::merge(
        HashAlg::Sha256,
        &material[..material_len],
        key_size,
        stripes,
    )
    .unwrap();
    vk.as_ref().to_vec()
}

#[test]
fn luks2_argon2id_slot_unlocks_to_the_readme_volume_key() {
    let vk = unlock_slot0(
        "luks2-argon2id-aes-xts.img",
        "meta/luks2-argon2id-aes-xts.json",
        "keys/l2a-slot0",
    );
    assert_eq!(
        hex::encode(vk),
        hex::encode(readme_volume_key("4. luks2-argon2id-aes-xts.img"))
    );
}

#[test]
fn luks2_argon2i_slot_unlocks_to_the_readme_volume_key() {
    let vk = unlock_slot0(
        "luks2-sector4096-argon2i.img",
        "meta/luks2-sector4096-argon2i.json",
        "keys/l2s-slot0",
    );
    assert_eq!(
        hex::encode(vk),
        hex::encode(readme_volume_key("6. luks2-sector4096-argon2i.img"))
    );
}

#[test]
fn wrong_passphrase_gives_another_key() {
    let cost = Argon2Cost {
        time: 1,
        memory_kib: 64,
        lanes: 2,
    };
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    argon2(Argon2Type::Argon2id, b"pass", b"saltsalt", cost, &mut a).unwrap();
    argon2(Argon2Type::Argon2id, b"pasS", b"saltsalt", cost, &mut b).unwrap();
    assert_ne!(a, b);
    argon2(Argon2Type::Argon2i, b"pass", b"saltsalt", cost, &mut b).unwrap();
    assert_ne!(a, b);
}

#[test]
fn costs_above_the_limits_are_refused() {
    let limits = KdfLimits::default();
    assert_eq!(limits.max_memory_kib, 4 * 1024 * 1024);
    assert_eq!(limits.max_pbkdf2_iterations, 100_000_000);
    let ok = Argon2Cost {
        time: limits.max_time,
        memory_kib: limits.max_memory_kib,
        lanes: limits.max_lanes,
    };
    limits.check_argon2(ok).unwrap();
    let cases = [
        (
            Argon2Cost {
                memory_kib: ok.memory_kib + 1,
                ..ok
            },
            "max_memory_kib",
        ),
        (
            Argon2Cost {
                time: ok.time + 1,
                ..ok
            },
            "max_time",
        ),
        (
            Argon2Cost {
                lanes: ok.lanes + 1,
                ..ok
            },
            "max_lanes",
        ),
    ];
    for (cost, field) in cases {
        let e = limits.check_argon2(cost).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        let msg = e.to_string();
        assert!(msg.contains(field), "{msg}");
        let value = [cost.memory_kib, cost.time, cost.lanes]
            .into_iter()
            .find(|v| msg.contains(&v.to_string()));
        assert!(value.is_some(), "{msg} names no value");
    }
    limits.check_pbkdf2(100_000_000).unwrap();
    let e = limits.check_pbkdf2(100_000_001).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    assert!(e.to_string().contains("100000001"), "{e}");
}

#[test]
fn defaults_are_in_cryptsetup_ranges() {
    let m = default_argon2_memory_kib();
    assert!((1..=1024 * 1024).contains(&m), "{m}");
    assert!((1..=4).contains(&default_argon2_lanes()));
}

/// Behaviour, not timing precision (the machine is shared): a 4x larger target never
/// yields a smaller time x memory product, and the result stays within the bounds asked.
#[test]
fn calibration_is_monotonic_and_bounded() {
    let max_memory = 16 * 1024;
    let small = calibrate_argon2(
        Argon2Type::Argon2id,
        Duration::from_millis(25),
        max_memory,
        2,
        32,
    );
    let large = calibrate_argon2(
        Argon2Type::Argon2id,
        Duration::from_millis(100),
        max_memory,
        2,
        32,
    );
    for c in [small, large] {
        assert!(
            c.time >= 4 && c.memory_kib <= max_memory && c.lanes == 2,
            "{c:?}"
        );
        KdfLimits::default().check_argon2(c).unwrap();
    }
    assert!(large.work() >= small.work(), "{small:?} vs {large:?}");
}
