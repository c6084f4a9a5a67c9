//! `vmcrypt luks test-key`: check a passphrase without changing anything
//! (open --test-passphrase).
use super::opts::KeyOpts;
use vmcrypt_block::jobs::luks::slots::test_key;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut keys = a.key.keys(&a.device, None);
    let slot = test_key(&a.key.target(&a.device), a.key.key_slot, &mut keys)?;
    eprintln!("Key slot {slot} unlocked.");
    Ok(0)
}
