//! `vmcrypt info` (qemu-img info): flags -> [`InfoRequest`] -> the info job -> its
//! JSON or human rendering.
use super::common::{Output, ReportOpts, pretty};
use vmcrypt_block::jobs::info::{InfoRequest, run as info};
use vmcrypt_error::Result;

/// Flags of `vmcrypt info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub opts: ReportOpts,
    /// Also show every backing file of the chain
    #[arg(long = "backing-chain")]
    pub backing_chain: bool,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let output = a.opts.output()?;
    let (env, image) = a.opts.image.open_parts(&a.filename);
    let req = InfoRequest {
        image,
        backing_chain: a.backing_chain,
    };
    let report = info(&req, &env, &mut a.opts.image.ui(false))?;
    match output {
        Output::Json => outln!("{}", pretty(&report.json())),
        Output::Human => out!("{}", report.human()),
    }
    Ok(0)
}
