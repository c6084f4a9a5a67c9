//! Secrets as QEMU takes them: `--object secret,id=ID,file=PATH` (the file's exact bytes)
//! or `data=...` (unsafe: the value is visible in the process list), optionally
//! `format=base64`. Nodes refer to them by id (`key-secret=ID`).
use crate::opts::{opt_str, parse_json_filename, parse_keyval};
use std::collections::HashMap;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, bail, ensure};
use zeroize::Zeroizing;

/// Secrets by id.
#[derive(Default)]
pub struct SecretStore {
    map: HashMap<String, SecretBytes>,
}

impl SecretStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a secret directly (e.g. a passphrase read from a prompt).
    pub fn insert(&mut self, id: &str, secret: SecretBytes) -> Result<()> {
        ensure!(
            !self.map.contains_key(id),
            Usage,
            "attempt to add duplicate object id '{id}'"
        );
        self.map.insert(id.to_string(), secret);
        Ok(())
    }

    /// Parse one `--object` argument (keyval or JSON form). Only `secret` objects exist.
    pub fn add_object(&mut self, arg: &str) -> Result<()> {
        let m = if arg.trim_start().starts_with('{') {
            parse_json_filename(arg)?
        } else {
            parse_keyval(arg, Some("qom-type"))?
        };
        let ty = opt_str(&m, "qom-type")?.unwrap_or_default();
        ensure!(
            ty == "secret",
            Unsupported,
            "--object type '{ty}' is not supported (only 'secret')"
        );
        let id = opt_str(&m, "id")?.ok_or_else(|| Error::usage("--object secret needs id=..."))?;
        for k in m.keys() {
            match k.as_str() {
                "qom-type" | "id" | "file" | "data" | "format" => {}
                "keyid" | "iv" => bail!(
                    Unsupported,
                    "secret '{id}': encrypted secrets (keyid/iv) are not supported"
                ),
                other => bail!(Usage, "secret '{id}': unknown property '{other}'"),
            }
        }
        let raw = match (opt_str(&m, "file")?, opt_str(&m, "data")?) {
            (Some(path), None) => Zeroizing::new(
                std::fs::read(&path)
                    .map_err(|e| Error::io(e, format!("secret '{id}': cannot read '{path}'")))?,
            ),
            (None, Some(data)) => Zeroizing::new(data.into_bytes()),
            (Some(_), Some(_)) => bail!(
                Usage,
                "secret '{id}': 'data' and 'file' are mutually exclusive"
            ),
            (None, None) => bail!(
                Usage,
                "secret '{id}': either 'file' or 'data' must be given"
            ),
        };
        let bytes = match opt_str(&m, "format")?.as_deref() {
            None | Some("raw") => raw.to_vec(),
            Some("base64") => {
                decode_base64(&raw).map_err(|e| e.context(format!("secret '{id}'")))?
            }
            Some(f) => bail!(Usage, "secret '{id}': unknown format '{f}' (raw or base64)"),
        };
        self.insert(&id, SecretBytes::new(bytes))
    }

    /// The secret with `id`.
    pub fn get(&self, id: &str) -> Result<&SecretBytes> {
        self.map.get(id).ok_or_else(|| {
            Error::not_found(format!(
                "no secret with id '{id}' (add --object secret,id={id},file=PATH)"
            ))
        })
    }
}

fn decode_base64(s: &[u8]) -> Result<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = s
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let body = clean
        .strip_suffix(b"==")
        .or_else(|| clean.strip_suffix(b"="))
        .unwrap_or(&clean);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in body {
        let v = val(c).ok_or_else(|| Error::usage("invalid base64 data"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse() {
        let mut s = SecretStore::new();
        s.add_object("secret,id=a,data=pass").unwrap();
        s.add_object("secret,id=b,data=aGVsbG8=,format=base64")
            .unwrap();
        s.add_object(r#"{"qom-type":"secret","id":"c","data":"x"}"#)
            .unwrap();
        assert_eq!(s.get("a").unwrap().as_bytes(), b"pass");
        assert_eq!(s.get("b").unwrap().as_bytes(), b"hello");
        assert_eq!(s.get("c").unwrap().as_bytes(), b"x");
        assert!(s.add_object("secret,id=a,data=again").is_err());
        assert!(s.add_object("secret,id=d").is_err());
        assert!(s.add_object("iothread,id=e").is_err());
        assert_eq!(
            s.get("zz").unwrap_err().kind(),
            vmcrypt_error::ErrorKind::NotFound
        );
    }
}
