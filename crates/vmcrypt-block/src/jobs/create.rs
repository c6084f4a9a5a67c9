//! Image creation (`vmcrypt create`, and the target side of `convert`): raw files, LUKS1
//! and LUKS2 images, from qemu-img's `-o` option names (plus cryptsetup's LUKS2 knobs);
//! qcow2 images are made by [`crate::drivers::qcow2::create`].
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::{CreateParams, KdfKind, Luks1Volume, Luks2Volume};
use crate::opts::{opt_bool, opt_str, opt_u64};
use crate::secrets::SecretStore;
use crate::spec::{NodeSpec, spec_from_filename};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::Layout;

/// Options `-f luks` accepts, with their meaning (for `-o help`).
pub const LUKS_OPTIONS: &[(&str, &str)] = &[
    (
        "key-secret",
        "ID of the secret object that holds the passphrase",
    ),
    (
        "cipher-alg",
        "cipher: aes-128/192/256, twofish-128/192/256, serpent-128/192/256, cast5-128 (default aes-256)",
    ),
    ("cipher-mode", "xts, cbc or ecb (default xts)"),
    (
        "ivgen-alg",
        "plain, plain64, plain64be, essiv, benbi or null (default plain64)",
    ),
    (
        "ivgen-hash-alg",
        "IV hash, written after any generator; essiv uses it (default sha256)",
    ),
    (
        "hash-alg",
        "PBKDF2 and AF hash: sha1, sha224, sha256, sha384, sha512, ripemd160, whirlpool (default sha256)",
    ),
    (
        "iter-time",
        "milliseconds of PBKDF2 per unlock (default 2000)",
    ),
    (
        "detached-header",
        "on: the image file is a header only (payload offset 0)",
    ),
    ("size", "virtual disk size"),
    ("preallocation", "off (the only mode supported)"),
    (
        "layout",
        "vmcrypt extension: cryptsetup (payload aligned to 1 MiB, default) or qemu (packed, 4040 sectors)",
    ),
    (
        "key-slot",
        "vmcrypt extension: key slot for the passphrase (default 0)",
    ),
    (
        "uuid",
        "vmcrypt extension: UUID to write instead of a random one",
    ),
    (
        "iterations",
        "vmcrypt extension: fixed PBKDF2 iteration count (overrides iter-time)",
    ),
];

/// Options `-f luks2` (or `-f luks -o luks-version=2`) accepts besides [`LUKS_OPTIONS`].
pub const LUKS2_OPTIONS: &[(&str, &str)] = &[
    (
        "luks-version",
        "1 (default for -f luks) or 2 (default for -f luks2)",
    ),
    (
        "sector-size",
        "LUKS2 data sector size: 512, 1024, 2048 or 4096 (default 4096)",
    ),
    (
        "pbkdf",
        "LUKS2 key slot KDF: argon2id (default), argon2i or pbkdf2",
    ),
    (
        "pbkdf-memory",
        "Argon2 memory in KiB (default: 1 GiB, at most half of RAM)",
    ),
    ("pbkdf-parallel", "Argon2 threads (default: min(4, CPUs))"),
    ("label", "LUKS2 label"),
    ("subsystem", "LUKS2 subsystem"),
    (
        "metadata-size",
        "size of one LUKS2 header copy: 16k (default) .. 4m",
    ),
    (
        "keyslots-size",
        "size of the LUKS2 keyslots area (default: up to the 16 MiB data offset)",
    ),
];

/// Options `-f raw` accepts.
pub const RAW_OPTIONS: &[(&str, &str)] = &[
    ("size", "virtual disk size"),
    ("preallocation", "off (the only mode supported)"),
];

/// The -o options of `format`, or an error naming unsupported formats.
pub fn options_for(format: &str) -> Result<Vec<(&'static str, &'static str)>> {
    match format {
        "raw" => Ok(RAW_OPTIONS.to_vec()),
        "luks" | "luks2" => Ok(LUKS_OPTIONS.iter().chain(LUKS2_OPTIONS).copied().collect()),
        "qcow2" => Ok(crate::drivers::qcow2::create::QCOW2_OPTIONS.to_vec()),
        "rbd" => Ok(super::rbd::RBD_OPTIONS.to_vec()),
        other => bail!(
            Unsupported,
            "cannot create images of format '{other}' (supported: raw, luks, luks2, qcow2, rbd)"
        ),
    }
}

/// The LUKS version `-f FORMAT -o luks-version=N` asks for.
pub fn luks_version(format: &str, opts: &Map<String, Value>) -> Result<u8> {
    let default = if format == "luks2" { 2 } else { 1 };
    match opt_u64(opts, "luks-version")? {
        None => Ok(default),
        Some(v @ (1 | 2)) if format != "luks2" || v == 2 => Ok(v as u8),
        Some(v) => bail!(
            Usage,
            "luks-version={v} is not valid for format '{format}' (1 or 2)"
        ),
    }
}

fn check_known(format: &str, opts: &Map<String, Value>) -> Result<()> {
    let known = options_for(format)?;
    for k in opts.keys() {
        if !known.iter().any(|(n, _)| n == k) {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            bail!(
                Usage,
                "invalid parameter '{k}' for format '{format}' (supported: {})",
                names.join(", ")
            );
        }
    }
    if let Some(p) = opt_str(opts, "preallocation")? {
        ensure!(
            p == "off",
            Unsupported,
            "preallocation mode '{p}' is not supported (only 'off')"
        );
    }
    Ok(())
}

/// LUKS create parameters from `-o` options (QEMU's names and defaults).
pub fn luks_params(opts: &Map<String, Value>) -> Result<CreateParams> {
    let p = luks_params_any_kdf(opts)?;
    if let Some(i) = p.keyslot.iterations {
        ensure!(
            i >= 1000,
            Usage,
            "iterations {i} is below the minimum of 1000"
        );
    }
    Ok(p)
}

/// [`luks_params`] without the PBKDF2 iteration minimum: for LUKS2, where `iterations`
/// may be an Argon2 time cost and the key-slot layer checks each KDF's own range.
fn luks_params_any_kdf(opts: &Map<String, Value>) -> Result<CreateParams> {
    let alg = opt_str(opts, "cipher-alg")?.unwrap_or_else(|| "aes-256".into());
    let mode = opt_str(opts, "cipher-mode")?.unwrap_or_else(|| "xts".into());
    let ivgen = opt_str(opts, "ivgen-alg")?.unwrap_or_else(|| "plain64".into());
    let ivhash = opt_str(opts, "ivgen-hash-alg")?;
    let ivhash = match (ivgen.as_str(), ivhash) {
        ("essiv", None) => Some("sha256".to_string()),
        (_, h) => h,
    };
    let spec = CipherSpec::from_qemu(&alg, &mode, &ivgen, ivhash.as_deref())?;
    let hash = HashAlg::from_name(&opt_str(opts, "hash-alg")?.unwrap_or_else(|| "sha256".into()))?;
    let iter_time = opt_u64(opts, "iter-time")?.unwrap_or(2000);
    ensure!(
        iter_time > 0 && iter_time <= 600_000,
        Usage,
        "iter-time {iter_time} ms is out of range (1..600000)"
    );
    let iterations = opt_u64(opts, "iterations")?.map(|i| i.min(u64::from(u32::MAX)) as u32);
    let layout = match opt_str(opts, "layout")?.as_deref() {
        None | Some("cryptsetup") => Layout::default(),
        Some("qemu") => Layout::Qemu,
        Some(l) => bail!(Usage, "unknown layout '{l}' (cryptsetup or qemu)"),
    };
    let mut p = CreateParams::luks1(spec);
    (p.keyslot.hash, p.keyslot.iter_time_ms) = (hash, iter_time as u32);
    p.keyslot.iterations = iterations;
    p.layout = layout;
    p.detached = opt_bool(opts, "detached-header")?.unwrap_or(false);
    p.uuid = opt_str(opts, "uuid")?;
    p.slot = opt_u64(opts, "key-slot")?.map_or(0, |s| s.min(u64::from(u32::MAX)) as u32);
    Ok(p)
}

/// Create an image of `format` at `path` with `size` virtual bytes.
/// For luks, `opts` must name `key-secret`. Returns the opened protocol node.
pub fn create_image(
    path: &Path,
    format: &str,
    size: u64,
    opts: &Map<String, Value>,
    secrets: &SecretStore,
) -> Result<Arc<dyn BlockDriver>> {
    if format == "qcow2" {
        return crate::drivers::qcow2::create::create(path, size, opts, secrets);
    }
    if let Some(target) = path.to_str().filter(|t| super::rbd::is_rbd_target(t)) {
        ensure!(
            format == "raw" || format == "rbd",
            Unsupported,
            "an rbd: target is created as raw or rbd (librbd's encryption with \
             -o encrypt.format=luks|luks2), not as {format}"
        );
        return super::rbd::create(target, size, opts, secrets);
    }
    ensure!(
        format != "rbd",
        Usage,
        "-f rbd needs an rbd:POOL/IMAGE target, not '{}'",
        path.display()
    );
    check_known(format, opts)?;
    match format {
        "raw" => Ok(Arc::new(FileDriver::create(path, size)?)),
        "luks" | "luks2" if luks_version(format, opts)? == 2 => {
            create_luks2(path, size, opts, secrets)
        }
        "luks" => {
            if let Some(k) = LUKS2_OPTIONS
                .iter()
                .map(|(k, _)| *k)
                .find(|k| *k != "luks-version" && opts.contains_key(*k))
            {
                bail!(
                    Usage,
                    "option '{k}' needs LUKS2 (-f luks2 or -o luks-version=2)"
                );
            }
            let params = luks_params(opts)?;
            let pass = required_key(opts, secrets)?;
            ensure!(
                size.is_multiple_of(512),
                Usage,
                "LUKS image size {size} must be a multiple of 512 bytes"
            );
            let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::create_private(path, 0)?);
            let (vol, _key) = Luks1Volume::create(file.clone(), &params, pass.as_bytes())
                .with_ctx(|| format!("creating LUKS header in '{}'", path.display()))?;
            let total = if params.detached {
                vol.header().header_area_end().div_ceil(4096) * 4096
            } else {
                vol.payload_offset() + size
            };
            file.resize(total)?;
            file.flush()?;
            Ok(file)
        }
        _ => unreachable!("checked by options_for"),
    }
}

/// The spec that opens an image [`create_image`] made at `target` with `format` and the
/// `-o` options `opts`: the key its options named (`key-secret` for luks,
/// `encrypt.key-secret` for qcow2) becomes the node's key.
pub fn created_spec(target: &str, format: &str, opts: &Map<String, Value>) -> Result<NodeSpec> {
    if super::rbd::is_rbd_target(target) {
        return super::rbd::created_spec(target, opts);
    }
    let mut spec = spec_from_filename(target, Some(format))?;
    match &mut spec {
        NodeSpec::Luks(l) => l.key_secret = opt_str(opts, "key-secret")?,
        NodeSpec::Qcow2(q) => {
            if let Some(Value::Object(enc)) = opts.get("encrypt") {
                q.encrypt.key_secret = opt_str(enc, "key-secret")?;
            }
        }
        _ => {}
    }
    Ok(spec)
}

/// LUKS2 create parameters from `-o` options.
pub fn luks2_params(opts: &Map<String, Value>) -> Result<CreateParams> {
    let v1 = luks_params_any_kdf(opts)?;
    let mut p = CreateParams::luks2(v1.spec);
    p.keyslot.kdf =
        KdfKind::from_name(&opt_str(opts, "pbkdf")?.unwrap_or_else(|| "argon2id".into()))?;
    (p.keyslot.hash, p.keyslot.iter_time_ms) = (v1.keyslot.hash, v1.keyslot.iter_time_ms);
    p.keyslot.iterations = v1.keyslot.iterations;
    p.keyslot.memory_kib =
        opt_u64(opts, "pbkdf-memory")?.map(|m| m.min(u64::from(u32::MAX)) as u32);
    p.keyslot.parallel = opt_u64(opts, "pbkdf-parallel")?.map(|m| m.min(64) as u32);
    if let Some(ss) = opt_u64(opts, "sector-size")? {
        p.sector_size = ss.min(u64::from(u32::MAX)) as u32;
    }
    if let Some(m) = opt_u64(opts, "metadata-size")? {
        p.hdr_size = m;
    }
    p.keyslots_size = opt_u64(opts, "keyslots-size")?;
    p.detached = v1.detached;
    p.label = opt_str(opts, "label")?.unwrap_or_default();
    p.subsystem = opt_str(opts, "subsystem")?.unwrap_or_default();
    p.uuid = v1.uuid;
    p.slot = v1.slot;
    p.luks2_layout()?;
    Ok(p)
}

/// The passphrase `-o key-secret=ID` names, which creating an encrypted image needs.
fn required_key<'a>(
    opts: &Map<String, Value>,
    secrets: &'a SecretStore,
) -> Result<&'a SecretBytes> {
    let id = opt_str(opts, "key-secret")?.ok_or_else(|| {
        Error::usage("Parameter 'key-secret' is required for cipher (-o key-secret=ID)")
    })?;
    secrets.get(&id)
}

fn create_luks2(
    path: &Path,
    size: u64,
    opts: &Map<String, Value>,
    secrets: &SecretStore,
) -> Result<Arc<dyn BlockDriver>> {
    let params = luks2_params(opts)?;
    let pass = required_key(opts, secrets)?;
    ensure!(
        size.is_multiple_of(u64::from(params.sector_size)),
        Usage,
        "LUKS2 image size {size} must be a multiple of the {}-byte sector size",
        params.sector_size
    );
    let (data_offset, keyslots) = params.luks2_layout()?;
    let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::create_private(path, 0)?);
    Luks2Volume::create(file.clone(), &params, pass.as_bytes())
        .with_ctx(|| format!("creating LUKS2 header in '{}'", path.display()))?;
    let total = if params.detached {
        2 * params.hdr_size + keyslots
    } else {
        data_offset + size
    };
    file.resize(total)?;
    file.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmcrypt_error::ErrorKind;

    /// An encrypted image needs `key-secret`, naming a secret that was given.
    #[test]
    fn required_key_names_what_is_missing() {
        let mut secrets = SecretStore::new();
        secrets
            .insert("s0", SecretBytes::new(b"pw".to_vec()))
            .unwrap();
        let opts = |v: Value| v.as_object().unwrap().clone();
        let none = required_key(&opts(serde_json::json!({})), &secrets).unwrap_err();
        assert_eq!(none.kind(), ErrorKind::Usage);
        assert!(
            none.to_string().contains("'key-secret' is required"),
            "{none}"
        );
        let other = opts(serde_json::json!({"key-secret": "s1"}));
        let e = required_key(&other, &secrets).unwrap_err();
        assert!(e.to_string().contains("no secret with id 's1'"), "{e}");
        let ok = opts(serde_json::json!({"key-secret": "s0"}));
        assert_eq!(required_key(&ok, &secrets).unwrap().as_bytes(), b"pw");
    }
}
