//! `vmcrypt luks header-restore`: restore the header and key slots from a backup
//! (luksHeaderRestore).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::header::restore;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[arg(long = "header-backup-file", value_name = "FILE")]
    file: String,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    restore(&a.key.target(&a.device), &a.file)?;
    Ok(0)
}
