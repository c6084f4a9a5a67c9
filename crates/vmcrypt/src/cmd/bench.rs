//! `vmcrypt bench`: cipher and PBKDF2 speed, printed like `cryptsetup benchmark`; with
//! `-c CIPHER [-s BITS]` only that cipher, in cryptsetup's one-row layout.
use std::io::Write;
use std::time::Duration;
use vmcrypt_crypto::bench_select::{BenchCipher, render_one};
use vmcrypt_crypto::bench_suite::{CIPHERS, cipher_row, kdf_rows, kernel_line, render};
use vmcrypt_error::{Result, ensure};

/// Flags of `vmcrypt bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to spend per measurement
    #[arg(long, default_value = "0.5")]
    pub seconds: f64,
    /// Measure only this cipher, as cryptsetup names it (aes-xts, aes-xts-plain64,
    /// serpent-cbc, ...)
    #[arg(short = 'c', long = "cipher", value_name = "CIPHER")]
    pub cipher: Option<String>,
    /// Key size in bits for -c (the whole key: 512 for aes-xts is AES-256; default 256)
    #[arg(
        short = 's',
        long = "key-size",
        value_name = "BITS",
        requires = "cipher"
    )]
    pub key_size: Option<u32>,
}

pub fn run(a: Args) -> Result<u8> {
    let seconds = a.seconds;
    ensure!(
        seconds > 0.0 && seconds <= 60.0,
        Usage,
        "--seconds must be in (0, 60]"
    );
    let budget = Duration::from_secs_f64(seconds);
    let kernel = kernel_line()?;
    if let Some(spec) = &a.cipher {
        let one = BenchCipher::parse(spec, a.key_size)?;
        let row = one.measure(budget / 3)?;
        // cryptsetup's table first, unchanged; the CPU and kernel after it.
        out!("{}{kernel}\n", render_one(&row));
        return Ok(0);
    }
    eprint!("measuring PBKDF2 and {} ciphers...", CIPHERS.len());
    let _ = std::io::stderr().flush();
    let kdf = kdf_rows(budget);
    let rows = CIPHERS
        .iter()
        .map(|&(c, m, k)| cipher_row(c, m, k, budget / 3))
        .collect::<Result<Vec<_>>>()?;
    eprintln!();
    out!("{kernel}\n{}", render(&kdf, &rows));
    Ok(0)
}
