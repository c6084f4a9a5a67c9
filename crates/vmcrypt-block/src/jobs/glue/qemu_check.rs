//! What `qemu-args` refuses before printing anything: secrets given inline (`data=`),
//! and LUKS images QEMU's luks driver cannot open.
use crate::opts::{opt_str, parse_json_filename, parse_keyval};
use crate::secrets::SecretStore;
use serde_json::Value;
use vmcrypt_error::{Error, Result, bail, ensure};

/// Load every `--object` (so a missing key file is reported now, not by QEMU), refusing
/// `data=`: the arguments are meant for a command line, where a passphrase is public.
/// Returns the store and the secrets' ids.
pub(super) fn checked_secrets(objects: &[String]) -> Result<(SecretStore, Vec<String>)> {
    let mut store = SecretStore::new();
    let mut ids = Vec::new();
    for o in objects {
        let m = if o.trim_start().starts_with('{') {
            parse_json_filename(o)?
        } else {
            parse_keyval(o, Some("qom-type"))?
        };
        ensure!(
            !m.contains_key("data"),
            Usage,
            "--object '{}': data= would put the passphrase on QEMU's command line, where every \
             user can read it (ps, /proc); write it to a file readable only by you and use file=PATH",
            opt_str(&m, "id")?.unwrap_or_default()
        );
        store.add_object(o)?;
        ids.extend(opt_str(&m, "id")?);
    }
    Ok((store, ids))
}

/// Hashes QEMU's luks driver implements.
const HASHES: &[&str] = &[
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "sm3",
];

/// Refuse what QEMU's luks driver cannot open: LUKS2, and LUKS1 ciphers, IV generators
/// or hashes QEMU does not implement. `info` is the node's format-specific data (for
/// qcow2, its `encrypt` object).
pub(super) fn check_luks_for_qemu(info: &Value, image: &str) -> Result<()> {
    if info.get("version").and_then(Value::as_u64) == Some(2) {
        bail!(
            Unsupported,
            "'{image}' is LUKS2, which QEMU cannot open: serve it with `vmcrypt serve --socket PATH ...` \
             and attach the NBD export (`vmcrypt libvirt disk-xml --socket PATH`, or QEMU's \
             -blockdev driver=nbd,server.type=unix,server.path=PATH)"
        );
    }
    let get = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("");
    let unsupported = |what: &str, v: &str| {
        Error::unsupported(format!(
            "'{image}' uses {what} '{v}', which QEMU's luks driver does not implement: \
             serve it with `vmcrypt serve` and attach it over NBD instead"
        ))
    };
    let mode = get("cipher-mode");
    if !["xts", "cbc", "ecb", "ctr"].contains(&mode) {
        return Err(unsupported("cipher mode", mode));
    }
    if let Some(iv) = info.get("ivgen-alg").and_then(Value::as_str)
        && !["plain", "plain64", "essiv"].contains(&iv)
    {
        return Err(unsupported("IV generator", iv));
    }
    for key in ["hash-alg", "ivgen-hash-alg"] {
        if let Some(h) = info.get(key).and_then(Value::as_str)
            && !HASHES.contains(&h)
        {
            return Err(unsupported("hash", h));
        }
    }
    Ok(())
}
