//! RBD image jobs: `rbd encryption format` (librbd's layout, written by vmcrypt) and
//! the rbd side of `create` / `convert -O rbd` (an image, optionally formatted with
//! `encrypt.format=luks|luks2`, sized so its encrypted area is the size asked for, as
//! QEMU's rbd driver does).
use crate::driver::BlockDriver;
use crate::drivers::luks::{KeyslotParams, Version};
use crate::drivers::rbd::format::{Formatted, format, librbd_params};
use crate::drivers::rbd::{RbdDriver, connect};
use crate::jobs::luks::format::FormatRequest;
use crate::jobs::luks::slots::NewKeyslot;
use crate::opts::{opt_str, opt_u64};
use crate::secrets::SecretStore;
use crate::spec::{NodeSpec, RbdEncrypt, RbdEncryptFormat, RbdSpec, rbd_filename_options};
use serde_json::{Map, Value};
use std::sync::Arc;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// Options `create -f rbd` / `convert -O rbd` accept (also with `-f raw` on an `rbd:`
/// target).
pub const RBD_OPTIONS: &[(&str, &str)] = &[
    ("size", "virtual disk size"),
    (
        "cluster_size",
        "RBD object size in bytes, a power of two (default 4 MiB)",
    ),
    ("key-secret", "ID of the secret holding the cephx key"),
    ("encrypt.format", "librbd encryption: luks or luks2"),
    (
        "encrypt.key-secret",
        "ID of the secret holding the passphrase",
    ),
    ("encrypt.cipher-alg", "aes-128 or aes-256 (default aes-256)"),
    (
        "encrypt.iter-time",
        "vmcrypt extension: milliseconds of KDF per unlock (default 2000)",
    ),
    (
        "encrypt.pbkdf-memory",
        "vmcrypt extension: LUKS2 Argon2 memory in KiB",
    ),
];

/// `vmcrypt rbd encryption format IMAGE luks1|luks2 PASSFILE`.
#[derive(Clone, Debug)]
pub struct EncryptionFormatRequest {
    /// The image (`rbd:`-less name `POOL[/NS]/IMAGE`, with conf and user).
    pub image: RbdSpec,
    pub version: Version,
    /// 128 or 256 (`--cipher-alg aes-128|aes-256`).
    pub aes_bits: u32,
    pub keyslot: NewKeyslot,
}

/// `POOL[/NAMESPACE]/IMAGE` (or `IMAGE` in pool `rbd`, as the rbd CLI reads it).
pub fn image_spec(name: &str, conf: Option<&str>, user: Option<&str>) -> Result<RbdSpec> {
    let full = if name.contains('/') {
        format!("rbd:{name}")
    } else {
        format!("rbd:rbd/{name}")
    };
    let mut spec = RbdSpec::parse(&rbd_filename_options(&full)?)?;
    spec.conf = conf.map(Into::into).or(spec.conf);
    spec.user = user.map(Into::into).or(spec.user);
    Ok(spec)
}

/// Format the image's encryption as librbd does; its data is lost.
pub fn encryption_format(req: &EncryptionFormatRequest, passphrase: &[u8]) -> Result<Formatted> {
    ensure!(
        req.image.snapshot.is_none(),
        Usage,
        "cannot format a snapshot ({})",
        req.image.image_name()
    );
    let raw =
        Arc::new(RbdDriver::open(&req.image, None, false)?.lock_header("rbd encryption format")?);
    let params = new_header(&raw, req.version, req.aes_bits, &req.keyslot)?;
    format(&raw, &params, passphrase)
}

/// `luks format` of an rbd image (`rbd:POOL/IMAGE...`): the same header as `rbd
/// encryption format` writes, librbd's layout. Only what that layout leaves open is
/// accepted: aes-xts-plain64 with a 256- or 512-bit key (AES-128 / AES-256), sha256,
/// key slot 0, LUKS2's 4096-byte or LUKS1's 512-byte sectors, and the key slot's KDF
/// options; anything else is refused naming the option, before anything is written.
pub fn from_luks_format(req: &FormatRequest) -> Result<EncryptionFormatRequest> {
    let fixed = [
        ("--header", req.header.is_some()),
        ("--label", req.label.is_some()),
        ("--subsystem", req.subsystem.is_some()),
        ("--uuid", req.uuid.is_some()),
        ("--offset", req.offset_sectors.is_some()),
        ("--align-payload", req.align_sectors.is_some()),
        ("--luks2-metadata-size", req.metadata_size.is_some()),
        ("--luks2-keyslots-size", req.keyslots_size.is_some()),
        (
            "--key-slot other than 0",
            req.key_slot.is_some_and(|s| s != 0),
        ),
        (
            "--cipher other than aes-xts-plain64",
            req.cipher
                .as_deref()
                .is_some_and(|c| c != "aes-xts-plain64"),
        ),
        (
            "--hash other than sha256",
            req.hash.as_deref().is_some_and(|h| h != "sha256"),
        ),
    ];
    if let Some((opt, _)) = fixed.iter().find(|(_, given)| *given) {
        bail!(
            Usage,
            "{opt} cannot be used with rbd image {}: librbd's encryption layout fixes it \
             (header at offset 0, data offset the object size, aes-xts-plain64)",
            req.device
        );
    }
    let aes_bits = match req.key_bits {
        None | Some(512) => 256,
        Some(256) => 128,
        Some(b) => bail!(
            Usage,
            "--key-size {b} cannot be used with rbd image {}: librbd's aes-xts-plain64 \
             takes 256 (AES-128) or 512 (AES-256)",
            req.device
        ),
    };
    let sector = match req.version {
        Version::V1 => 512,
        Version::V2 => 4096,
    };
    ensure!(
        req.sector_size.is_none_or(|s| s == sector),
        Usage,
        "--sector-size {} cannot be used with rbd image {}: librbd's LUKS{} uses {sector}",
        req.sector_size.unwrap_or(0),
        req.device,
        req.version.number()
    );
    Ok(EncryptionFormatRequest {
        image: RbdSpec::parse(&rbd_filename_options(&req.device)?)?,
        version: req.version,
        aes_bits,
        keyslot: req.keyslot.clone(),
    })
}

/// `vmcrypt rbd clone PARENT@SNAP CLONE luks1|luks2 PASSFILE`.
#[derive(Clone, Debug)]
pub struct CloneRequest {
    /// The parent image with the snapshot to clone (created and protected if needed).
    pub parent: RbdSpec,
    /// The new clone (same cluster; `conf`/`user` of `parent` are used).
    pub child: RbdSpec,
    pub version: Version,
    pub aes_bits: u32,
    pub keyslot: NewKeyslot,
}

/// Clone `parent@snap` through librbd and give the clone its own passphrase and volume
/// key, in Ceph Reef's layered layout (works on any Ceph: the crypto is vmcrypt's).
/// Reading the clone then needs the parent's key too (`encrypt.parent.*`).
pub fn clone(req: &CloneRequest, passphrase: &[u8]) -> Result<Formatted> {
    let Some(snap) = req.parent.snapshot.as_deref() else {
        bail!(
            Usage,
            "rbd clone needs the parent's snapshot: POOL/IMAGE@SNAP (created if missing)"
        );
    };
    ensure!(
        req.child.snapshot.is_none(),
        Usage,
        "the clone is an image, not a snapshot ({})",
        req.child.image_name()
    );
    let ppool = connect(&req.parent, None)?;
    ppool
        .open(&req.parent.image, None, false)?
        .snap_create_protected(snap)?;
    let cpool = connect(&req.child, None)?;
    ppool.clone_image(&req.parent.image, snap, &cpool, &req.child.image)?;
    let raw = Arc::new(
        RbdDriver::new(cpool.open(&req.child.image, None, false)?, false)?
            .lock_header("rbd clone")?,
    );
    let params = new_header(&raw, req.version, req.aes_bits, &req.keyslot)?;
    crate::drivers::rbd::format::format_clone(&raw, &params, passphrase)
        .with_ctx(|| format!("formatting clone {}", req.child.image_name()))
}

/// `flatten` of a clone with its own key (its spec names the parent's encryption):
/// what is still in the parent is re-encrypted under the clone's key, then the parent
/// is detached and the header becomes plain LUKS.
pub fn flatten(spec: &RbdSpec, env: &crate::jobs::Env) -> Result<()> {
    let ctx = env.ctx(crate::jobs::image_arg::Access::WRITE)?;
    let node = crate::graph::open_rbd_encrypted(spec, &ctx)?;
    node.flatten()
}

/// librbd's header parameters for `raw`.
fn new_header(
    raw: &RbdDriver,
    version: Version,
    aes_bits: u32,
    keyslot: &NewKeyslot,
) -> Result<crate::drivers::luks::CreateParams> {
    librbd_params(
        version,
        raw.object_size(),
        aes_bits,
        keyslot.params(version)?,
    )
}

/// Whether `target` names an rbd image (`rbd:...`).
pub fn is_rbd_target(target: &str) -> bool {
    target.starts_with("rbd:")
}

/// Create the rbd image `target` (`rbd:POOL/IMAGE...`) of `size` usable bytes, formatted
/// when `opts` has `encrypt.format`. Returns the raw image node.
pub fn create(
    target: &str,
    size: u64,
    opts: &Map<String, Value>,
    secrets: &SecretStore,
) -> Result<Arc<dyn BlockDriver>> {
    check_options(opts)?;
    let spec = RbdSpec::parse(&rbd_filename_options(target)?)?;
    let key = opt_str(opts, "key-secret")?
        .map(|id| secrets.get(&id))
        .transpose()?;
    let key = key.map(|k| k.as_bytes());
    let order = match opt_u64(opts, "cluster_size")? {
        None => None,
        Some(c) if c.is_power_of_two() && (4096..=1 << 30).contains(&c) => Some(c.trailing_zeros()),
        Some(c) => bail!(
            Usage,
            "rbd cluster_size {c} must be a power of two from 4 KiB to 1 GiB"
        ),
    };
    let enc = encrypt_options(opts)?;
    let pool = connect(&spec, key)?;
    // Room for the largest header librbd's layout uses (LUKS2: 16 MiB rounded up to
    // the object size); the image is resized to header + `size` once formatted.
    let obj = 1u64 << order.unwrap_or(22);
    let room = if enc.is_some() {
        (16u64 << 20).div_ceil(obj) * obj
    } else {
        0
    };
    pool.create_image(&spec.image, size + room, order)?;
    let image = pool.open(&spec.image, None, false)?;
    let raw = Arc::new(RbdDriver::new(image, false)?);
    let Some((version, aes_bits, keyslot, pass_id)) = enc else {
        return Ok(raw);
    };
    let pass = secrets.get(&pass_id)?;
    let params = librbd_params(version, raw.object_size(), aes_bits, keyslot)?;
    let done = format(&raw, &params, pass.as_bytes())
        .with_ctx(|| format!("formatting the encryption of {target}"))?;
    raw.resize(size + done.data_offset)?;
    Ok(raw)
}

fn check_options(opts: &Map<String, Value>) -> Result<()> {
    for (k, v) in opts {
        if k == "encrypt" {
            let Value::Object(e) = v else {
                bail!(Usage, "rbd: 'encrypt' must be given as encrypt.format=...");
            };
            for ek in e.keys() {
                let full = format!("encrypt.{ek}");
                ensure!(
                    RBD_OPTIONS.iter().any(|(n, _)| *n == full),
                    Usage,
                    "rbd images do not take the option '{full}'"
                );
            }
        } else {
            ensure!(
                RBD_OPTIONS.iter().any(|(n, _)| n == k) || k == "preallocation",
                Usage,
                "rbd images do not take the option '{k}'"
            );
        }
    }
    Ok(())
}

type EncryptChoice = (Version, u32, KeyslotParams, String);

fn encrypt_options(opts: &Map<String, Value>) -> Result<Option<EncryptChoice>> {
    let Some(Value::Object(e)) = opts.get("encrypt") else {
        return Ok(None);
    };
    let version = match opt_str(e, "format")?.as_deref() {
        Some("luks") | Some("luks1") => Version::V1,
        Some("luks2") => Version::V2,
        Some(other) => bail!(
            Usage,
            "rbd: encrypt.format must be luks or luks2 to create an image, not '{other}'"
        ),
        None => bail!(Usage, "rbd: encrypt options need encrypt.format"),
    };
    let aes_bits = match opt_str(e, "cipher-alg")?.as_deref() {
        None | Some("aes-256") => 256,
        Some("aes-128") => 128,
        Some(other) => bail!(
            Usage,
            "rbd: encrypt.cipher-alg must be aes-128 or aes-256, not '{other}'"
        ),
    };
    let id = opt_str(e, "key-secret")?
        .ok_or_else(|| Error::usage("rbd: encrypt.format needs encrypt.key-secret=ID"))?;
    let slot = NewKeyslot {
        iter_time_ms: opt_u64(e, "iter-time")?.map(|t| t as u32),
        memory_kib: opt_u64(e, "pbkdf-memory")?.map(|m| m as u32),
        ..NewKeyslot::default()
    };
    Ok(Some((version, aes_bits, slot.params(version)?, id)))
}

/// The spec that opens an image [`create`] made: the rbd node, with its encryption and
/// the passphrase's secret when `opts` formatted it.
pub fn created_spec(target: &str, opts: &Map<String, Value>) -> Result<NodeSpec> {
    let mut spec = RbdSpec::parse(&rbd_filename_options(target)?)?;
    spec.key_secret = opt_str(opts, "key-secret")?;
    if let Some(Value::Object(e)) = opts.get("encrypt") {
        let format = match opt_str(e, "format")?.as_deref() {
            Some("luks2") => RbdEncryptFormat::Luks2,
            _ => RbdEncryptFormat::Luks1,
        };
        spec.encrypt = Some(RbdEncrypt {
            format,
            key_secret: opt_str(e, "key-secret")?,
            parent: None,
        });
    }
    Ok(NodeSpec::Rbd(spec))
}

/// The passphrase in `path` as the rbd CLI reads a passphrase file: its bytes without
/// one trailing newline (`--object secret,file=` keeps exact bytes, as QEMU does).
pub fn read_passfile(path: &std::path::Path) -> Result<vmcrypt_crypto::SecretBytes> {
    let mut bytes = zeroize::Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Error::io(e, format!("reading passphrase file '{}'", path.display())))?,
    );
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    ensure!(
        !bytes.is_empty(),
        Usage,
        "passphrase file '{}' is empty",
        path.display()
    );
    Ok(vmcrypt_crypto::SecretBytes::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_loses_one_newline_like_the_rbd_cli() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, b"a b\n\n").unwrap();
        assert_eq!(read_passfile(&p).unwrap().as_bytes(), b"a b\n");
        std::fs::write(&p, b"\n").unwrap();
        assert_eq!(
            read_passfile(&p).unwrap_err().kind(),
            vmcrypt_error::ErrorKind::Usage
        );
    }

    #[test]
    fn image_names_like_the_rbd_cli() {
        let s = image_spec("img", Some("/c.conf"), Some("u")).unwrap();
        assert_eq!((s.pool.as_str(), s.image.as_str()), ("rbd", "img"));
        assert_eq!(s.conf.as_deref(), Some("/c.conf"));
        let s = image_spec("p/ns/img", None, None).unwrap();
        assert_eq!(s.image_name(), "p/ns/img");
    }

    #[test]
    fn create_options_are_checked_by_name() {
        let o = crate::opts::parse_keyval("encrypt.format=luks2,encrypt.bogus=1", None).unwrap();
        let e = check_options(&o).unwrap_err();
        assert!(e.to_string().contains("encrypt.bogus"), "{e}");
        let o = crate::opts::parse_keyval("encrypt.format=luks-any,encrypt.key-secret=s", None)
            .unwrap();
        assert!(encrypt_options(&o).is_err());
    }
}
