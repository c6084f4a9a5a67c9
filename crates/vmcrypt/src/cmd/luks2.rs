//! LUKS2-only `vmcrypt luks` commands: token import/export/remove, repair, config.
use super::luks::open_v2;
use crate::cli::KeyOpts;
use std::io::Read;
use vmcrypt_error::{Error, Result, bail};
use vmcrypt_format::luks2::Priority;

/// `vmcrypt luks token import|export|remove DEVICE`.
pub fn token(
    action: &str,
    device: &str,
    id: Option<u32>,
    json_file: Option<&str>,
    key: &KeyOpts,
) -> Result<u8> {
    match action {
        "import" => {
            let text = match json_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| Error::io(e, format!("reading '{f}'")))?,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| Error::io(e, "reading the token from stdin"))?;
                    s
                }
            };
            let mut v = open_v2(device, key, false)?;
            let id = v.token_import(id, &text)?;
            eprintln!("Token {id} imported.");
        }
        "export" => {
            let id = id.ok_or_else(|| Error::usage("token export needs --token-id"))?;
            let json = open_v2(device, key, true)?.token_export(id)?;
            match json_file {
                Some(f) => {
                    std::fs::write(f, &json).map_err(|e| Error::io(e, format!("writing '{f}'")))?
                }
                None => outln!("{json}"),
            }
        }
        "remove" => {
            let id = id.ok_or_else(|| Error::usage("token remove needs --token-id"))?;
            open_v2(device, key, false)?.token_remove(id)?;
        }
        other => bail!(
            Usage,
            "unknown token action '{other}' (import, export or remove)"
        ),
    }
    Ok(0)
}

/// `vmcrypt luks repair DEVICE`.
pub fn repair(device: &str, key: &KeyOpts) -> Result<u8> {
    let mut v = open_v2(device, key, false)?;
    if v.repair()? {
        eprintln!("LUKS2 header repaired: both copies rewritten.");
    } else {
        eprintln!("No repair needed: both LUKS2 header copies are valid.");
    }
    Ok(0)
}

/// `vmcrypt luks config DEVICE [--priority P --key-slot N] [--label L] [--subsystem S]`.
pub fn config(
    device: &str,
    priority: Option<&str>,
    label: Option<String>,
    subsystem: Option<String>,
    key: &KeyOpts,
) -> Result<u8> {
    let mut v = open_v2(device, key, false)?;
    if let Some(p) = priority {
        let slot = key
            .key_slot
            .ok_or_else(|| Error::usage("--priority needs --key-slot"))? as u32;
        let prio = match p {
            "ignore" => Priority::Ignore,
            "normal" => Priority::Normal,
            "prefer" => Priority::Prefer,
            other => bail!(
                Usage,
                "unknown priority '{other}' (ignore, normal or prefer)"
            ),
        };
        v.set_priority(slot, prio)?;
    }
    if label.is_some() || subsystem.is_some() {
        v.set_label(label.as_deref(), subsystem.as_deref())?;
    }
    Ok(0)
}
