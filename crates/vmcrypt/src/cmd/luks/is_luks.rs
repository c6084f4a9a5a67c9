//! `vmcrypt luks is-luks`: exit 0 if the device has a LUKS header, 4 if not (isLuks).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::header::is_luks;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[arg(short = 'v', long)]
    verbose: bool,
    #[command(flatten)]
    key: KeyOpts,
}

/// Exit status when the device is not LUKS (the "bad image" status, 4).
const NOT_LUKS: u8 = 4;

pub fn run(a: &Args) -> Result<u8> {
    let ok = is_luks(&a.key.target(&a.device))?;
    if !ok && a.verbose {
        eprintln!("Device {} is not a valid LUKS device.", a.device);
    }
    Ok(if ok { 0 } else { NOT_LUKS })
}
