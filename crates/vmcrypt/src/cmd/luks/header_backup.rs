//! `vmcrypt luks header-backup`: save the header and key slots to a new file
//! (luksHeaderBackup).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::header::backup;
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
    backup(&a.key.target(&a.device), &a.file)?;
    Ok(0)
}
