//! `vmcrypt luks repair`: rewrite a damaged or outdated LUKS2 header copy from the
//! valid one (cryptsetup repair).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::luks2::repair;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    if repair(&a.key.target(&a.device))? {
        eprintln!("LUKS2 header repaired: both copies rewritten.");
    } else {
        eprintln!("No repair needed: both LUKS2 header copies are valid.");
    }
    Ok(0)
}
