//! `vmcrypt rebase` (qemu-img rebase): flags -> [`RebaseRequest`] -> the rebase job
//! (safe by default, header only with `-u`), with qemu-img's `-p` progress line.
use super::common::{Common, Ui};
use vmcrypt_block::jobs::rebase::{RebaseRequest, run as rebase};
use vmcrypt_error::Result;

/// Flags of `vmcrypt rebase`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f')]
    pub format: Option<String>,
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
    let env = a.common.env()?;
    let req = RebaseRequest {
        image: a.common.image(a.format.as_deref(), &a.filename),
        backing: a.backing,
        backing_format: a.backing_format,
        unsafe_mode: a.unsafe_mode,
    };
    let mut ui = Ui::with_progress(&a.common, a.progress && !a.unsafe_mode);
    rebase(&req, &env, &mut ui)?;
    ui.finish();
    Ok(0)
}
