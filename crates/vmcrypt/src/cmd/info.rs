//! `vmcrypt info` (qemu-img info): flags -> [`InfoRequest`] -> the info job -> its
//! JSON or human rendering.
use super::common::{Common, Output, Ui, pretty};
use vmcrypt_block::jobs::info::{InfoRequest, run as info};
use vmcrypt_error::Result;

/// Flags of `vmcrypt info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f')]
    pub format: Option<String>,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    /// Also show every backing file of the chain
    #[arg(long = "backing-chain")]
    pub backing_chain: bool,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let output = Output::parse(&a.output)?;
    let env = a.common.env()?;
    let req = InfoRequest {
        image: a.common.image(a.format.as_deref(), &a.filename),
        backing_chain: a.backing_chain,
    };
    let report = info(&req, &env, &mut Ui::new(&a.common))?;
    match output {
        Output::Json => outln!("{}", pretty(&report.json())),
        Output::Human => out!("{}", report.human()),
    }
    Ok(0)
}
