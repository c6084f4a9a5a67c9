//! Helpers shared by the integration tests: OpenSSL as the reference implementation,
//! and [`shared_data`], the one way to reach the test data in `shared/` beside the checkout.
#![allow(dead_code)]

pub mod cpu_models;
pub mod luks1;
pub mod shared_data;

use openssl::symm::{Cipher, Crypter, Mode};
use std::sync::OnceLock;

/// Load OpenSSL 3's legacy provider (ripemd160, whirlpool, cast5) next to the default one.
/// Returns false if it is not installed.
pub fn load_legacy_provider() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(
        || match openssl::provider::Provider::try_load(None, "legacy", true) {
            Ok(p) => {
                // Keep it loaded for the life of the test process.
                std::mem::forget(p);
                true
            }
            Err(_) => false,
        },
    )
}

/// Run an OpenSSL cipher without padding.
pub fn ossl(cipher: Cipher, mode: Mode, key: &[u8], iv: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut c = Crypter::new(cipher, mode, key, iv).expect("openssl cipher init");
    c.pad(false);
    let mut out = vec![0u8; data.len() + cipher.block_size()];
    let mut n = c.update(data, &mut out).expect("openssl update");
    n += c.finalize(&mut out[n..]).expect("openssl finalize");
    out.truncate(n);
    out
}

/// Deterministic pseudo-random bytes (distinct per seed) for test inputs.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut ctr = 0u32;
    while out.len() < len {
        let block = openssl::sha::sha256(&[&[seed][..], &ctr.to_le_bytes()].concat());
        out.extend_from_slice(&block);
        ctr += 1;
    }
    out.truncate(len);
    out
}
