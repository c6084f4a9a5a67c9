//! `vmcrypt luks uuid`: print or set the UUID (luksUUID).
use super::opts::KeyOpts;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    /// Set this UUID
    #[arg(long = "uuid")]
    uuid: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let t = a.key.target(&a.device);
    if let Some(u) = vmcrypt_block::jobs::luks::header::uuid(&t, a.uuid.as_deref())? {
        outln!("{u}");
    }
    Ok(0)
}
