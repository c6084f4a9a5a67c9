//! `vmcrypt luks token import|export|remove`: LUKS2 tokens (cryptsetup token).
use super::opts::KeyOpts;
use std::io::Read;
use vmcrypt_block::jobs::luks::luks2::{token_export, token_import, token_remove};
use vmcrypt_error::{Error, Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// import, export or remove
    action: String,
    device: String,
    /// Token id (import: default the lowest free one)
    #[arg(long = "token-id", value_name = "N")]
    token_id: Option<u32>,
    /// JSON file to import (default: stdin) or to export to (default: stdout)
    #[arg(long = "json-file", value_name = "FILE")]
    json_file: Option<String>,
    #[command(flatten)]
    key: KeyOpts,
}

pub fn run(a: &Args) -> Result<u8> {
    let t = a.key.target(&a.device);
    match a.action.as_str() {
        "import" => {
            let id = token_import(&t, a.token_id, &read_json(a.json_file.as_deref())?)?;
            eprintln!("Token {id} imported.");
        }
        "export" => {
            let id = a
                .token_id
                .ok_or_else(|| Error::usage("token export needs --token-id"))?;
            let json = token_export(&t, id)?;
            match &a.json_file {
                Some(f) => {
                    std::fs::write(f, &json).map_err(|e| Error::io(e, format!("writing '{f}'")))?
                }
                None => outln!("{json}"),
            }
        }
        "remove" => {
            let id = a
                .token_id
                .ok_or_else(|| Error::usage("token remove needs --token-id"))?;
            token_remove(&t, id)?;
        }
        other => bail!(
            Usage,
            "unknown token action '{other}' (import, export or remove)"
        ),
    }
    Ok(0)
}

/// The token to import: the file's text, or all of stdin.
fn read_json(file: Option<&str>) -> Result<String> {
    match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| Error::io(e, format!("reading '{f}'"))),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::io(e, "reading the token from stdin"))?;
            Ok(s)
        }
    }
}
