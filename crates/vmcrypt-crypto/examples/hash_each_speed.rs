//! Throughput of [`HashAlg::digest_each`] (SHA-256 of many equal blocks, the checksums
//! of LUKS2 reencryption) against hashing each block alone.
//!
//! usage: cargo run --release -p vmcrypt-crypto --example hash_each_speed [BLOCK [MIB]]
use std::time::Instant;
use vmcrypt_crypto::HashAlg;

fn main() {
    let mut args = std::env::args().skip(1);
    let bs: usize = args.next().map_or(4096, |a| a.parse().expect("BLOCK"));
    let mib: usize = args.next().map_or(256, |a| a.parse().expect("MIB"));
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = vec![0u8; data.len() / bs * 32];
    let h = HashAlg::Sha256;
    let rate = |t: Instant| (mib as f64) / 1024.0 / t.elapsed().as_secs_f64();
    for _ in 0..3 {
        let t = Instant::now();
        h.digest_each(bs, &data, &mut out);
        let each = rate(t);
        let t = Instant::now();
        for (m, o) in data.chunks(bs).zip(out.chunks_mut(32)) {
            o.copy_from_slice(&h.digest(m));
        }
        println!(
            "sha256 {bs}-byte blocks: digest_each {each:.2} GiB/s, one at a time {:.2} GiB/s",
            rate(t)
        );
    }
}
