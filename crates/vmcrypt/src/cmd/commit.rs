//! `vmcrypt commit` (qemu-img commit): flags -> [`CommitRequest`] -> the commit job,
//! with qemu-img's `-p` progress line.
use super::common::{Common, Ui};
use vmcrypt_block::jobs::commit::{CommitRequest, run as commit};
use vmcrypt_error::Result;

/// Flags of `vmcrypt commit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f')]
    pub format: Option<String>,
    /// Do not empty the image after the commit
    #[arg(short = 'd')]
    pub keep: bool,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let env = a.common.env()?;
    let req = CommitRequest {
        image: a.common.image(a.format.as_deref(), &a.filename),
        keep: a.keep,
    };
    let mut ui = Ui::with_progress(&a.common, a.progress);
    commit(&req, &env, &mut ui)?;
    ui.finish();
    if !a.common.quiet {
        outln!("Image committed.");
    }
    Ok(0)
}
