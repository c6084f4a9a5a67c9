//! `vmcrypt luks config`: set a LUKS2 keyslot's priority, the label or the subsystem
//! (cryptsetup config).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::luks2::{Config, config};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    /// Keyslot priority: ignore, normal or prefer (needs --key-slot)
    #[arg(long)]
    priority: Option<String>,
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    subsystem: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let c = Config {
        priority: a.priority.clone(),
        slot: a.key.key_slot,
        label: a.label.clone(),
        subsystem: a.subsystem.clone(),
    };
    config(&a.key.target(&a.device), &c)?;
    Ok(0)
}
