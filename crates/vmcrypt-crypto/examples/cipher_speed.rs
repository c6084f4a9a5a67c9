//! Throughput of our Twofish and Serpent (ECB over a 4096-byte buffer, one core), with
//! the RustCrypto `twofish` crate for reference (our Serpent wraps the RustCrypto crate).
//!
//! Run with `cargo run --release -p vmcrypt-crypto --example cipher_speed`.
//!
//! Our ciphers are measured through the public [`SectorCipher`] in ECB mode, which hands
//! the whole buffer to the block cipher in one call.

use std::hint::black_box;
use std::time::Instant;
use vmcrypt_crypto::{CipherSpec, SectorCipher};

const BUF: usize = 4096;
const RUNS: usize = 7;
/// Bytes processed per run.
const PER_RUN: usize = 32 << 20;

/// Median MB/s (10^6 bytes per second) of `RUNS` runs of `f` over a 4096-byte buffer.
fn speed(mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; BUF];
    f(&mut buf); // warm-up
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_RUN / BUF {
                f(black_box(&mut buf));
            }
            PER_RUN as f64 / start.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

fn report(name: &str, enc: f64, dec: f64) {
    println!("{name:<28} encrypt {enc:8.1} MB/s   decrypt {dec:8.1} MB/s");
}

fn ours(name: &str, cipher: &str, key: &[u8]) {
    let spec = CipherSpec::from_luks(cipher, "ecb", key.len()).expect("cipher spec");
    let c = SectorCipher::new(&spec, key).expect("key");
    report(
        name,
        speed(|b| c.encrypt(0, BUF, b).expect("whole sectors")),
        speed(|b| c.decrypt(0, BUF, b).expect("whole sectors")),
    );
}

/// A RustCrypto cipher, one 16-byte block at a time.
macro_rules! rustcrypto {
    ($name:expr, $krate:ident, $ty:ident, $key:expr) => {{
        use ::$krate::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
        let c = ::$krate::$ty::new_from_slice($key).expect("key length");
        let enc = speed(|buf| {
            for b in buf.chunks_exact_mut(16) {
                c.encrypt_block(b.try_into().expect("16 bytes"));
            }
        });
        let dec = speed(|buf| {
            for b in buf.chunks_exact_mut(16) {
                c.decrypt_block(b.try_into().expect("16 bytes"));
            }
        });
        report($name, enc, dec);
    }};
}

fn main() {
    let key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    println!(
        "ECB over a {BUF}-byte buffer, median of {RUNS} runs of {} MiB",
        PER_RUN >> 20
    );
    for len in [16, 32] {
        ours(
            &format!("vmcrypt Twofish-{}", len * 8),
            "twofish",
            &key[..len],
        );
        ours(
            &format!("vmcrypt Serpent-{}", len * 8),
            "serpent",
            &key[..len],
        );
    }
    rustcrypto!("RustCrypto twofish-256", twofish, Twofish, &key);
}
