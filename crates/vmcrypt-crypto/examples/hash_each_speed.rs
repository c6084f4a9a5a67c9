//! Throughput of [`HashAlg::digest_each`] (SHA-256 of many equal blocks, the checksums
//! of LUKS2 reencryption) on each SHA-256 kernel this CPU has, the kernels taking turns
//! in every round; prints each round and the medians. `digest_each` is the kernel in
//! use (`VMCRYPT_SHA256_KERNEL` or the best); `single` is the sha2 crate one at a time.
//!
//! usage: cargo run --release -p vmcrypt-crypto --example hash_each_speed [BLOCK [MIB [ROUNDS]]]
use std::time::Instant;
use vmcrypt_crypto::HashAlg;
use vmcrypt_crypto::aes_xts::cpu_model;
use vmcrypt_crypto::sha256_kernel::Sha256Kernel;

fn main() {
    let mut args = std::env::args().skip(1);
    let bs: usize = args.next().map_or(4096, |a| a.parse().expect("BLOCK"));
    let mib: usize = args.next().map_or(256, |a| a.parse().expect("MIB"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = vec![0u8; data.len().div_ceil(bs) * 32];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{}; in use: {}; load average {}",
        cpu_model(),
        Sha256Kernel::in_use(),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    let mut names = vec!["digest_each".to_string()];
    let kernels: Vec<_> = Sha256Kernel::ALL
        .into_iter()
        .filter(|k| {
            if !k.available() {
                println!("{k}: not available on this CPU");
            }
            k.available()
        })
        .collect();
    names.extend(kernels.iter().map(|k| k.name().to_string()));
    let mut rates = vec![vec![]; names.len()];
    let gib = mib as f64 / 1024.0;
    for _ in 0..rounds {
        let t = Instant::now();
        HashAlg::Sha256.digest_each(bs, &data, &mut out);
        rates[0].push(gib / t.elapsed().as_secs_f64());
        for (k, r) in kernels.iter().zip(&mut rates[1..]) {
            let t = Instant::now();
            k.digest_each(bs, &data, &mut out);
            r.push(gib / t.elapsed().as_secs_f64());
        }
        let line: Vec<_> = names
            .iter()
            .zip(&rates)
            .map(|(n, r)| format!("{n} {:.2}", r[r.len() - 1]))
            .collect();
        println!("sha256 {bs}-byte blocks, GiB/s: {}", line.join(", "));
    }
    for (n, r) in names.iter().zip(&mut rates) {
        r.sort_by(f64::total_cmp);
        println!("median {n}: {:.2} GiB/s", r[r.len() / 2]);
    }
}
