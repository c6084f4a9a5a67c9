//! `vmcrypt luks kill-slot`: wipe a key slot (luksKillSlot). Outside batch mode, or
//! with a key file, a remaining passphrase must open first.
use super::opts::KeyOpts;
use super::report_tokens;
use vmcrypt_block::jobs::luks::slots::kill_slot;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    slot: u32,
    key_file_pos: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut keys = a.key.keys(&a.device, a.key_file_pos.as_deref());
    let verify = a.key_file_pos.is_some() || a.key.key_file.is_some() || !a.key.batch;
    let t = a.key.target(&a.device);
    let r = kill_slot(&t, a.slot, verify, a.key.batch, &mut keys)?;
    report_tokens(&r.dropped_tokens);
    eprintln!("Key slot {} wiped.", a.slot);
    Ok(0)
}
