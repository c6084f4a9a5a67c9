//! Creating qcow2 images (`create -f qcow2`) and metadata-only rebasing (`rebase -u`).
//!
//! Options have qemu-img's names and defaults. The layout comes from
//! [`vmcrypt_format::qcow2::plan`] (QEMU's: header, refcount table, refcount block, L1,
//! LUKS region). With `encrypt.format=luks` a LUKS1 header is made in the FDE region by
//! [`Luks1Volume::create`] through a [`RawDriver`] window, laid out as QEMU does (key
//! material packed, payload offset = region length, e.g. 4040 sectors for AES-256-XTS).
//! No guest data is written: the image is empty (all clusters unallocated).
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::{CreateParams, Luks1Volume};
use crate::drivers::raw::RawDriver;
use crate::opts::{opt_bool, opt_str, opt_u64};
use crate::secrets::SecretStore;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{self, Layout, SECTOR_SIZE};
use vmcrypt_format::qcow2::{
    CompressionType, CreateSpec, Extensions, Header, Limits, build_header_cluster, plan,
};

/// Options `-f qcow2` accepts, with their meaning (for `-o help`).
pub const QCOW2_OPTIONS: &[(&str, &str)] = &[
    ("size", "virtual disk size"),
    (
        "compat",
        "compatibility level: 0.10 (v2) or 1.1 (v3, default)",
    ),
    ("backing_file", "file name of a base image"),
    (
        "backing_fmt",
        "format of the base image (required with backing_file)",
    ),
    ("encrypt.format", "encryption: luks (aes is refused)"),
    (
        "encrypt.key-secret",
        "ID of the secret object that holds the passphrase",
    ),
    (
        "encrypt.cipher-alg",
        "cipher: aes-128/192/256, twofish-*, serpent-*, cast5-128 (default aes-256)",
    ),
    ("encrypt.cipher-mode", "xts, cbc or ecb (default xts)"),
    (
        "encrypt.ivgen-alg",
        "plain, plain64, essiv, ... (default plain64)",
    ),
    (
        "encrypt.ivgen-hash-alg",
        "IV hash, written after any generator; essiv uses it (default sha256)",
    ),
    ("encrypt.hash-alg", "PBKDF2 and AF hash (default sha256)"),
    (
        "encrypt.iter-time",
        "milliseconds of PBKDF2 per unlock (default 2000)",
    ),
    (
        "cluster_size",
        "qcow2 cluster size: 512 .. 2M, a power of two (default 64k)",
    ),
    ("preallocation", "off (the only mode supported for qcow2)"),
    (
        "lazy_refcounts",
        "postpone refcount updates (needs compat=1.1)",
    ),
    (
        "refcount_bits",
        "width of a reference count: 1, 2, 4, 8, 16 (default), 32 or 64",
    ),
    (
        "extended_l2",
        "extended L2 entries with subclusters (clusters of 16k or more)",
    ),
    ("compression_type", "zlib (default) or zstd"),
    ("data_file", "external data file (not supported)"),
];

/// The `encrypt.*` keys qemu-img's qcow2 driver knows (besides `format`/`key-secret`).
pub(crate) const LUKS_KEYS: &[&str] = &[
    "cipher-alg",
    "cipher-mode",
    "ivgen-alg",
    "ivgen-hash-alg",
    "hash-alg",
    "iter-time",
];

/// A parsed `-f qcow2` option set.
pub struct Qcow2CreateOptions {
    pub spec: CreateSpec,
    /// LUKS parameters and the secret ID, for `encrypt.format=luks`.
    pub luks: Option<(CreateParams, String)>,
}

/// Flatten `{"encrypt": {"format": ..}}` into `encrypt.format` keys.
fn flatten(opts: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in opts {
        match v {
            Value::Object(sub) => {
                for (sk, sv) in flatten(sub)? {
                    out.insert(format!("{k}.{sk}"), sv);
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

/// Parse qemu-img's qcow2 create options. `size` is the virtual size in bytes (the
/// caller resolves `-o size` / the positional size / the backing file's size).
pub fn parse_options(size: u64, opts: &Map<String, Value>) -> Result<Qcow2CreateOptions> {
    let o = flatten(opts)?;
    for k in o.keys() {
        ensure!(
            QCOW2_OPTIONS.iter().any(|(n, _)| n == k),
            Usage,
            "invalid parameter '{k}' for format 'qcow2' (-o help lists them)"
        );
    }
    if let Some(p) = opt_str(&o, "preallocation")? {
        ensure!(
            p == "off",
            Unsupported,
            "qcow2: preallocation mode '{p}' is not supported (only 'off')"
        );
    }
    ensure!(
        !o.contains_key("data_file"),
        Unsupported,
        "qcow2: external data files (data_file) are not supported"
    );
    let mut spec = CreateSpec::new(size);
    spec.version = match opt_str(&o, "compat")?.as_deref() {
        None | Some("1.1") | Some("v3") => 3,
        Some("0.10") | Some("v2") => 2,
        Some(c) => bail!(
            Usage,
            "qcow2: invalid compat level '{c}' (0.10, 1.1, v2 or v3)"
        ),
    };
    if let Some(cs) = opt_u64(&o, "cluster_size")? {
        ensure!(
            cs.is_power_of_two() && (512..=2 << 20).contains(&cs),
            Usage,
            "qcow2: cluster size {cs} must be a power of two between 512 and 2M"
        );
        spec.cluster_bits = cs.trailing_zeros();
    }
    if let Some(rb) = opt_u64(&o, "refcount_bits")? {
        ensure!(
            rb.is_power_of_two() && rb <= 64,
            Usage,
            "qcow2: refcount_bits {rb} must be a power of two up to 64"
        );
        spec.refcount_order = rb.trailing_zeros();
    }
    spec.lazy_refcounts = opt_bool(&o, "lazy_refcounts")?.unwrap_or(false);
    spec.extended_l2 = opt_bool(&o, "extended_l2")?.unwrap_or(false);
    spec.compression_type = match opt_str(&o, "compression_type")?.as_deref() {
        None | Some("zlib") => CompressionType::Zlib,
        Some("zstd") => CompressionType::Zstd,
        Some(c) => bail!(
            Usage,
            "qcow2: unknown compression type '{c}' (zlib or zstd)"
        ),
    };
    spec.backing_file = opt_str(&o, "backing_file")?.filter(|b| !b.is_empty());
    spec.backing_format = opt_str(&o, "backing_fmt")?;
    if spec.backing_file.is_some() {
        ensure!(
            spec.backing_format.is_some(),
            Usage,
            "qcow2: backing file specified without backing format (use -F FMT or -o backing_fmt=FMT)"
        );
    }
    let luks = parse_encryption(&o)?;
    if let Some((p, _)) = &luks {
        spec.fde_len = Some(fde_len(p));
    }
    Ok(Qcow2CreateOptions { spec, luks })
}

fn parse_encryption(o: &Map<String, Value>) -> Result<Option<(CreateParams, String)>> {
    let format = opt_str(o, "encrypt.format")?;
    let any_luks_key = LUKS_KEYS
        .iter()
        .chain(&["key-secret"])
        .find(|k| o.contains_key(&format!("encrypt.{k}")));
    match format.as_deref() {
        None => {
            if let Some(k) = any_luks_key {
                bail!(Usage, "qcow2: encrypt.{k} needs encrypt.format=luks");
            }
            Ok(None)
        }
        Some("aes") => bail!(
            Unsupported,
            "qcow2: creating images with the legacy AES encryption (encrypt.format=aes) is not supported: it is insecure; use encrypt.format=luks"
        ),
        Some("luks") => {
            let mut sub = Map::new();
            for k in LUKS_KEYS {
                if let Some(v) = o.get(&format!("encrypt.{k}")) {
                    sub.insert((*k).to_string(), v.clone());
                }
            }
            let mut params = crate::jobs::create::luks_params(&sub)?;
            params.layout = Layout::Qemu;
            params.detached = false;
            let id = opt_str(o, "encrypt.key-secret")?.ok_or_else(|| {
                Error::usage(
                    "qcow2: Parameter 'encrypt.key-secret' is required for cipher (-o encrypt.key-secret=ID)",
                )
            })?;
            Ok(Some((params, id)))
        }
        Some(f) => bail!(Usage, "qcow2: unknown encrypt.format '{f}' (luks)"),
    }
}

/// Bytes of the LUKS region: QEMU makes it exactly the LUKS payload offset.
pub(super) fn fde_len(p: &CreateParams) -> u64 {
    let (_, payload) = luks1::plan_layout(p.spec.key_bytes as u32, Layout::Qemu, false);
    u64::from(payload) * SECTOR_SIZE
}

/// Create a qcow2 image at `path`. Returns the file (protocol) node, flushed.
pub fn create(
    path: &Path,
    size: u64,
    opts: &Map<String, Value>,
    secrets: &SecretStore,
) -> Result<Arc<dyn BlockDriver>> {
    let parsed = parse_options(size, opts)?;
    let p = plan(&parsed.spec)?;
    // Fetch the passphrase before touching the file.
    let luks = match &parsed.luks {
        Some((params, id)) => Some((params, secrets.get(id)?)),
        None => None,
    };
    // An image with a LUKS header holds key slots: owner-only, like a LUKS image.
    let file: Arc<dyn BlockDriver> = Arc::new(if luks.is_some() {
        FileDriver::create_private(path, p.file_size)?
    } else {
        FileDriver::create(path, p.file_size)?
    });
    let order = parsed.spec.refcount_order;
    file.write_at(&p.refcount_table(), p.refcount_table_offset)
        .ctx("qcow2: writing the refcount table")?;
    for (i, off) in p.refcount_blocks.iter().enumerate() {
        file.write_at(&p.refcount_block(i, order), *off)
            .ctx("qcow2: writing a refcount block")?;
    }
    if let (Some((params, pass)), Some(fde)) = (luks, p.fde) {
        let window: Arc<dyn BlockDriver> = Arc::new(
            RawDriver::new(file.clone(), fde.offset, Some(fde.length))
                .ctx("qcow2: the LUKS header region")?,
        );
        let (vol, _key) = Luks1Volume::create(window, params, pass.as_bytes())
            .with_ctx(|| format!("creating the LUKS header in '{}'", path.display()))?;
        ensure!(
            vol.payload_offset() == fde.length,
            Internal,
            "qcow2: LUKS payload offset {} differs from the planned region of {} bytes",
            vol.payload_offset(),
            fde.length
        );
    }
    // The header goes last: until it is written the file is not a qcow2 image.
    file.write_at(&p.header_cluster, 0)
        .ctx("qcow2: writing the header")?;
    file.flush()?;
    Ok(file)
}

/// The backing file name and format a new image names, from its options (so the CLI can
/// default the size to the backing file's).
pub fn backing_of(opts: &Map<String, Value>) -> Result<Option<(String, Option<String>)>> {
    let o = flatten(opts)?;
    Ok(opt_str(&o, "backing_file")?
        .filter(|b| !b.is_empty())
        .map(|b| (b, opt_str(&o, "backing_fmt").ok().flatten())))
}

/// `rebase -u`: point the image at `file` (with format `fmt`) or, with `None`, at no
/// backing file. Only cluster 0 changes, and it is written with one write.
pub fn rebase_unsafe(image: &Path, backing: Option<(&str, Option<&str>)>) -> Result<()> {
    let file = FileDriver::open(image, false)?;
    let bytes = rebased_header(&file, &image.display().to_string(), backing)?;
    file.write_at(&bytes, 0).ctx("qcow2: writing the header")?;
    file.flush()
}

/// The new cluster 0 of the qcow2 image in `file` (named `image` in messages) after
/// pointing it at `backing` (see [`rebase_unsafe`]); nothing is written. Fails like
/// [`rebase_unsafe`] would (dirty or corrupt image, name too long for cluster 0), so a
/// safe rebase can check before it copies data.
pub fn rebased_header(
    file: &dyn BlockDriver,
    image: &str,
    backing: Option<(&str, Option<&str>)>,
) -> Result<Vec<u8>> {
    let size = file.size();
    let mut head = vec![0u8; 512.min(size) as usize];
    file.read_at(&mut head, 0)?;
    let h = Header::decode(&head).with_ctx(|| format!("'{image}'"))?;
    h.validate(size, &Limits::default())?;
    let mut cluster = vec![0u8; h.cluster_size().min(size) as usize];
    file.read_at(&mut cluster, 0)?;
    ensure!(
        !h.is_dirty() && !h.is_corrupt(),
        Unsupported,
        "qcow2: '{image}' is marked dirty or corrupt; repair it first (check -r)"
    );
    ensure!(
        h.unknown_incompatible() == 0,
        Unsupported,
        "qcow2: '{image}' uses unknown incompatible features {:#x}",
        h.unknown_incompatible()
    );
    let mut ext = Extensions::decode(&cluster, u64::from(h.header_length), h.extensions_end())?;
    let name = match backing {
        Some((name, fmt)) if !name.is_empty() => {
            ext.backing_format = fmt.map(str::to_string);
            Some(name)
        }
        _ => {
            ext.backing_format = None;
            None
        }
    };
    let (_, mut bytes) = build_header_cluster(&h, &ext, name)
        .with_ctx(|| format!("cannot rebase '{image}' in place"))?;
    bytes.truncate(cluster.len());
    Ok(bytes)
}
