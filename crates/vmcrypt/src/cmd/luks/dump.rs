//! `vmcrypt luks dump`: print the header (luksDump), as text or JSON.
use super::opts::KeyOpts;
use crate::cmd::common::pretty;
use vmcrypt_block::jobs::luks::header::{DumpReport, dump};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[command(flatten)]
    key: KeyOpts,
    /// Print the volume key too (asks for a passphrase)
    #[arg(long = "dump-volume-key", alias = "dump-master-key")]
    dump_volume_key: bool,
    /// JSON instead of cryptsetup's text
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args) -> Result<u8> {
    let t = a.key.target(&a.device);
    let mut keys = a.key.keys(&a.device, None);
    match dump(&t, a.json, a.dump_volume_key, a.key.key_slot, &mut keys)? {
        DumpReport::Json(v) => outln!("{}", pretty(&v)),
        DumpReport::Text(s) => out!("{s}"),
    }
    Ok(0)
}
