//! `vmcrypt resize` (qemu-img resize): flags -> [`ResizeRequest`] -> the resize job.
use super::common::ImageOpts;
use vmcrypt_block::jobs::resize::{ResizeRequest, run as resize};
use vmcrypt_error::Result;

/// Flags of `vmcrypt resize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    /// Allow shrinking (data past the new end is lost)
    #[arg(long)]
    pub shrink: bool,
    pub filename: String,
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

pub fn run(a: Args) -> Result<u8> {
    let (env, image) = a.image.open_parts(&a.filename);
    let req = ResizeRequest {
        image,
        size: a.size,
        shrink: a.shrink,
    };
    resize(&req, &env, &mut a.image.ui(false))?;
    if !a.image.common.quiet {
        outln!("Image resized.");
    }
    Ok(0)
}
