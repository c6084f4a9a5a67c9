//! Image creation (`vmcrypt create`, and the target side of `convert`): raw files and
//! LUKS1 images, from qemu-img's `-o` option names.
use crate::driver::BlockDriver;
use crate::file::FileDriver;
use crate::luks::volume::{CreateParams, KdfParams, Luks1Volume};
use crate::opts::{opt_bool, opt_str, opt_u64};
use crate::secrets::SecretStore;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg};
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
    ("ivgen-hash-alg", "hash for essiv (default sha256)"),
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

/// Options `-f raw` accepts.
pub const RAW_OPTIONS: &[(&str, &str)] = &[
    ("size", "virtual disk size"),
    ("preallocation", "off (the only mode supported)"),
];

/// The -o options of `format`, or an error naming unsupported formats.
pub fn options_for(format: &str) -> Result<&'static [(&'static str, &'static str)]> {
    match format {
        "raw" => Ok(RAW_OPTIONS),
        "luks" => Ok(LUKS_OPTIONS),
        other => bail!(
            Unsupported,
            "cannot create images of format '{other}' (supported: raw, luks)"
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
    let iterations = opt_u64(opts, "iterations")?.map(|i| i as u32);
    if let Some(i) = iterations {
        ensure!(
            i >= 1000,
            Usage,
            "iterations {i} is below the minimum of 1000"
        );
    }
    let layout = match opt_str(opts, "layout")?.as_deref() {
        None | Some("cryptsetup") => Layout::default(),
        Some("qemu") => Layout::Qemu,
        Some(l) => bail!(Usage, "unknown layout '{l}' (cryptsetup or qemu)"),
    };
    Ok(CreateParams {
        spec,
        hash,
        layout,
        detached: opt_bool(opts, "detached-header")?.unwrap_or(false),
        payload_offset: None,
        kdf: KdfParams {
            iter_time_ms: iter_time as u32,
            iterations,
        },
        uuid: opt_str(opts, "uuid")?,
        volume_key: None,
        slot: opt_u64(opts, "key-slot")?.unwrap_or(0) as usize,
    })
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
    check_known(format, opts)?;
    match format {
        "raw" => Ok(Arc::new(FileDriver::create(path, size)?)),
        "luks" => {
            let params = luks_params(opts)?;
            let id = opt_str(opts, "key-secret")?.ok_or_else(|| {
                Error::usage("Parameter 'key-secret' is required for cipher (-o key-secret=ID)")
            })?;
            let pass = secrets.get(&id)?;
            ensure!(
                size.is_multiple_of(512),
                Usage,
                "LUKS image size {size} must be a multiple of 512 bytes"
            );
            let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::create(path, 0)?);
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
