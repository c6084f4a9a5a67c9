//! `vmcrypt luks convert --type luks1|luks2`: convert a header in place (cryptsetup
//! convert).
use super::opts::KeyOpts;
use vmcrypt_block::drivers::luks::Version;
use vmcrypt_block::jobs::luks::header::convert;
use vmcrypt_error::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    /// Target type: luks1 or luks2
    #[arg(long = "type", value_name = "TYPE")]
    to: String,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let to = match a.to.as_str() {
        "luks1" => Version::V1,
        "luks2" => Version::V2,
        other => bail!(Usage, "--type must be luks1 or luks2, not '{other}'"),
    };
    let r = convert(&a.key.target(&a.device), to)?;
    eprintln!(
        "Converted LUKS{} to LUKS{} ({} key slot(s) moved).",
        r.from_version,
        r.to_version,
        r.keyslots.iter().filter(|m| m.moved()).count()
    );
    Ok(0)
}
