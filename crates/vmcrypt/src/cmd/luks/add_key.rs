//! `vmcrypt luks add-key`: add a passphrase (luksAddKey).
use super::opts::{KeyOpts, NewKeyOpts};
use vmcrypt_block::jobs::luks::slots::add_key;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    /// File with the new passphrase
    new_key_file_pos: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
    #[command(flatten)]
    new: NewKeyOpts,
    /// Use the volume key from FILE instead of an existing passphrase
    #[arg(
        long = "volume-key-file",
        alias = "master-key-file",
        value_name = "FILE"
    )]
    volume_key_file: Option<String>,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut keys = a
        .key
        .keys(&a.device, None)
        .with_new(a.new_key_file_pos.as_deref(), &a.new)
        .with_volume_key(a.volume_key_file.as_deref());
    let t = a.key.target(&a.device);
    let slot = add_key(&t, a.key.key_slot, &a.new.keyslot(), &mut keys)?;
    eprintln!("Key slot {slot} created.");
    Ok(0)
}
