//! Build a block graph from a QEMU-style description.
//!
//! Input is a JSON tree as produced by [`crate::opts`] from `--image-opts` keyval strings
//! or `json:{...}` filenames, or synthesised from a plain filename plus `-f FMT`. Every
//! node names its `driver`; children are nested objects (or plain filename strings).
//! A top-level node without a driver is probed (qcow magic -> qcow2/qcow, LUKS magic ->
//! luks, otherwise raw). qcow2 and qcow nodes get a `backing` node: the options under
//! `backing` (QEMU's `backing.encrypt.key-secret=ID` or a nested json object), completed
//! by the header's backing file name (relative to the image's directory) and format.
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::LuksDriver;
use crate::drivers::qcow2::{OpenOptions, Qcow2Driver, QcowDriver};
use crate::drivers::raw::RawDriver;
use crate::opts::{opt_str, opt_u64, parse_json_filename};
use crate::secrets::SecretStore;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Error, Result, ResultExt, bail};
use vmcrypt_format::{luks1, qcow2};

/// How a graph is opened.
pub struct OpenContext<'a> {
    pub secrets: &'a SecretStore,
    pub read_only: bool,
    /// Open encrypted nodes without their key (metadata only), as `qemu-img info` does.
    pub metadata_only: bool,
    pub limits: KdfLimits,
    /// Open backing files read-write too (only `commit` needs it; QEMU also opens
    /// backing files read-only, so a read-only base on disk works).
    pub writable_backing: bool,
}

/// Options of the `file` driver that are accepted and ignored (they tune QEMU's I/O).
const FILE_IGNORED: &[&str] = &[
    "aio",
    "aio-max-batch",
    "cache",
    "discard",
    "detect-zeroes",
    "node-name",
    "auto-read-only",
    "read-only",
    "force-share",
    "drop-cache",
    "x-check-cache-dropped",
];

/// Describe `filename` opened with format `format` (probed when `None`). A
/// `json:{...}` filename is parsed as such.
pub fn spec_from_filename(filename: &str, format: Option<&str>) -> Result<Map<String, Value>> {
    if let Some(json) = filename.strip_prefix("json:") {
        let mut m = parse_json_filename(json)?;
        if let Some(f) = format {
            match opt_str(&m, "driver")? {
                Some(d) if d != f => bail!(
                    Usage,
                    "format '{f}' given with -f conflicts with driver '{d}' in the json: filename"
                ),
                _ => {
                    m.insert("driver".into(), Value::String(f.into()));
                }
            }
        }
        return Ok(m);
    }
    let mut m = Map::new();
    if let Some(f) = format {
        m.insert("driver".into(), Value::String(f.into()));
    }
    let mut file = Map::new();
    file.insert("driver".into(), Value::String("file".into()));
    file.insert("filename".into(), Value::String(filename.into()));
    m.insert("file".into(), Value::Object(file));
    Ok(m)
}

/// Guess the format of the file at `path`: "qcow2"/"qcow" for the qcow magic, "luks" for
/// a LUKS1 or LUKS2 header, else "raw".
pub fn probe_format(path: &Path) -> Result<&'static str> {
    // Reading 8 bytes needs no lock; the open that follows takes it.
    let f = FileDriver::open_with(path, true, false)?;
    let mut head = [0u8; 8];
    if f.size() < 8 {
        return Ok("raw");
    }
    f.read_at(&mut head, 0)?;
    Ok(match (qcow2::version_of(&head), luks1::version_of(&head)) {
        (Some(1), _) => "qcow",
        (Some(2 | 3), _) => "qcow2",
        (_, Some(1 | 2)) => "luks",
        _ => "raw",
    })
}

/// Whether the top node of `spec` would be probed, and what it probes as.
pub fn probed_format(spec: &Map<String, Value>) -> Result<Option<&'static str>> {
    if spec.contains_key("driver") {
        return Ok(None);
    }
    let path = child_filename(spec, "file")?
        .ok_or_else(|| Error::usage("no driver and no file.filename given"))?;
    probe_format(Path::new(&path)).map(Some)
}

fn child_filename(spec: &Map<String, Value>, role: &str) -> Result<Option<String>> {
    match spec.get(role) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(m)) => opt_str(m, "filename"),
        _ => Ok(None),
    }
}

/// Turn off image locking for the protocol node of `spec` (qemu-img's `-U`): the
/// `file` child's `locking=off`, or the node itself when it is a `file` node.
pub fn disable_locking(spec: &mut Map<String, Value>) {
    if spec.get("driver").and_then(Value::as_str) == Some("file") {
        spec.insert("locking".into(), Value::String("off".into()));
        return;
    }
    match spec.get_mut("file") {
        Some(Value::Object(f)) => disable_locking(f),
        Some(Value::String(name)) => {
            let name = name.clone();
            let mut f = Map::new();
            f.insert("driver".into(), Value::String("file".into()));
            f.insert("filename".into(), Value::String(name));
            f.insert("locking".into(), Value::String("off".into()));
            spec.insert("file".into(), Value::Object(f));
        }
        _ => {}
    }
}

/// Open the graph `spec` describes.
pub fn open(spec: &Map<String, Value>, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    let mut spec = spec.clone();
    if let Some(fmt) = probed_format(&spec)? {
        spec.insert("driver".into(), Value::String(fmt.into()));
    }
    open_node(&spec, ctx, false)
}

fn open_node(
    spec: &Map<String, Value>,
    ctx: &OpenContext,
    protocol: bool,
) -> Result<Arc<dyn BlockDriver>> {
    open_node_in(spec, ctx, protocol, &Layer::default())
}

/// Where a node sits in a backing chain: the option prefix of its layer ("",
/// "backing.", "backing.backing.", ...) and its depth.
#[derive(Clone, Default)]
struct Layer {
    prefix: String,
    depth: usize,
}

/// Longest backing chain opened.
pub const MAX_BACKING_DEPTH: usize = 16;

fn open_node_in(
    spec: &Map<String, Value>,
    ctx: &OpenContext,
    protocol: bool,
    layer: &Layer,
) -> Result<Arc<dyn BlockDriver>> {
    let driver = match opt_str(spec, "driver")? {
        Some(d) => d,
        None if protocol => "file".to_string(),
        None => bail!(Usage, "a node is missing its 'driver' option"),
    };
    match driver.as_str() {
        "file" => open_file(spec, ctx),
        "raw" => open_raw(spec, ctx),
        // One driver serves both LUKS versions; "luks2" is accepted as an alias.
        "luks" | "luks2" => open_luks(spec, ctx),
        "qcow2" | "qcow" => open_qcow(spec, ctx, &driver, layer),
        other => bail!(
            Unsupported,
            "unknown driver '{other}' (supported: file, raw, luks, qcow2, qcow)"
        ),
    }
}

fn check_keys(spec: &Map<String, Value>, driver: &str, allowed: &[&str]) -> Result<()> {
    for k in spec.keys() {
        if k != "driver" && !allowed.contains(&k.as_str()) && !FILE_IGNORED.contains(&k.as_str()) {
            bail!(
                Usage,
                "block driver '{driver}' does not support the option '{k}'"
            );
        }
    }
    Ok(())
}

fn child(
    spec: &Map<String, Value>,
    role: &str,
    ctx: &OpenContext,
) -> Result<Option<Arc<dyn BlockDriver>>> {
    match spec.get(role) {
        None => Ok(None),
        Some(Value::String(name)) => Ok(Some(Arc::new(FileDriver::open(
            Path::new(name),
            ctx.read_only,
        )?))),
        Some(Value::Object(m)) => open_node(m, ctx, true)
            .map(Some)
            .with_ctx(|| format!("opening child '{role}'")),
        Some(_) => bail!(Usage, "child '{role}' must be an object or a filename"),
    }
}

fn required_child(
    spec: &Map<String, Value>,
    role: &str,
    driver: &str,
    ctx: &OpenContext,
) -> Result<Arc<dyn BlockDriver>> {
    child(spec, role, ctx)?.ok_or_else(|| {
        Error::usage(format!(
            "driver '{driver}' needs a '{role}' child (e.g. {role}.filename=PATH)"
        ))
    })
}

fn open_file(spec: &Map<String, Value>, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    check_keys(spec, "file", &["filename", "locking"])?;
    let name = opt_str(spec, "filename")?
        .ok_or_else(|| Error::usage("driver 'file' needs the option 'filename'"))?;
    let locking = match opt_str(spec, "locking")?.as_deref() {
        None | Some("auto" | "on") => true,
        Some("off") => false,
        Some(other) => bail!(Usage, "locking must be on, off or auto, not '{other}'"),
    };
    Ok(Arc::new(FileDriver::open_with(
        Path::new(&name),
        ctx.read_only,
        locking,
    )?))
}

fn open_raw(spec: &Map<String, Value>, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    check_keys(spec, "raw", &["file", "offset", "size"])?;
    let file = required_child(spec, "file", "raw", ctx)?;
    let offset = opt_u64(spec, "offset")?.unwrap_or(0);
    Ok(Arc::new(RawDriver::new(
        file,
        offset,
        opt_u64(spec, "size")?,
    )?))
}

fn open_luks(spec: &Map<String, Value>, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    check_keys(spec, "luks", &["file", "header", "key-secret", "key-slot"])?;
    let file = required_child(spec, "file", "luks", ctx)?;
    let header = child(spec, "header", ctx)?;
    let slot = opt_u64(spec, "key-slot")?.map(|s| s as u32);
    let name = file.filename();
    let pass = match opt_str(spec, "key-secret")? {
        Some(id) => Some(ctx.secrets.get(&id)?),
        None if ctx.metadata_only => None,
        None => bail!(
            Usage,
            "'{name}' is encrypted: the luks driver needs 'key-secret' (--object secret,id=ID,file=PATH and key-secret=ID)"
        ),
    };
    let d = LuksDriver::open(file, header, pass.map(|p| p.as_bytes()), slot, &ctx.limits)
        .with_ctx(|| format!("opening LUKS image '{name}'"))?;
    Ok(Arc::new(d))
}

/// `encrypt.key-secret` and `encrypt.format` of a qcow/qcow2 node.
fn encrypt_opts(
    spec: &Map<String, Value>,
    layer: &Layer,
) -> Result<(Option<String>, Option<String>)> {
    match spec.get("encrypt") {
        None => Ok((None, None)),
        Some(Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| *k != "key-secret" && *k != "format") {
                bail!(
                    Usage,
                    "qcow2 does not support the option '{}encrypt.{k}' (supported: encrypt.key-secret, encrypt.format)",
                    layer.prefix
                );
            }
            Ok((opt_str(m, "key-secret")?, opt_str(m, "format")?))
        }
        Some(_) => bail!(
            Usage,
            "option '{}encrypt' must be an object (encrypt.key-secret=ID)",
            layer.prefix
        ),
    }
}

fn open_qcow(
    spec: &Map<String, Value>,
    ctx: &OpenContext,
    driver: &str,
    layer: &Layer,
) -> Result<Arc<dyn BlockDriver>> {
    check_keys(spec, driver, &["file", "backing", "encrypt", "data-file"])?;
    if spec.contains_key("data-file") {
        bail!(
            Unsupported,
            "{driver}: the 'data-file' option is not supported yet"
        );
    }
    let (secret, format) = encrypt_opts(spec, layer)?;
    let file = required_child(spec, "file", driver, ctx)?;
    let name = file.filename();
    let pass = secret.map(|id| ctx.secrets.get(&id)).transpose()?;
    let opts = OpenOptions {
        passphrase: pass.map(|p| p.as_bytes()),
        encrypt_format: format.as_deref(),
        limits: ctx.limits,
        writable: !ctx.read_only,
    };
    let missing_key = || {
        Error::usage(format!(
            "'{name}' is encrypted: pass its passphrase with {}encrypt.key-secret=ID \
             (and --object secret,id=ID,file=PATH)",
            layer.prefix
        ))
    };
    if driver == "qcow" {
        let mut d = QcowDriver::open(file, &opts)?;
        if d.needs_key() && !ctx.metadata_only {
            return Err(missing_key());
        }
        let b = open_backing(spec, ctx, layer, &name, d.backing_file(), None)?;
        d.set_backing(b);
        return Ok(Arc::new(d));
    }
    let mut d = Qcow2Driver::open(file, &opts)?;
    if d.needs_key() && !ctx.metadata_only {
        return Err(missing_key());
    }
    let b = open_backing(
        spec,
        ctx,
        layer,
        &name,
        d.backing_file(),
        d.backing_format(),
    )?;
    d.set_backing(b);
    Ok(Arc::new(d))
}

/// Open the backing node of the image `image`: the options under `backing` (an object,
/// a filename, or null for none), completed by the header's backing file name and
/// format. Without options, metadata-only opens skip the backing file.
fn open_backing(
    spec: &Map<String, Value>,
    ctx: &OpenContext,
    layer: &Layer,
    image: &str,
    header_name: Option<&str>,
    header_format: Option<&str>,
) -> Result<Option<Arc<dyn BlockDriver>>> {
    let given = spec.get("backing");
    let mut bspec = match given {
        Some(Value::Null) => return Ok(None),
        None if ctx.metadata_only || header_name.is_none() => return Ok(None),
        None => Map::new(),
        Some(Value::String(f)) => spec_from_filename(f, None)?,
        Some(Value::Object(m)) => m.clone(),
        Some(_) => bail!(
            Usage,
            "option '{}backing' must be an object, a filename or null",
            layer.prefix
        ),
    };
    let mut format = None;
    if !bspec.contains_key("file") {
        let Some(hn) = header_name else {
            bail!(
                Usage,
                "'{image}' has no backing file, but {}backing options were given",
                layer.prefix
            );
        };
        format = header_format;
        let from_header = spec_from_filename(&resolve_backing(image, hn), None)?;
        for (k, v) in from_header {
            bspec.entry(k).or_insert(v);
        }
    }
    if !bspec.contains_key("driver") {
        let fmt = match format {
            Some(f) => f,
            None => {
                let path = child_filename(&bspec, "file")?.ok_or_else(|| {
                    Error::usage(format!("{}backing needs a driver", layer.prefix))
                })?;
                probe_format(Path::new(&path))?
            }
        };
        bspec.insert("driver".into(), Value::String(fmt.into()));
    }
    if layer.depth + 1 > MAX_BACKING_DEPTH {
        bail!(
            LimitExceeded,
            "the backing chain of '{image}' is deeper than {MAX_BACKING_DEPTH} images (a loop?)"
        );
    }
    let child = Layer {
        prefix: format!("{}backing.", layer.prefix),
        depth: layer.depth + 1,
    };
    let bctx = OpenContext {
        secrets: ctx.secrets,
        read_only: ctx.read_only || !ctx.writable_backing,
        metadata_only: ctx.metadata_only,
        limits: ctx.limits,
        writable_backing: ctx.writable_backing,
    };
    open_node_in(&bspec, &bctx, false, &child)
        .with_ctx(|| format!("opening the backing file of '{image}'"))
        .map(Some)
}

/// A backing file name from a header: `json:` and absolute names as they are, others
/// relative to the directory of `image`.
pub fn resolve_backing(image: &str, name: &str) -> String {
    if name.starts_with("json:") || Path::new(name).is_absolute() {
        return name.to_string();
    }
    match Path::new(image).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name).to_string_lossy().into_owned(),
        _ => name.to_string(),
    }
}
