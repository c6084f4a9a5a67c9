//! Single-threaded AES-XTS throughput of vmcrypt's kernel, comparable with
//! `openssl speed -evp aes-256-xts -bytes N`.
//!
//! ```text
//! xts_speed                      # table: AES-128/256-XTS, encrypt/decrypt, 512/4096 bytes
//! xts_speed --raw AESBITS encrypt|decrypt SECTOR MILLIS RUNS   # one median, in MB/s
//! xts_speed --backend            # the backend AesXts::new picks on this CPU
//! ```
//! Each call processes a 16 KiB working buffer of SECTOR-byte sectors in place
//! (`--sectors-per-call 1` in the table mode measures one sector per call instead, like
//! openssl speed's one EVP call per block). MB = 10^6 bytes.
use std::time::Duration;
use vmcrypt_crypto::aes_xts::AesXts;
use vmcrypt_crypto::bench::{Throughput, throughput};

const WORKING_SET: usize = 16 * 1024;

fn measure(
    aes_bits: usize,
    decrypt: bool,
    sector: usize,
    per_call: usize,
    time: Duration,
    runs: usize,
) -> (Throughput, &'static str) {
    let key: Vec<u8> = (0..aes_bits / 4).map(|i| (i * 37 + 11) as u8).collect();
    let xts = AesXts::new(&key).expect("valid key length");
    let mut buf = vec![0x5au8; WORKING_SET];
    let mut tweak = 0u64;
    let chunk = sector * per_call;
    let t = throughput(&mut buf, runs, time, |b| {
        for part in b.chunks_exact_mut(chunk) {
            if decrypt {
                xts.decrypt_sectors(tweak, 1, sector, part);
            } else {
                xts.encrypt_sectors(tweak, 1, sector, part);
            }
            tweak = tweak.wrapping_add(per_call as u64);
        }
    });
    (t, xts.backend())
}

fn usage() -> ! {
    eprintln!(
        "usage: xts_speed [--sectors-per-call N] | --backend | --raw AESBITS encrypt|decrypt SECTOR MILLIS RUNS"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &String| s.parse::<usize>().unwrap_or_else(|_| usage());
    if args.first().map(String::as_str) == Some("--backend") {
        println!(
            "{}",
            AesXts::new(&[1u8; 64]).expect("valid key length").backend()
        );
        return;
    }
    if args.first().map(String::as_str) == Some("--raw") {
        if args.len() != 6 {
            usage();
        }
        let decrypt = match args[2].as_str() {
            "encrypt" => false,
            "decrypt" => true,
            _ => usage(),
        };
        let (aes_bits, sector, millis, runs) =
            (num(&args[1]), num(&args[3]), num(&args[4]), num(&args[5]));
        let per_call = WORKING_SET / sector;
        let (t, _) = measure(
            aes_bits,
            decrypt,
            sector,
            per_call,
            Duration::from_millis(millis as u64),
            runs,
        );
        println!("{:.1}", t.mb_per_sec());
        return;
    }
    let per_call_arg = match args.as_slice() {
        [] => None,
        [flag, n] if flag == "--sectors-per-call" => Some(num(n).max(1)),
        _ => usage(),
    };
    println!(
        "{:<12} {:>8} {:>10} {:>14} {:>14}",
        "cipher", "sector", "backend", "encrypt MB/s", "decrypt MB/s"
    );
    for aes_bits in [128, 256] {
        for sector in [512, 4096] {
            let per_call = per_call_arg
                .unwrap_or(WORKING_SET / sector)
                .min(WORKING_SET / sector);
            let time = Duration::from_millis(300);
            let (enc, backend) = measure(aes_bits, false, sector, per_call, time, 5);
            let (dec, _) = measure(aes_bits, true, sector, per_call, time, 5);
            let name = format!("aes-{aes_bits}-xts");
            println!(
                "{name:<12} {sector:>8} {backend:>10} {:>14.1} {:>14.1}",
                enc.mb_per_sec(),
                dec.mb_per_sec()
            );
        }
    }
}
