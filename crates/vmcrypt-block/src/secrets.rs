//! Secrets as QEMU takes them: `--object secret,id=ID,file=PATH` (the file's exact bytes)
//! or `data=...` (unsafe: the value is visible in the process list), optionally
//! `format=base64`, or a value from vmcrypt's secret store (`store-uuid=UUID` or
//! `store-usage=TYPE:ID`, loaded through the [`StoredSecrets`] the caller plugged in).
//! Nodes refer to them by id (`key-secret=ID`).
use crate::opts::{opt_str, parse_json_filename, parse_keyval};
use std::collections::HashMap;
use std::sync::Arc;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, bail, ensure};
use zeroize::Zeroizing;

/// A secret named in an external store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredRef {
    /// `store-uuid=UUID`.
    Uuid(String),
    /// `store-usage=TYPE:ID`, e.g. `volume:/var/lib/images/a.img`.
    Usage(String),
}

/// Loads stored secrets' values; the CLI plugs in the `vmcrypt-secrets` store, so this
/// crate never holds the store's master key.
pub trait StoredSecrets: Send + Sync {
    fn load(&self, r: &StoredRef) -> Result<SecretBytes>;
}

/// Secrets by id.
#[derive(Default)]
pub struct SecretStore {
    map: HashMap<String, SecretBytes>,
    stored: Option<Arc<dyn StoredSecrets>>,
}

impl SecretStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose `--object`s may name stored secrets, loaded through `loader`.
    pub fn with_stored(loader: Option<Arc<dyn StoredSecrets>>) -> Self {
        SecretStore {
            stored: loader,
            ..Self::default()
        }
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
                "qom-type" | "id" | "file" | "data" | "format" | "store-uuid" | "store-usage" => {}
                "keyid" | "iv" => bail!(
                    Unsupported,
                    "secret '{id}': encrypted secrets (keyid/iv) are not supported"
                ),
                other => bail!(Usage, "secret '{id}': unknown property '{other}'"),
            }
        }
        let raw = self.raw_value(&id, &m)?;
        let bytes = match opt_str(&m, "format")?.as_deref() {
            None | Some("raw") => raw.to_vec(),
            Some("base64") => {
                decode_base64(&raw).map_err(|e| e.context(format!("secret '{id}'")))?
            }
            Some(f) => bail!(Usage, "secret '{id}': unknown format '{f}' (raw or base64)"),
        };
        self.insert(&id, SecretBytes::new(bytes))
    }

    /// The value of secret `id` from exactly one of `file`, `data`, `store-uuid`,
    /// `store-usage`.
    fn raw_value(
        &self,
        id: &str,
        m: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let sources: Vec<&str> = ["file", "data", "store-uuid", "store-usage"]
            .into_iter()
            .filter(|k| m.contains_key(*k))
            .collect();
        ensure!(
            sources.len() <= 1,
            Usage,
            "secret '{id}': '{}' are mutually exclusive",
            sources.join("', '")
        );
        let Some(&source) = sources.first() else {
            bail!(
                Usage,
                "secret '{id}': either 'file', 'data', 'store-uuid' or 'store-usage' must be given"
            );
        };
        let val = opt_str(m, source)?.unwrap_or_default();
        Ok(match source {
            "file" => Zeroizing::new(
                std::fs::read(&val)
                    .map_err(|e| Error::io(e, format!("secret '{id}': cannot read '{val}'")))?,
            ),
            "data" => Zeroizing::new(val.into_bytes()),
            _ => {
                let r = if source == "store-uuid" {
                    StoredRef::Uuid(val)
                } else {
                    StoredRef::Usage(val)
                };
                let loader = self.stored.as_ref().ok_or_else(|| {
                    Error::unsupported(format!(
                        "secret '{id}': {source} needs vmcrypt's secret store, which this \
                         command does not read"
                    ))
                })?;
                let v = loader
                    .load(&r)
                    .map_err(|e| e.context(format!("secret '{id}'")))?;
                Zeroizing::new(v.as_bytes().to_vec())
            }
        })
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

    struct Fake;
    impl StoredSecrets for Fake {
        fn load(&self, r: &StoredRef) -> Result<SecretBytes> {
            match r {
                StoredRef::Uuid(u) if u == "u1" => Ok(SecretBytes::from_slice(b"by-uuid")),
                StoredRef::Usage(u) if u == "volume:/a" => Ok(SecretBytes::from_slice(b"by-usage")),
                _ => Err(Error::not_found("no such stored secret")),
            }
        }
    }

    #[test]
    fn stored_refs() {
        let mut s = SecretStore::with_stored(Some(Arc::new(Fake)));
        s.add_object("secret,id=a,store-uuid=u1").unwrap();
        s.add_object("secret,id=b,store-usage=volume:/a").unwrap();
        assert_eq!(s.get("a").unwrap().as_bytes(), b"by-uuid");
        assert_eq!(s.get("b").unwrap().as_bytes(), b"by-usage");
        let e = s.add_object("secret,id=c,store-uuid=u2").unwrap_err();
        assert!(e.to_string().contains("secret 'c'"), "{e}");
        let e = s
            .add_object("secret,id=d,store-uuid=u1,file=/x")
            .unwrap_err();
        assert!(e.to_string().contains("mutually exclusive"), "{e}");
        let mut plain = SecretStore::new();
        let e = plain.add_object("secret,id=a,store-uuid=u1").unwrap_err();
        assert_eq!(e.kind(), vmcrypt_error::ErrorKind::Unsupported);
    }
}
