//! `vmcrypt resize` (qemu-img resize): flags -> [`ResizeRequest`] -> the resize job.
use super::common::{Common, Ui};
use vmcrypt_block::jobs::resize::{ResizeRequest, run as resize};
use vmcrypt_error::Result;

/// Flags of `vmcrypt resize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f')]
    pub format: Option<String>,
    /// Allow shrinking (data past the new end is lost)
    #[arg(long)]
    pub shrink: bool,
    pub filename: String,
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

pub fn run(a: Args) -> Result<u8> {
    let env = a.common.env()?;
    let req = ResizeRequest {
        image: a.common.image(a.format.as_deref(), &a.filename),
        size: a.size,
        shrink: a.shrink,
    };
    resize(&req, &env, &mut Ui::new(&a.common))?;
    if !a.common.quiet {
        outln!("Image resized.");
    }
    Ok(0)
}
