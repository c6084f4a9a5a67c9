//! `vmcrypt luks change-key`: change a passphrase (luksChangeKey).
use super::opts::{KeyOpts, NewKeyOpts};
use vmcrypt_block::jobs::luks::slots::{NewKeyslot, change_key};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[command(flatten)]
    key: KeyOpts,
    new_key_file_pos: Option<String>,
    #[command(flatten)]
    new: NewKeyOpts,
    /// LUKS1 with every key slot in use: rewrite the slot in place (as cryptsetup does);
    /// if that is interrupted, neither passphrase opens the slot
    #[arg(long = "force-in-place")]
    force_in_place: bool,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut keys = a
        .key
        .keys(&a.device, None)
        .with_new(a.new_key_file_pos.as_deref(), &a.new);
    let t = a.key.target(&a.device);
    let new = NewKeyslot {
        in_place: a.force_in_place,
        ..a.new.keyslot()
    };
    let r = change_key(&t, a.key.key_slot, &new, &mut keys)?;
    match r.to {
        Some(to) => eprintln!("Key slot {} changed (now key slot {to}).", r.from),
        None => eprintln!("Key slot {} changed.", r.from),
    }
    Ok(0)
}
