//! `vmcrypt bench`: cipher and PBKDF2 speed, printed like `cryptsetup benchmark`.
use std::io::Write;
use std::time::Duration;
use vmcrypt_crypto::bench_suite::{CIPHERS, cipher_row, kdf_rows, kernel_line, render};
use vmcrypt_error::{Result, ensure};

/// Flags of `vmcrypt bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to spend per measurement
    #[arg(long, default_value = "0.5")]
    pub seconds: f64,
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
