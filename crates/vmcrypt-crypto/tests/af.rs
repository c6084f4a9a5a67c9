//! AF split/merge round trips (the LUKS known-answer unlock is in luks_vectors.rs).
use vmcrypt_crypto::{HashAlg, af};
use vmcrypt_error::ErrorKind;

#[test]
fn round_trip_hashes_key_sizes_stripes() {
    for h in HashAlg::ALL {
        for key_len in [16usize, 20, 32, 33, 64, 65] {
            for stripes in [1u32, 2, 3, 4000] {
                let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
                let m = af::split(h, &key, stripes).unwrap();
                assert_eq!(m.len(), key_len * stripes as usize);
                // Extra trailing bytes (sector padding on disk) are ignored.
                let mut padded = m.as_bytes().to_vec();
                padded.extend_from_slice(&[0xee; 100]);
                let back = af::merge(h, &padded, key_len, stripes).unwrap();
                assert_eq!(back.as_bytes(), &key[..], "{h} {key_len} {stripes}");
            }
        }
    }
}

#[test]
fn split_is_randomised_and_every_stripe_matters() {
    let key = [0x42u8; 32];
    let a = af::split(HashAlg::Sha256, &key, 10).unwrap();
    let b = af::split(HashAlg::Sha256, &key, 10).unwrap();
    assert_ne!(a.as_bytes(), b.as_bytes());
    for stripe in 0..10 {
        let mut m = a.as_bytes().to_vec();
        m[stripe * 32] ^= 1;
        let back = af::merge(HashAlg::Sha256, &m, 32, 10).unwrap();
        assert_ne!(back.as_bytes(), &key, "stripe {stripe} had no effect");
    }
    // The wrong hash does not recover the key.
    let back = af::merge(HashAlg::Sha1, a.as_bytes(), 32, 10).unwrap();
    assert_ne!(back.as_bytes(), &key);
}

#[test]
fn short_material_is_corrupt() {
    let e = af::merge(HashAlg::Sha256, &[0u8; 100], 32, 4).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message().contains("100 bytes"), "{e}");
}
