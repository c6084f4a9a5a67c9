//! `vmcrypt secret define FILE.xml` (virsh secret-define).
use super::StoreOpts;
use vmcrypt_error::{Error, Result};
use vmcrypt_secrets::SecretDef;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// libvirt secret XML
    pub file: String,
    #[command(flatten)]
    pub store: StoreOpts,
}

pub fn run(a: &Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| Error::io(e, format!("cannot read '{}'", a.file)))?;
    let def = SecretDef::parse(&text).map_err(|e| e.context(format!("'{}'", a.file)))?;
    a.store.store().define(&def)?;
    outln!("Secret {} created", def.uuid);
    Ok(())
}
