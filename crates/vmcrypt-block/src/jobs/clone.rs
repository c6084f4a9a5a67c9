//! Clones that never share a volume key (`vmcrypt clone`).
//!
//! * **Full clone**: a copy of everything the source reads (its backing chain
//!   flattened) into a new image whose LUKS header has a fresh random volume key, in one
//!   pass through the convert pipeline (read and decrypt on one thread, encrypt and write
//!   on another). The target has the source's format unless `-O` says otherwise, and the
//!   source's cipher, mode, IV generator and hash (LUKS1 and qcow2 sources; a qcow2
//!   source's cluster size and extended L2 too) unless `-o` names them. The target's passphrase is named like qemu-img convert's:
//!   `-o encrypt.key-secret=ID` (qcow2, `encrypt.format=luks` is implied) or
//!   `-o key-secret=ID` (luks).
//! * **Linked clone** (`linked`): a qcow2 overlay whose backing file is the source (by
//!   its absolute path, with its format), encrypted with a key of its own; only what the
//!   clone writes is under the new key, the source's clusters stay under the source's.
//! * **Flatten** ([`flatten`]): a linked clone copies what it reads from its backing
//!   chain into itself, under its own key, then drops the backing file (a safe rebase
//!   onto nothing, [`super::rebase`]).
//!
//! A clone is always encrypted: a target without a key of its own is refused (that
//! would be `convert`).
use super::convert::{ConvertReport, ConvertRequest, convert_from};
use super::create::create_image;
use super::image_arg::Access;
use super::options::merge_options;
use super::rebase::{RebaseRequest, RebaseStats};
use super::{Env, Events, ImageArg};
use crate::driver::BlockDriver;
use serde_json::{Map, Value};
use std::path::Path;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// What `vmcrypt clone` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CloneRequest {
    pub source: ImageArg,
    /// The new image's filename.
    pub target: String,
    /// `-O`: the target's format (default: the source's; qcow2 for a linked clone).
    pub out_format: Option<String>,
    /// Every `-o` argument (options of the new image, its key among them).
    pub options: Vec<String>,
    /// A qcow2 overlay over the source instead of a full copy.
    pub linked: bool,
}

/// What a clone did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneReport {
    /// The new image's format.
    pub format: String,
    /// Full clones: what the copy did. `None` for a linked clone.
    pub copy: Option<ConvertReport>,
    /// Linked clones: the backing file name written into the overlay.
    pub backing: Option<String>,
}

/// Options copied from the source's LUKS header when the target does not name them.
const INHERITED: &[&str] = &[
    "cipher-alg",
    "cipher-mode",
    "ivgen-alg",
    "ivgen-hash-alg",
    "hash-alg",
];

/// Make the clone `req` asks for; progress in bytes of the source goes to `events`.
pub fn run(req: &CloneRequest, env: &Env, events: &mut dyn Events) -> Result<CloneReport> {
    run_with_options(req, merge_options(&req.options)?, env, events)
}

/// [`run`] with the `-o` arguments already merged into `opts` (`req.options` unused).
pub(crate) fn run_with_options(
    req: &CloneRequest,
    mut opts: Map<String, Value>,
    env: &Env,
    events: &mut dyn Events,
) -> Result<CloneReport> {
    let src = req.source.open(env, Access::READ, events).ctx("source")?;
    let format = target_format(req, src.as_ref())?;
    inherit_layout(src.as_ref(), &format, &mut opts);
    let luks_opts = key_options(&format, &mut opts)?;
    inherit_cipher(src.as_ref(), &format, luks_opts);
    if req.linked {
        let backing = link(req, src.as_ref(), &mut opts, env)?;
        return Ok(CloneReport {
            format,
            copy: None,
            backing: Some(backing),
        });
    }
    let convert = ConvertRequest {
        source: req.source.clone(),
        target: req.target.clone(),
        out_format: format.clone(),
        ..ConvertRequest::default()
    };
    let copy = convert_from(src.as_ref(), &convert, &opts, env, events)?;
    Ok(CloneReport {
        format,
        copy: Some(copy),
        backing: None,
    })
}

/// The target's format: `-O`, else the source's (a linked clone is always qcow2).
fn target_format(req: &CloneRequest, src: &dyn BlockDriver) -> Result<String> {
    if req.linked {
        if let Some(f) = req.out_format.as_deref().filter(|f| *f != "qcow2") {
            bail!(
                Usage,
                "a linked clone is a qcow2 overlay; -O {f} is not possible (drop -O or use a full clone)"
            );
        }
        return Ok("qcow2".into());
    }
    if let Some(f) = &req.out_format {
        return Ok(f.clone());
    }
    Ok(match src.driver_name() {
        "qcow2" | "qcow" => "qcow2".into(),
        "luks" if luks_version(src) == Some(2) => "luks2".into(),
        "luks" => "luks".into(),
        other => bail!(
            Usage,
            "the source is '{other}', not encrypted: name the clone's format with -O qcow2 or -O luks (and its key with -o)"
        ),
    })
}

fn luks_version(src: &dyn BlockDriver) -> Option<u64> {
    let fs = src.as_introspect()?.format_specific()?;
    Some(fs.get("version").and_then(Value::as_u64).unwrap_or(1))
}

/// Check that the target names a key of its own and return the map its LUKS options
/// live in (`encrypt.*` for qcow2, the top level for luks). qcow2 gets
/// `encrypt.format=luks` when it names only the key.
fn key_options<'a>(
    format: &str,
    opts: &'a mut Map<String, Value>,
) -> Result<&'a mut Map<String, Value>> {
    match format {
        "qcow2" => {
            let enc = match opts
                .entry("encrypt")
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(m) => m,
                _ => bail!(Usage, "qcow2: 'encrypt' must be given as encrypt.KEY=VALUE"),
            };
            ensure!(
                enc.contains_key("key-secret"),
                Usage,
                "a clone gets a volume key of its own: name its passphrase with -o encrypt.key-secret=ID (and --object secret,id=ID,file=PATH)"
            );
            match enc.get("format").and_then(Value::as_str) {
                None => {
                    enc.insert("format".into(), Value::String("luks".into()));
                }
                Some("luks") => {}
                Some(f) => bail!(
                    Usage,
                    "a clone is encrypted with LUKS: encrypt.format={f} is not possible"
                ),
            }
            Ok(enc)
        }
        "luks" | "luks2" => {
            ensure!(
                opts.contains_key("key-secret"),
                Usage,
                "a clone gets a volume key of its own: name its passphrase with -o key-secret=ID (and --object secret,id=ID,file=PATH)"
            );
            Ok(opts)
        }
        other => bail!(
            Usage,
            "a clone is encrypted under a new key: -O {other} cannot hold one (use qcow2, luks or luks2)"
        ),
    }
}

/// A qcow2 clone of a qcow2 image keeps its cluster size and extended L2 entries
/// unless `-o` says otherwise.
fn inherit_layout(src: &dyn BlockDriver, format: &str, opts: &mut Map<String, Value>) {
    if format != "qcow2" || src.driver_name() != "qcow2" {
        return;
    }
    let Some(i) = src.as_introspect() else { return };
    if let Some(cs) = i.cluster_size() {
        opts.entry("cluster_size").or_insert_with(|| cs.into());
    }
    let ext = i
        .format_specific()
        .and_then(|f| f.get("extended-l2").cloned());
    if let Some(Value::Bool(true)) = ext {
        opts.entry("extended_l2").or_insert(Value::Bool(true));
    }
}

/// Copy the source's cipher choices (LUKS1 or qcow2+LUKS; LUKS2 headers name a
/// cryptsetup cipher string instead and keep the defaults, only their sector size goes
/// to a LUKS2 target) into `luks` where absent.
fn inherit_cipher(src: &dyn BlockDriver, format: &str, luks: &mut Map<String, Value>) {
    let Some(fs) = src.as_introspect().and_then(|i| i.format_specific()) else {
        return;
    };
    let info = fs.get("encrypt").unwrap_or(&fs);
    if info.get("version").is_some() {
        if format == "luks2"
            && let Some(ss) = info.get("sector-size").filter(|v| v.is_u64())
        {
            luks.entry("sector-size").or_insert_with(|| ss.clone());
        }
        return;
    }
    let ivgen_given = luks.contains_key("ivgen-alg");
    for k in INHERITED {
        // An IV hash only goes with the source's IV generator.
        if *k == "ivgen-hash-alg" && ivgen_given {
            continue;
        }
        if let Some(v) = info.get(*k).and_then(Value::as_str) {
            luks.entry(*k).or_insert_with(|| Value::String(v.into()));
        }
    }
}

/// Create the linked clone: a qcow2 overlay over the source's file; returns the
/// backing name written.
fn link(
    req: &CloneRequest,
    src: &dyn BlockDriver,
    opts: &mut Map<String, Value>,
    env: &Env,
) -> Result<String> {
    for k in ["backing_file", "backing_fmt"] {
        ensure!(
            !opts.contains_key(k),
            Usage,
            "a linked clone's backing file is its source: -o {k} is not possible"
        );
    }
    let file = src
        .children()
        .into_iter()
        .find(|c| c.role == "file")
        .map(|c| c.node.filename());
    let Some(file) = file.filter(|f| Path::new(f).is_file()) else {
        bail!(
            Unsupported,
            "a linked clone needs a source stored in a file (the overlay names it as its backing file)"
        );
    };
    let backing = std::fs::canonicalize(&file)
        .map_err(|e| Error::io(e, format!("resolving the source's path '{file}'")))?
        .display()
        .to_string();
    opts.insert("backing_file".into(), Value::String(backing.clone()));
    opts.insert(
        "backing_fmt".into(),
        Value::String(src.driver_name().into()),
    );
    let path = Path::new(&req.target);
    let made = create_image(path, "qcow2", src.size(), opts, env.secrets()?).ctx("target")?;
    made.flush()?;
    Ok(backing)
}

/// Flatten the linked clone `image` (its key and its backing chain's keys in its
/// options): copy what it reads from the chain into it under its own key, then drop the
/// backing file. Refuses an image without a key of its own.
pub fn flatten(image: &ImageArg, env: &Env, events: &mut dyn Events) -> Result<RebaseStats> {
    let meta = image.open(env, Access::METADATA, events)?;
    ensure!(
        meta.driver_name() == "qcow2",
        Usage,
        "--flatten takes a qcow2 linked clone, not a '{}' image",
        meta.driver_name()
    );
    ensure!(
        meta.as_introspect().is_some_and(|i| i.is_encrypted()),
        Usage,
        "the image is not encrypted: flattening it would copy its backing data in plaintext (make an encrypted clone instead)"
    );
    drop(meta);
    let req = RebaseRequest {
        image: image.clone(),
        backing: String::new(),
        backing_format: None,
        unsafe_mode: false,
    };
    super::rebase::run(&req, env, events)
}
