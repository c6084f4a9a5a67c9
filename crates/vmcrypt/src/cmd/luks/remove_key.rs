//! `vmcrypt luks remove-key`: remove the key slot a passphrase opens (luksRemoveKey).
use super::opts::KeyOpts;
use super::report_tokens;
use vmcrypt_block::jobs::luks::slots::remove_key;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    key_file_pos: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut keys = a.key.keys(&a.device, a.key_file_pos.as_deref());
    let r = remove_key(&a.key.target(&a.device), a.key.batch, &mut keys)?;
    eprintln!("Key slot {} removed.", r.slot);
    report_tokens(&r.kill.dropped_tokens);
    Ok(0)
}
