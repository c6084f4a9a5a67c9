//! `vmcrypt secret set-value UUID [--file F] [--plain]` and `get-value UUID [--plain]`
//! (virsh secret-set-value / secret-get-value). The value never comes from argv: from a
//! file or stdin, base64 unless `--plain`, as virsh reads `--file`.
use super::{StoreOpts, parse_uuid};
use std::io::{Read, Write};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, ensure};
use zeroize::Zeroizing;

#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The secret's UUID
    pub uuid: String,
    /// Read the value from FILE (default: stdin)
    #[arg(long = "file", value_name = "FILE")]
    pub file: Option<String>,
    /// The input is the value itself, not base64
    #[arg(long = "plain")]
    pub plain: bool,
    #[command(flatten)]
    pub store: StoreOpts,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The secret's UUID
    pub uuid: String,
    /// Print the raw value instead of base64
    #[arg(long = "plain")]
    pub plain: bool,
    #[command(flatten)]
    pub store: StoreOpts,
}

fn read_input(file: Option<&str>) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        Some(f) => {
            *buf = std::fs::read(f).map_err(|e| Error::io(e, format!("cannot read '{f}'")))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(e, "cannot read the value from stdin"))?;
        }
    }
    Ok(buf)
}

pub fn set(a: &SetArgs) -> Result<()> {
    let uuid = parse_uuid(&a.uuid)?;
    let input = read_input(a.file.as_deref())?;
    let value = if a.plain {
        SecretBytes::from_slice(&input)
    } else {
        vmcrypt_secrets::base64_decode(&input)
            .map_err(|e| e.context("the value is read as base64; use --plain for raw bytes"))?
    };
    ensure!(
        !value.is_empty(),
        Usage,
        "secret {uuid}: refusing to set an empty value"
    );
    a.store.store().set_value(&uuid, value.as_bytes())?;
    outln!("Secret value set");
    Ok(())
}

pub fn get(a: &GetArgs) -> Result<()> {
    let uuid = parse_uuid(&a.uuid)?;
    let value = a.store.store().get_value(&uuid)?;
    let mut out = std::io::stdout().lock();
    let res = if a.plain {
        out.write_all(value.as_bytes())
    } else {
        let b64 = vmcrypt_secrets::base64_encode(value.as_bytes());
        out.write_all(b64.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
    };
    res.and_then(|_| out.flush())
        .map_err(|e| Error::io(e, "cannot write the value to stdout"))
}
