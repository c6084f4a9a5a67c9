//! `vmcrypt compare` (qemu-img compare): flags -> [`CompareRequest`] -> the verdict's
//! lines and exit status (0 identical, 1 different, 2 on any failure).
use super::common::{Common, Ui, failed};
use vmcrypt_block::jobs::compare::{CompareRequest, run as compare};
use vmcrypt_error::Result;

/// Flags of `vmcrypt compare`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Format of the first image
    #[arg(short = 'f')]
    pub format1: Option<String>,
    /// Format of the second image
    #[arg(short = 'F')]
    pub format2: Option<String>,
    /// Strict mode: fail on different sizes or allocation
    #[arg(short = 's')]
    pub strict: bool,
    pub image1: String,
    pub image2: String,
}

pub fn run(a: Args) -> Result<u8> {
    let req = CompareRequest {
        first: a.common.image(a.format1.as_deref(), &a.image1),
        second: a.common.image(a.format2.as_deref(), &a.image2),
        strict: a.strict,
    };
    let run = || -> Result<u8> {
        let env = a.common.env();
        let report = compare(&req, &env, &mut Ui::new(&a.common))?;
        if !a.common.quiet {
            for line in report.lines() {
                outln!("{line}");
            }
        }
        Ok(report.exit_code())
    };
    Ok(run().unwrap_or_else(|e| failed(&e, 2)))
}
