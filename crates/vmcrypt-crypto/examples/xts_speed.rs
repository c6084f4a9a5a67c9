//! Single-threaded AES-XTS (and AES-CBC-ESSIV) throughput of vmcrypt's kernels,
//! comparable with `openssl speed -evp aes-256-xts -bytes N` (or `aes-256-cbc`).
//!
//! ```text
//! xts_speed [--sectors-per-call N]   # table: AES-128/256-XTS, enc/dec, 512/4096
//! xts_speed --raw AESBITS encrypt|decrypt SECTOR MILLIS RUNS [xts|cbc]  # one median MB/s
//! xts_speed --backend                # the kernel AesXts::new picks here
//! xts_speed --info                   # CPU model, XTS and CBC-decryption kernels
//! ```
//! Each call processes a 16 KiB working buffer of SECTOR-byte sectors in place
//! (`--sectors-per-call 1` measures one sector per call instead, like openssl speed's
//! one EVP call per block). `cbc` is `aes-cbc-essiv:sha256` through `SectorCipher`
//! (the LUKS1 default before 2013), IVs included. MB = 10^6 bytes; time is wall-clock
//! time (compare with `openssl speed -elapsed`). `VMCRYPT_AES_KERNEL=vaes-avx2` (etc.)
//! forces a kernel.
use std::time::Duration;
use vmcrypt_crypto::aes_xts::{AesXts, cpu_model};
use vmcrypt_crypto::bench::{Throughput, throughput};
use vmcrypt_crypto::{CipherSpec, SectorCipher};

const WORKING_SET: usize = 16 * 1024;

/// One measurement's parameters.
struct Case {
    aes_bits: usize,
    decrypt: bool,
    sector: usize,
    per_call: usize,
    time: Duration,
    runs: usize,
}

fn measure(c: &Case) -> (Throughput, &'static str) {
    let key: Vec<u8> = (0..c.aes_bits / 4).map(|i| (i * 37 + 11) as u8).collect();
    let xts = AesXts::new(&key).expect("valid key length");
    let mut buf = vec![0x5au8; WORKING_SET];
    let mut tweak = 0u64;
    let work = |b: &mut [u8]| {
        for part in b.chunks_exact_mut(c.sector * c.per_call) {
            if c.decrypt {
                xts.decrypt_sectors(tweak, 1, c.sector, part);
            } else {
                xts.encrypt_sectors(tweak, 1, c.sector, part);
            }
            tweak = tweak.wrapping_add(c.per_call as u64);
        }
    };
    let t = throughput(&mut buf, c.runs, c.time, work);
    (t, xts.backend())
}

/// `aes-cbc-essiv:sha256` throughput through `SectorCipher` (whole working buffer per call).
fn measure_cbc(c: &Case) -> Throughput {
    let spec = CipherSpec::from_luks("aes", "cbc-essiv:sha256", c.aes_bits / 8).expect("spec");
    let key: Vec<u8> = (0..c.aes_bits / 8).map(|i| (i * 37 + 11) as u8).collect();
    let sc = SectorCipher::new(&spec, &key).expect("valid key");
    let mut buf = vec![0x5au8; WORKING_SET];
    let mut iv = 0u64;
    let work = |b: &mut [u8]| {
        let r = if c.decrypt {
            sc.decrypt(iv, c.sector, b)
        } else {
            sc.encrypt(iv, c.sector, b)
        };
        r.expect("whole sectors");
        iv = iv.wrapping_add((b.len() / 512) as u64);
    };
    throughput(&mut buf, c.runs, c.time, work)
}

fn usage() -> ! {
    eprintln!(
        "usage: xts_speed [--sectors-per-call N]\n       \
         xts_speed --raw AESBITS encrypt|decrypt SECTOR MILLIS RUNS [xts|cbc]\n       \
         xts_speed --backend\n       \
         xts_speed --info"
    );
    std::process::exit(2);
}

fn num(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| usage())
}

fn raw(args: &[String]) {
    let (args, cbc) = match args {
        [rest @ .., m] if m == "cbc" => (rest, true),
        [rest @ .., m] if m == "xts" => (rest, false),
        _ => (args, false),
    };
    let [bits, dir, sector, millis, runs] = args else {
        usage()
    };
    let decrypt = match dir.as_str() {
        "encrypt" => false,
        "decrypt" => true,
        _ => usage(),
    };
    let sector = num(sector);
    if sector == 0 || !sector.is_multiple_of(16) || !WORKING_SET.is_multiple_of(sector) {
        usage();
    }
    let case = Case {
        aes_bits: num(bits),
        decrypt,
        sector,
        per_call: WORKING_SET / sector,
        time: Duration::from_millis(num(millis) as u64),
        runs: num(runs),
    };
    let t = if cbc {
        measure_cbc(&case)
    } else {
        measure(&case).0
    };
    println!("{:.1}", t.mb_per_sec());
}

fn table(per_call: Option<usize>) {
    println!(
        "{:<12} {:>8} {:>12} {:>14} {:>14}",
        "cipher", "sector", "backend", "encrypt MB/s", "decrypt MB/s"
    );
    for aes_bits in [128, 256] {
        for sector in [512, 4096] {
            let mut case = Case {
                aes_bits,
                decrypt: false,
                sector,
                per_call: per_call
                    .unwrap_or(usize::MAX)
                    .clamp(1, WORKING_SET / sector),
                time: Duration::from_millis(300),
                runs: 5,
            };
            let (enc, backend) = measure(&case);
            case.decrypt = true;
            let (dec, _) = measure(&case);
            println!(
                "{:<12} {sector:>8} {backend:>12} {:>14.1} {:>14.1}",
                format!("aes-{aes_bits}-xts"),
                enc.mb_per_sec(),
                dec.mb_per_sec()
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--backend") => {
            let xts = AesXts::new(&[1u8; 64]).expect("valid key length");
            println!("{}", xts.backend());
        }
        Some("--info") => {
            let spec = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 32).expect("spec");
            let (xts, cbc) = match (
                AesXts::new(&[1u8; 64]),
                SectorCipher::new(&spec, &[1u8; 32]),
            ) {
                (Ok(x), Ok(c)) => (x, c),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("xts_speed: {e}");
                    std::process::exit(2);
                }
            };
            println!(
                "cpu: {}, xts kernel: {}, cbc-decrypt kernel: {}",
                cpu_model(),
                xts.backend(),
                cbc.kernel().unwrap_or("generic")
            );
        }
        Some("--raw") => raw(&args[1..]),
        Some("--sectors-per-call") if args.len() == 2 => table(Some(num(&args[1]))),
        None => table(None),
        _ => usage(),
    }
}
