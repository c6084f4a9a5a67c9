//! `vmcrypt secret dumpxml UUID` and `undefine UUID` (virsh secret-dumpxml /
//! secret-undefine).
use super::{StoreOpts, parse_uuid};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The secret's UUID
    pub uuid: String,
    #[command(flatten)]
    pub store: StoreOpts,
}

pub fn dumpxml(a: &Args) -> Result<()> {
    let xml = a.store.store().dumpxml(&parse_uuid(&a.uuid)?)?;
    out!("{xml}");
    Ok(())
}

pub fn undefine(a: &Args) -> Result<()> {
    let uuid = parse_uuid(&a.uuid)?;
    a.store.store().undefine(&uuid)?;
    outln!("Secret {uuid} deleted");
    Ok(())
}
