//! Open a block graph from its typed description ([`crate::spec::NodeSpec`]).
//!
//! Every node of the spec becomes a driver: `file` nodes [`FileDriver`]s, `raw`, `luks`,
//! `qcow2` and `qcow` nodes their format drivers over their children. A top node without
//! a driver is probed first (qcow magic -> qcow2/qcow, LUKS magic -> luks, otherwise
//! raw), over a file or an rbd image alike. qcow2 and qcow nodes get a `backing` node: the options under `backing` (QEMU's
//! `backing.encrypt.key-secret=ID` or a nested json object), completed by the header's
//! backing file name (relative to the image's directory) and format.
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::LuksDriver;
use crate::drivers::qcow2::{OpenOptions, Qcow2Driver, QcowDriver};
use crate::drivers::raw::RawDriver;
use crate::drivers::rbd::RbdDriver;
use crate::drivers::rbd::crypt::{ParentLayer, RbdCryptDriver};
use crate::secrets::SecretStore;
use crate::spec::{
    BackingSpec, Deferred, FileSpec, LuksSpec, NodeSpec, QcowSpec, RawSpec, RbdSpec,
    filename_options,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
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
    /// qemu-img's `-U` (QEMU's `force-share`): open every `file` node of the graph
    /// without image locking, whatever its spec says: the image's own file, a detached
    /// header, every backing layer (QEMU passes force-share down to every child). Only
    /// for read-only opens, as in QEMU.
    pub force_share: bool,
}

/// Guess the format of the file at `path`: "qcow2"/"qcow" for the qcow magic, "luks" for
/// a LUKS1 or LUKS2 header, else "raw".
pub fn probe_format(path: &Path) -> Result<&'static str> {
    // Reading 8 bytes needs no lock; the open that follows takes it.
    probe_format_of(&FileDriver::open_with(path, true, false)?)
}

/// Guess the format of the bytes `dev` serves, from its first 8 (QEMU's probe, for a
/// file or an rbd image alike).
pub fn probe_format_of(dev: &dyn BlockDriver) -> Result<&'static str> {
    let mut head = [0u8; 8];
    if dev.size() < 8 {
        return Ok("raw");
    }
    dev.read_at(&mut head, 0)?;
    Ok(match (qcow2::version_of(&head), luks1::version_of(&head)) {
        (Some(1), _) => "qcow",
        (Some(2 | 3), _) => "qcow2",
        (_, Some(1 | 2)) => "luks",
        _ => "raw",
    })
}

/// QEMU's probe of an rbd image: its first bytes (with the cephx key `key-secret` names,
/// looked up in `secrets`). With `encrypt.*` the rbd node decrypts the image itself (a
/// LUKS header there is librbd's, not a format layer): it is served raw.
fn probe_rbd(spec: &RbdSpec, secrets: Option<&SecretStore>) -> Result<&'static str> {
    if spec.encrypt.is_some() {
        return Ok("raw");
    }
    let key = match (&spec.key_secret, secrets) {
        (None, _) => None,
        (Some(id), Some(s)) => Some(s.get(id)?),
        (Some(_), None) => bail!(
            Usage,
            "rbd image {}: give its format (-f raw, -f luks, -f qcow2, or driver=...) to use \
             key-secret here",
            spec.image_name()
        ),
    };
    probe_format_of(&RbdDriver::open(spec, key.map(|k| k.as_bytes()), true)?)
        .with_ctx(|| format!("probing the format of rbd image {}", spec.image_name()))
}

/// Whether the top node of `spec` would be probed, and what it probes as.
pub fn probed_format(spec: &NodeSpec) -> Result<Option<&'static str>> {
    match spec {
        NodeSpec::Probe(d) => probe_deferred(d).map(Some),
        _ => Ok(None),
    }
}

/// What the top node of `d` probes as, from its `file` child's filename.
pub(crate) fn probe_deferred(d: &Deferred) -> Result<&'static str> {
    probe_deferred_with(d, None)
}

/// [`probe_deferred`] with the secrets an rbd child's `key-secret` may name.
fn probe_deferred_with(d: &Deferred, secrets: Option<&SecretStore>) -> Result<&'static str> {
    if let Some(rbd) = d.rbd_child()? {
        return probe_rbd(&rbd, secrets);
    }
    let path = d
        .file_name()?
        .ok_or_else(|| Error::usage("no driver and no file.filename given"))?;
    probe_format(Path::new(&path))
}

/// `spec` with its top node's driver decided: a node to probe is probed and parsed for
/// the driver found; any other spec is returned as it is.
pub fn resolve_probe(spec: &NodeSpec) -> Result<NodeSpec> {
    resolve_probe_with(spec, None)
}

fn resolve_probe_with(spec: &NodeSpec, secrets: Option<&SecretStore>) -> Result<NodeSpec> {
    match spec {
        NodeSpec::Probe(d) => {
            let mut d = d.clone();
            d.set_driver(probe_deferred_with(&d, secrets)?);
            d.resolve("")
        }
        other => Ok(other.clone()),
    }
}

/// Open the graph `spec` describes.
pub fn open(spec: &NodeSpec, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    ensure!(
        ctx.read_only || !ctx.force_share,
        Usage,
        "-U (force-share) can only be used with read-only images: writing an image \
         another process may be writing would corrupt it"
    );
    open_node(
        &resolve_probe_with(spec, Some(ctx.secrets))?,
        ctx,
        &Layer::default(),
    )
}

/// Where a node sits in a backing chain: the option prefix of its layer ("",
/// "backing.", "backing.backing.", ...), its depth and the files of the chain down to
/// and including it (to refuse a loop; empty at the top).
#[derive(Clone, Default)]
struct Layer {
    prefix: String,
    depth: usize,
    chain: Vec<PathBuf>,
}

/// Longest backing chain opened. QEMU has no fixed limit (`qemu-img` opens chains
/// hundreds deep); this one only stops a chain that does not end, such as a loop through
/// names [`BackingLoop`] cannot see (a loop of files is refused when it closes).
pub const MAX_BACKING_DEPTH: usize = 1000;

/// The files of a backing chain walked so far, to refuse a loop as soon as a file comes
/// back (`qemu-img info`'s "creates an infinite loop") instead of at the depth limit.
#[derive(Default)]
pub(crate) struct BackingLoop {
    seen: Vec<PathBuf>,
}

impl BackingLoop {
    /// Record the file at `path` (a layer of the chain of `image`); refuse it if it was
    /// already seen. Names that do not resolve to a file are not checked (their open
    /// fails on its own).
    pub(crate) fn visit(&mut self, image: &str, path: &str) -> Result<()> {
        let Ok(key) = std::fs::canonicalize(path) else {
            return Ok(());
        };
        if self.seen.contains(&key) {
            bail!(
                LimitExceeded,
                "the backing chain of '{image}' is a loop: backing file '{path}' creates an \
                 infinite loop"
            );
        }
        self.seen.push(key);
        Ok(())
    }
}

fn open_node(spec: &NodeSpec, ctx: &OpenContext, layer: &Layer) -> Result<Arc<dyn BlockDriver>> {
    match spec {
        NodeSpec::File(f) => open_file(f, ctx),
        NodeSpec::Rbd(r) => open_rbd(r, ctx),
        NodeSpec::Raw(r) => open_raw(r, ctx),
        NodeSpec::Luks(l) => open_luks(l, ctx),
        NodeSpec::Qcow2(q) => open_qcow(q, ctx, "qcow2", layer),
        NodeSpec::Qcow(q) => open_qcow(q, ctx, "qcow", layer),
        NodeSpec::Probe(_) => open(spec, ctx),
    }
}

/// Open the child `role`: children sit at the top of their own (backing) layer.
fn open_child(child: &NodeSpec, role: &str, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    match child {
        NodeSpec::File(f) if f.bare => open_file(f, ctx),
        other => {
            open_node(other, ctx, &Layer::default()).with_ctx(|| format!("opening child '{role}'"))
        }
    }
}

fn open_file(spec: &FileSpec, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    Ok(Arc::new(FileDriver::open_with(
        Path::new(&spec.filename),
        ctx.read_only,
        spec.locks() && !ctx.force_share,
    )?))
}

fn open_rbd(spec: &RbdSpec, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    if spec.encrypt.is_none() {
        return Ok(Arc::new(open_rbd_raw(spec, ctx)?));
    }
    Ok(open_rbd_encrypted(spec, ctx)?)
}

fn open_rbd_raw(spec: &RbdSpec, ctx: &OpenContext) -> Result<RbdDriver> {
    let key = spec
        .key_secret
        .as_ref()
        .map(|id| ctx.secrets.get(id))
        .transpose()?;
    RbdDriver::open(spec, key.map(|k| k.as_bytes()), ctx.read_only)
}

/// Open an rbd node with `encrypt` options as its concrete driver (for jobs that need
/// more than [`BlockDriver`], such as flatten). A clone whose spec names its parent's
/// encryption (`encrypt.parent.*`) reads what it does not hold from its parent, opened
/// read-only with the parent's key, recursively.
pub fn open_rbd_encrypted(spec: &RbdSpec, ctx: &OpenContext) -> Result<Arc<RbdCryptDriver>> {
    let Some(enc) = &spec.encrypt else {
        bail!(
            Usage,
            "rbd image {} has no encrypt options",
            spec.image_name()
        );
    };
    let raw = Arc::new(open_rbd_raw(spec, ctx)?);
    let name = spec.image_name();
    let pass = match &enc.key_secret {
        Some(id) => Some(ctx.secrets.get(id)?),
        None if ctx.metadata_only => None,
        None => bail!(
            Usage,
            "rbd image {name} is encrypted: pass its passphrase with encrypt.key-secret=ID \
             (and --object secret,id=ID,file=PATH)"
        ),
    };
    let parent = match (&enc.parent, raw.image().parent()?) {
        (Some(penc), Some(p)) => {
            let pspec = RbdSpec {
                pool: p.pool,
                image: p.image,
                snapshot: Some(p.snapshot),
                namespace: (!p.namespace.is_empty()).then_some(p.namespace),
                encrypt: Some((**penc).clone()),
                ..spec.clone()
            };
            let pctx = OpenContext {
                read_only: true,
                ..*ctx
            };
            let node: Arc<dyn BlockDriver> = open_rbd_encrypted(&pspec, &pctx)
                .with_ctx(|| format!("opening the parent of {name}"))?;
            Some(ParentLayer {
                node,
                raw_overlap: p.overlap,
            })
        }
        _ => None,
    };
    let d = RbdCryptDriver::open(
        raw,
        enc.format,
        pass.map(|p| p.as_bytes()),
        None,
        &ctx.limits,
        parent,
    )
    .with_ctx(|| format!("opening the encryption of rbd image {name}"))?;
    Ok(Arc::new(d))
}

fn open_raw(spec: &RawSpec, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    let file = open_child(&spec.file, "file", ctx)?;
    Ok(Arc::new(RawDriver::new(
        file,
        spec.offset.unwrap_or(0),
        spec.size,
    )?))
}

fn open_luks(spec: &LuksSpec, ctx: &OpenContext) -> Result<Arc<dyn BlockDriver>> {
    let file = open_child(&spec.file, "file", ctx)?;
    let header = match &spec.header {
        Some(h) => Some(open_child(h, "header", ctx)?),
        None => None,
    };
    let name = file.filename();
    let pass = match &spec.key_secret {
        Some(id) => Some(ctx.secrets.get(id)?),
        None if ctx.metadata_only => None,
        None => bail!(
            Usage,
            "'{name}' is encrypted: the luks driver needs 'key-secret' (--object secret,id=ID,file=PATH and key-secret=ID)"
        ),
    };
    let d = LuksDriver::open(
        file,
        header,
        pass.map(|p| p.as_bytes()),
        spec.key_slot,
        &ctx.limits,
    )
    .with_ctx(|| format!("opening LUKS image '{name}'"))?;
    Ok(Arc::new(d))
}

fn open_qcow(
    spec: &QcowSpec,
    ctx: &OpenContext,
    driver: &str,
    layer: &Layer,
) -> Result<Arc<dyn BlockDriver>> {
    let file = open_child(&spec.file, "file", ctx)?;
    let name = file.filename();
    let pass = qcow_key(spec, ctx)?;
    let opts = qcow_options(spec, ctx, pass);
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

/// The passphrase named by a qcow/qcow2 node's `encrypt.key-secret`.
fn qcow_key<'a>(spec: &QcowSpec, ctx: &OpenContext<'a>) -> Result<Option<&'a [u8]>> {
    let pass = spec
        .encrypt
        .key_secret
        .as_ref()
        .map(|id| ctx.secrets.get(id))
        .transpose()?;
    Ok(pass.map(|p| p.as_bytes()))
}

fn qcow_options<'a>(
    spec: &'a QcowSpec,
    ctx: &OpenContext,
    passphrase: Option<&'a [u8]>,
) -> OpenOptions<'a> {
    OpenOptions {
        passphrase,
        encrypt_format: spec.encrypt.format.as_deref(),
        limits: ctx.limits,
        writable: !ctx.read_only,
        cache: Some(&spec.cache),
    }
}

/// Open the qcow2 image `spec` names by itself (its file and its own key, no backing
/// node) as the driver, for jobs that rewrite the image as a whole (re-keying).
pub(crate) fn open_qcow2_layer(spec: &QcowSpec, ctx: &OpenContext) -> Result<Qcow2Driver> {
    let file = open_child(&spec.file, "file", ctx)?;
    let pass = qcow_key(spec, ctx)?;
    Qcow2Driver::open(file, &qcow_options(spec, ctx, pass))
}

/// Open the backing node of the image `image`: the options under `backing` (an object,
/// a filename, or null for none), completed by the header's backing file name and
/// format. Without options, metadata-only opens skip the backing file.
fn open_backing(
    spec: &QcowSpec,
    ctx: &OpenContext,
    layer: &Layer,
    image: &str,
    header_name: Option<&str>,
    header_format: Option<&str>,
) -> Result<Option<Arc<dyn BlockDriver>>> {
    let mut bspec = match &spec.backing {
        BackingSpec::Null => return Ok(None),
        BackingSpec::FromHeader if ctx.metadata_only || header_name.is_none() => return Ok(None),
        BackingSpec::FromHeader => Deferred::default(),
        BackingSpec::Options(d) => d.clone(),
    };
    let mut format = None;
    if !bspec.has_file() {
        let Some(hn) = header_name else {
            bail!(
                Usage,
                "'{image}' has no backing file, but {}backing options were given",
                layer.prefix
            );
        };
        format = header_format;
        bspec.complete_from(filename_options(&resolve_backing(image, hn), None)?);
    }
    if !bspec.has_driver() {
        let fmt = match format {
            Some(f) => f,
            None => {
                let path = bspec.file_name()?.ok_or_else(|| {
                    Error::usage(format!("{}backing needs a driver", layer.prefix))
                })?;
                probe_format(Path::new(&path))?
            }
        };
        bspec.set_driver(fmt);
    }
    let mut seen = BackingLoop {
        seen: layer.chain.clone(),
    };
    if layer.depth == 0 {
        seen.visit(image, image)?;
    }
    if let Some(path) = bspec.file_name()? {
        seen.visit(image, &path)?;
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
        chain: seen.seen,
    };
    let bctx = OpenContext {
        secrets: ctx.secrets,
        read_only: ctx.read_only || !ctx.writable_backing,
        metadata_only: ctx.metadata_only,
        limits: ctx.limits,
        writable_backing: ctx.writable_backing,
        force_share: ctx.force_share,
    };
    bspec
        .resolve(&child.prefix)
        .and_then(|b| open_node(&b, &bctx, &child))
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
