//! `vmcrypt rebase` (qemu-img rebase): flags -> [`RebaseRequest`] -> the rebase job
//! (safe by default, header only with `-u`), with qemu-img's `-p` progress line.
use super::common::ImageOpts;
use vmcrypt_block::jobs::rebase::{RebaseRequest, run as rebase};
use vmcrypt_error::Result;

/// Flags of `vmcrypt rebase`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    /// New backing file ("" removes the backing file)
    #[arg(short = 'b', value_name = "BACKING_FILE")]
    pub backing: String,
    /// Format of the new backing file
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Unsafe mode: change only the backing file name, copy no data
    #[arg(short = 'u')]
    pub unsafe_mode: bool,
    /// Show progress (safe mode)
    #[arg(short = 'p')]
    pub progress: bool,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let (env, image) = a.image.open_parts(&a.filename);
    let req = RebaseRequest {
        image,
        backing: a.backing,
        backing_format: a.backing_format,
        unsafe_mode: a.unsafe_mode,
    };
    let ui = a.image.ui(a.progress && !a.unsafe_mode);
    ui.run(|ui| rebase(&req, &env, ui))?;
    Ok(0)
}
