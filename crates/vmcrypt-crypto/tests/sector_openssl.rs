//! SectorCipher against OpenSSL: AES-XTS, AES-CBC with every IV generator (IVs computed
//! independently here), AES-ECB, CAST5-CBC; plus argument validation and round trips.
mod common;

use common::{bytes, ossl};
use openssl::symm::{Cipher, Mode};
use vmcrypt_crypto::{CipherSpec, SectorCipher};
use vmcrypt_error::ErrorKind;

/// Sector geometries: (sector size, sector count). 40 x 512 and 5 x 4096 cross the
/// cipher's internal 16 KiB batching boundary.
const GEOMETRIES: [(usize, usize); 4] = [(512, 1), (512, 40), (4096, 1), (4096, 5)];

/// Per-sector reference: `reference(sector_index, iv_sector, plaintext_sector)`.
fn check_against<F>(spec: &CipherSpec, key: &[u8], first_iv: u64, reference: F)
where
    F: Fn(u64, &[u8]) -> Vec<u8>,
{
    let c = SectorCipher::new(spec, key).unwrap();
    for (ss, n) in GEOMETRIES {
        let plain = bytes(ss * n, 9);
        let mut data = plain.clone();
        c.encrypt(first_iv, ss, &mut data).unwrap();
        for (k, (ct, pt)) in data.chunks(ss).zip(plain.chunks(ss)).enumerate() {
            let iv_sector = first_iv.wrapping_add((k * ss / 512) as u64);
            let want = reference(iv_sector, pt);
            assert!(
                ct == want,
                "{spec}: sector {k} of {n} x {ss} (iv sector {iv_sector})"
            );
        }
        c.decrypt(first_iv, ss, &mut data).unwrap();
        assert!(data == plain, "{spec}: decrypt round trip {n} x {ss}");
    }
}

fn le64_iv(sector: u64, len: usize) -> Vec<u8> {
    let mut iv = vec![0u8; len];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

fn aes_cbc(bits: usize) -> Cipher {
    match bits {
        128 => Cipher::aes_128_cbc(),
        192 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    }
}

#[test]
fn aes_xts_plain64_matches_openssl() {
    for (key_len, cipher) in [(32, Cipher::aes_128_xts()), (64, Cipher::aes_256_xts())] {
        let spec = CipherSpec::from_luks("aes", "xts-plain64", key_len).unwrap();
        let key = bytes(key_len, 3);
        for first in [0u64, 1000, u64::MAX - 3] {
            check_against(&spec, &key, first, |s, pt| {
                ossl(cipher, Mode::Encrypt, &key, Some(&le64_iv(s, 16)), pt)
            });
        }
    }
}

#[test]
fn aes_xts_other_ivgens_are_the_tweak() {
    let key = bytes(64, 4);
    let essiv_key = openssl::sha::sha256(&key);
    let xts = Cipher::aes_256_xts();
    let spec = CipherSpec::from_luks("aes", "xts-essiv:sha256", 64).unwrap();
    check_against(&spec, &key, 77, |s, pt| {
        let iv = ossl(
            Cipher::aes_256_ecb(),
            Mode::Encrypt,
            &essiv_key,
            None,
            &le64_iv(s, 16),
        );
        ossl(xts, Mode::Encrypt, &key, Some(&iv), pt)
    });
    let spec = CipherSpec::from_luks("aes", "xts-plain64be", 64).unwrap();
    check_against(&spec, &key, 0x0102_0304_0506, |s, pt| {
        let mut iv = [0u8; 16];
        iv[8..].copy_from_slice(&s.to_be_bytes());
        ossl(xts, Mode::Encrypt, &key, Some(&iv), pt)
    });
}

#[test]
fn aes_cbc_every_ivgen_matches_openssl() {
    for key_len in [16usize, 24, 32] {
        let key = bytes(key_len, key_len as u8);
        let cbc = aes_cbc(key_len * 8);
        let spec = |m: &str| CipherSpec::from_luks("aes", m, key_len).unwrap();

        // plain: le32 of the sector, truncated (start just below 2^32 so it wraps).
        check_against(&spec("cbc-plain"), &key, (1 << 32) - 3, |s, pt| {
            let mut iv = [0u8; 16];
            iv[..4].copy_from_slice(&(s as u32).to_le_bytes());
            ossl(cbc, Mode::Encrypt, &key, Some(&iv), pt)
        });
        check_against(&spec("cbc-plain64"), &key, (1 << 32) - 3, |s, pt| {
            ossl(cbc, Mode::Encrypt, &key, Some(&le64_iv(s, 16)), pt)
        });
        check_against(&spec("cbc-plain64be"), &key, 5, |s, pt| {
            let mut iv = [0u8; 16];
            iv[8..].copy_from_slice(&s.to_be_bytes());
            ossl(cbc, Mode::Encrypt, &key, Some(&iv), pt)
        });
        // essiv:sha256: AES-256-ECB keyed with sha256(key) over le64(sector), even for
        // AES-128 data keys.
        let essiv_key = openssl::sha::sha256(&key);
        check_against(&spec("cbc-essiv:sha256"), &key, 12345, |s, pt| {
            let iv = ossl(
                Cipher::aes_256_ecb(),
                Mode::Encrypt,
                &essiv_key,
                None,
                &le64_iv(s, 16),
            );
            ossl(cbc, Mode::Encrypt, &key, Some(&iv), pt)
        });
        // benbi: be64((sector << 5) + 1) in the last 8 bytes (16-byte blocks: 32 per 512).
        check_against(&spec("cbc-benbi"), &key, 9, |s, pt| {
            let mut iv = [0u8; 16];
            iv[8..].copy_from_slice(&((s << 5) + 1).to_be_bytes());
            ossl(cbc, Mode::Encrypt, &key, Some(&iv), pt)
        });
        check_against(&spec("cbc-null"), &key, 9, |_, pt| {
            ossl(cbc, Mode::Encrypt, &key, Some(&[0u8; 16]), pt)
        });
    }
}

#[test]
fn aes_ecb_matches_openssl() {
    for (key_len, cipher) in [(16, Cipher::aes_128_ecb()), (32, Cipher::aes_256_ecb())] {
        let key = bytes(key_len, 6);
        let spec = CipherSpec::from_luks("aes", "ecb", key_len).unwrap();
        check_against(&spec, &key, 3, |_, pt| {
            ossl(cipher, Mode::Encrypt, &key, None, pt)
        });
    }
}

#[test]
fn cast5_cbc_matches_openssl() {
    assert!(
        common::load_legacy_provider(),
        "OpenSSL legacy provider (cast5) not available"
    );
    let key = bytes(16, 7);
    let cbc = Cipher::cast5_cbc();
    let spec = CipherSpec::from_luks("cast5", "cbc-plain64", 16).unwrap();
    check_against(&spec, &key, 1 << 40, |s, pt| {
        ossl(cbc, Mode::Encrypt, &key, Some(&s.to_le_bytes()), pt)
    });
    let spec = CipherSpec::from_luks("cast5", "cbc-plain", 16).unwrap();
    check_against(&spec, &key, (1 << 32) + 7, |s, pt| {
        let mut iv = [0u8; 8];
        iv[..4].copy_from_slice(&(s as u32).to_le_bytes());
        ossl(cbc, Mode::Encrypt, &key, Some(&iv), pt)
    });
    // benbi with 8-byte blocks: 64 blocks per 512-byte sector, so shift 6.
    let spec = CipherSpec::from_luks("cast5", "cbc-benbi", 16).unwrap();
    check_against(&spec, &key, 21, |s, pt| {
        ossl(
            cbc,
            Mode::Encrypt,
            &key,
            Some(&((s << 6) + 1).to_be_bytes()),
            pt,
        )
    });
}

#[test]
fn a_sector_at_a_time_equals_a_batch() {
    for mode in ["xts-plain64", "cbc-essiv:sha256", "cbc-plain", "ecb"] {
        let spec = CipherSpec::from_luks("aes", mode, 32).unwrap();
        let c = SectorCipher::new(&spec, &bytes(32, 8)).unwrap();
        let plain = bytes(4096 * 6, 10);
        let mut batch = plain.clone();
        c.encrypt(100, 1024, &mut batch).unwrap();
        let mut single = plain.clone();
        for (k, s) in single.chunks_mut(1024).enumerate() {
            c.encrypt(100 + 2 * k as u64, 1024, s).unwrap();
        }
        assert!(batch == single, "{mode}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let spec = CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap();
    let e = SectorCipher::new(&spec, &[0u8; 32]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.message().contains("64-byte key"), "{e}");

    let c = SectorCipher::new(&spec, &bytes(64, 1)).unwrap();
    let mut buf = vec![0u8; 8192];
    for bad in [0usize, 256, 768, 8192] {
        let e = c.encrypt(0, bad, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage, "sector size {bad}");
        assert!(e.message().contains("sector size"), "{e}");
    }
    let e = c.decrypt(0, 4096, &mut buf[..4608]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfRange);
    assert!(e.message().contains("4608"), "{e}");
    c.encrypt(0, 512, &mut []).unwrap();

    // A hand-built inconsistent spec is refused rather than panicking.
    let mut odd = spec;
    odd.key_bytes = 40;
    assert_eq!(
        SectorCipher::new(&odd, &[0u8; 40]).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn debug_does_not_leak_key() {
    let spec = CipherSpec::from_luks("aes", "cbc-plain64", 16).unwrap();
    let c = SectorCipher::new(&spec, b"YELLOW SUBMARINE").unwrap();
    let dbg = format!("{c:?}");
    assert!(dbg.contains("Cbc") && !dbg.contains("YELLOW"), "{dbg}");
}

/// Round trips over the other families (Twofish/Serpent come from their own module).
fn round_trip(name: &str) {
    for (mode, key_len) in [("xts-plain64", 64), ("cbc-essiv:sha256", 32), ("ecb", 16)] {
        let spec = CipherSpec::from_luks(name, mode, key_len).unwrap();
        let c = SectorCipher::new(&spec, &bytes(key_len, 11)).unwrap();
        let plain = bytes(512 * 3, 12);
        let mut data = plain.clone();
        c.encrypt(7, 512, &mut data).unwrap();
        assert!(data != plain, "{spec}");
        assert!(data[..512] != data[512..1024] || mode == "ecb", "{spec}");
        c.decrypt(7, 512, &mut data).unwrap();
        assert!(data == plain, "{spec}");
    }
}

#[test]
fn twofish_round_trip() {
    round_trip("twofish");
}

#[test]
fn serpent_round_trip() {
    round_trip("serpent");
}
