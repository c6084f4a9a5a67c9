//! Hashes and PBKDF2 against OpenSSL and published vectors (RFC 6070, NESSIE/ISO).
mod common;

use openssl::hash::MessageDigest;
use vmcrypt_crypto::{HashAlg, kdf};

/// OpenSSL's digest for `h`; the kernel's wp256/wp384/wp512 are Whirlpool truncated to
/// `h.output_len()` bytes.
fn md(h: HashAlg) -> MessageDigest {
    assert!(
        common::load_legacy_provider(),
        "OpenSSL legacy provider not available"
    );
    let name = match h {
        HashAlg::Wp256 | HashAlg::Wp384 | HashAlg::Wp512 => "whirlpool",
        _ => h.name(),
    };
    MessageDigest::from_name(name).unwrap_or_else(|| panic!("openssl lacks {name}"))
}

/// The digest of `data` by OpenSSL, truncated to `h`'s length.
fn ossl_digest(h: HashAlg, data: &[u8]) -> Vec<u8> {
    let d = openssl::hash::hash(md(h), data).unwrap();
    d[..h.output_len()].to_vec()
}

/// HMAC over `h` (64-byte blocks for every hash here except SHA-384/512) from OpenSSL's
/// digests, written out from RFC 2104, so it also covers the truncated hashes.
fn ref_hmac(h: HashAlg, key: &[u8], msg: &[u8]) -> Vec<u8> {
    let block = match h {
        HashAlg::Sha384 | HashAlg::Sha512 => 128,
        _ => 64,
    };
    let mut k = if key.len() > block {
        ossl_digest(h, key)
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = ossl_digest(h, &[pad(0x36), msg.to_vec()].concat());
    ossl_digest(h, &[pad(0x5c), inner].concat())
}

/// PBKDF2 (RFC 8018) over [`ref_hmac`].
fn ref_pbkdf2(h: HashAlg, pass: &[u8], salt: &[u8], iters: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for block in 1u32.. {
        if out.len() >= len {
            break;
        }
        let mut u = ref_hmac(h, pass, &[salt, &block.to_be_bytes()].concat());
        let mut acc = u.clone();
        for _ in 1..iters {
            u = ref_hmac(h, pass, &u);
            acc.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
        }
        out.extend(acc);
    }
    out.truncate(len);
    out
}

#[test]
fn hashes_match_openssl() {
    let long = common::bytes(1000, 1);
    let inputs: [&[u8]; 5] = [b"", b"abc", &[0x61; 55], &[0x62; 64], &long];
    for h in HashAlg::ALL {
        for data in inputs {
            let want = ossl_digest(h, data);
            assert_eq!(h.digest(data), want, "{h} over {} bytes", data.len());
        }
        let split = h.digest_parts(&[&long[..333], &long[333..]]);
        assert_eq!(split, h.digest(&long), "{h} parts");
    }
}

#[test]
fn published_hash_vectors() {
    // RIPEMD-160 (Dobbertin/Bosselaers/Preneel reference vectors) and Whirlpool (ISO/IEC
    // 10118-3, NESSIE), which do not depend on OpenSSL's legacy provider.
    let cases = [
        (
            HashAlg::Ripemd160,
            &b""[..],
            "9c1185a5c5e9fc54612808977ee8f548b2258d31",
        ),
        (
            HashAlg::Ripemd160,
            b"abc",
            "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
        ),
        (
            HashAlg::Ripemd160,
            b"message digest",
            "5d0689ef49d2fae572b881b123a85ffa21595f36",
        ),
        (
            HashAlg::Whirlpool,
            b"",
            "19fa61d75522a4669b44e39c1d2e1726c530232130d407f89afee0964997f7a7\
             3e83be698b288febcf88e3e03c4f0757ea8964e59b63d93708b138cc42a66eb3",
        ),
        (
            HashAlg::Whirlpool,
            b"abc",
            "4e2448a4c6f486bb16b6562c73b4020bf3043e3a731bce721ae1b303d97e6d4c\
             7181eebdb6c57e277d0e34957114cbd6c797fc9d95d8b582d225292076d4eef5",
        ),
        (
            HashAlg::Sha1,
            b"abc",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
        (
            HashAlg::Sha256,
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
    ];
    for (h, data, want) in cases {
        assert_eq!(hex::encode(h.digest(data)), want, "{h}");
    }
}

#[test]
fn pbkdf2_rfc6070_sha1() {
    let cases: [(&[u8], &[u8], u32, &str); 5] = [
        (
            b"password",
            b"salt",
            1,
            "0c60c80f961f0e71f3a9b524af6012062fe037a6",
        ),
        (
            b"password",
            b"salt",
            2,
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
        ),
        (
            b"password",
            b"salt",
            4096,
            "4b007901b765489abead49d926f721d065a429c1",
        ),
        (
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038",
        ),
        (
            b"pass\0word",
            b"sa\0lt",
            4096,
            "56fa6aa75548099dcc37d7f03425e0c3",
        ),
    ];
    for (pass, salt, iters, want) in cases {
        let mut out = vec![0u8; want.len() / 2];
        kdf::pbkdf2(HashAlg::Sha1, pass, salt, iters, &mut out);
        assert_eq!(hex::encode(&out), want, "{iters} iterations");
    }
}

#[test]
fn pbkdf2_matches_openssl_for_every_hash() {
    let salt = common::bytes(32, 2);
    // OpenSSL has no truncated Whirlpool (wp256, wp384); see the next test.
    let full_length = HashAlg::ALL
        .into_iter()
        .filter(|h| !matches!(h, HashAlg::Wp256 | HashAlg::Wp384));
    for h in full_length {
        // Output lengths below, equal to and above one digest (multi-block PBKDF2).
        for (len, iters) in [(16, 1000), (h.output_len(), 3), (100, 257)] {
            let mut ours = vec![0u8; len];
            kdf::pbkdf2(h, b"correct horse", &salt, iters, &mut ours);
            let mut theirs = vec![0u8; len];
            openssl::pkcs5::pbkdf2_hmac(
                b"correct horse",
                &salt,
                iters as usize,
                md(h),
                &mut theirs,
            )
            .unwrap();
            assert_eq!(ours, theirs, "{h} len {len} iterations {iters}");
        }
    }
}

#[test]
fn pbkdf2_over_truncated_whirlpool_matches_reference() {
    let salt = common::bytes(32, 3);
    let long_pass = common::bytes(100, 4);
    for h in [
        HashAlg::Wp256,
        HashAlg::Wp384,
        HashAlg::Wp512,
        HashAlg::Sha256,
    ] {
        for pass in [&b"correct horse"[..], &long_pass] {
            for (len, iters) in [(16, 20), (h.output_len(), 3), (100, 7)] {
                let mut ours = vec![0u8; len];
                kdf::pbkdf2(h, pass, &salt, iters, &mut ours);
                let want = ref_pbkdf2(h, pass, &salt, iters, len);
                assert_eq!(ours, want, "{h} pass {} len {len}", pass.len());
            }
        }
    }
}
