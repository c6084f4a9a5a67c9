//! `vmcrypt luks header-backup` and `header-restore`: save the header and key slots to
//! a new file (luksHeaderBackup), or write such a backup back (luksHeaderRestore).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::header::{backup, restore};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[arg(long = "header-backup-file", value_name = "FILE")]
    file: String,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run_backup(a: &Args) -> Result<u8> {
    backup(&a.key.target(&a.device), &a.file)?;
    Ok(0)
}

pub fn run_restore(a: &Args) -> Result<u8> {
    restore(&a.key.target(&a.device), &a.file)?;
    Ok(0)
}
