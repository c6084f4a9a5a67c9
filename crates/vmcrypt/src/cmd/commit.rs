//! `vmcrypt commit` (qemu-img commit): flags -> [`CommitRequest`] -> the commit job,
//! with qemu-img's `-p` progress line.
use super::common::ImageOpts;
use vmcrypt_block::jobs::commit::{CommitRequest, run as commit};
use vmcrypt_error::Result;

/// Flags of `vmcrypt commit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    /// Do not empty the image after the commit
    #[arg(short = 'd')]
    pub keep: bool,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let (env, image) = a.image.open_parts(&a.filename);
    let req = CommitRequest {
        image,
        keep: a.keep,
    };
    a.image.ui(a.progress).run(|ui| commit(&req, &env, ui))?;
    if !a.image.common.quiet {
        outln!("Image committed.");
    }
    Ok(0)
}
