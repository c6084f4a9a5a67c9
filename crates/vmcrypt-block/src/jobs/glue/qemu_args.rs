//! `vmcrypt qemu-args`: the `-object` and `-blockdev` arguments with which QEMU opens an
//! image natively. A qcow2 image is spelled out layer by layer (QEMU's -blockdev cannot
//! complete a partial `backing.` option set from the header), the deepest layer first,
//! each naming the layer below with `backing=NODE` and carrying its own key. Headers
//! are read without keys; then each encrypted layer is unlocked once with the secret
//! its arguments name, on every layout, so a wrong key is refused before QEMU sees it.
use super::print::{Syntax, qemu_node};
use super::qemu_check::{check_luks_for_qemu, checked_secrets};
use crate::driver::{BackingInfo, BlockDriver};
use crate::graph::{self, OpenContext};
use crate::spec::{BackingSpec, Deferred, ImageArg, NodeSpec, filename_options};
use serde_json::Value;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// What to print arguments for.
#[derive(Clone, Debug)]
pub struct QemuArgsRequest<'a> {
    /// The image, as the command line names it.
    pub image: ImageArg,
    /// The `--object secret,...` definitions, passed on to QEMU as they are.
    pub objects: &'a [String],
    /// node-name of the top block node (what `-device ...,drive=NAME` refers to).
    pub node_name: &'a str,
    /// How each `-blockdev` is spelled.
    pub syntax: Syntax,
    /// KDF limits for opening the image's headers.
    pub limits: KdfLimits,
}

/// The arguments, unquoted: `-object X` per secret, then `-blockdev NODE` per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuArgs {
    pub words: Vec<String>,
    /// Options dropped because QEMU has no such option (for the user's attention).
    pub warnings: Vec<String>,
}

/// Build the arguments for `r`. Every header is read without its key first (what QEMU
/// can open, which secret each layer needs), then every encrypted layer is unlocked once
/// with the secret QEMU will be given ([`verify_key`]), so a wrong or unreadable key is
/// an error now rather than a VM that does not start.
pub fn qemu_args(r: &QemuArgsRequest) -> Result<QemuArgs> {
    let (store, ids) = checked_secrets(r.objects)?;
    let mut spec = graph::resolve_probe(&r.image.to_spec()?)?;
    let ctx = |metadata_only| OpenContext {
        secrets: &store,
        read_only: true,
        metadata_only,
        limits: r.limits,
        writable_backing: false,
        force_share: r.image.force_share,
    };
    let (meta, keyed) = (ctx(true), ctx(false));
    let mut out = QemuArgs::default();
    if let NodeSpec::Qcow2(_) = spec {
        let layers = chain(spec, &meta, &ids)?;
        for layer in &layers {
            verify_key(&layer.spec, &keyed)?;
        }
        out.words = qcow2_words(r, layers)?;
        return Ok(out);
    }
    let node = graph::open(&without_keys(&spec), &meta)?;
    if let NodeSpec::Luks(l) = &mut spec {
        let info = node.as_introspect().and_then(|i| i.format_specific());
        check_luks_for_qemu(&info.unwrap_or(Value::Null), &r.image.name)?;
        let id = match (l.key_secret.take(), ids.as_slice()) {
            (Some(id), _) => id,
            // One secret and a plain filename: that secret is the key.
            (None, [only]) => only.clone(),
            (None, _) => bail!(
                Usage,
                "QEMU needs the passphrase: give --object secret,id=ID,file=PATH and key-secret=ID"
            ),
        };
        l.key_secret = Some(id);
        if l.key_slot.take().is_some() {
            out.warnings
                .push("QEMU's luks driver has no key-slot option: QEMU tries every slot".into());
        }
    }
    verify_key(&spec, &keyed)?;
    let node_opts = qemu_node(&spec, r.node_name)?;
    out.words = words(r, &[r.syntax.render(&node_opts)]);
    Ok(out)
}

/// Unlock the node `spec` describes (its backing layers not opened: each layer is
/// checked on its own) with the keys it names, as QEMU will: a wrong passphrase, a
/// secret QEMU could not read or a key slot over the KDF limits is refused here. One
/// KDF run per encrypted node, the cost QEMU pays again when it opens the image.
fn verify_key(spec: &NodeSpec, ctx: &OpenContext) -> Result<()> {
    let mut spec = spec.clone();
    take_backing(&mut spec, BackingSpec::Null);
    graph::open(&spec, ctx)
        .map(drop)
        .with_ctx(|| "checking the key QEMU will be given".to_string())
}

/// `spec` without its keys or backing nodes: what reading its headers needs.
fn without_keys(spec: &NodeSpec) -> NodeSpec {
    let mut spec = spec.clone();
    strip_keys(&mut spec);
    spec
}

fn strip_keys(spec: &mut NodeSpec) {
    match spec {
        NodeSpec::Luks(l) => {
            l.key_secret = None;
            strip_keys(&mut l.file);
            if let Some(h) = &mut l.header {
                strip_keys(h);
            }
        }
        NodeSpec::Qcow2(q) | NodeSpec::Qcow(q) => {
            q.encrypt.key_secret = None;
            q.backing = BackingSpec::Null;
            strip_keys(&mut q.file);
        }
        NodeSpec::Raw(r) => strip_keys(&mut r.file),
        NodeSpec::Rbd(r) => {
            if let Some(e) = &mut r.encrypt {
                e.key_secret = None;
            }
        }
        NodeSpec::File(_) | NodeSpec::Probe(_) => {}
    }
}

/// `-object` for every secret, then `-blockdev` for every node in order.
fn words(r: &QemuArgsRequest, nodes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for o in r.objects {
        out.push("-object".to_string());
        out.push(o.clone());
    }
    for n in nodes {
        out.push("-blockdev".to_string());
        out.push(n.clone());
    }
    out
}

/// A qcow2 image and its backing chain: one node per layer, the deepest first, each
/// naming the layer below with `backing=NODE`.
fn qcow2_words(r: &QemuArgsRequest, layers: Vec<Layer>) -> Result<Vec<String>> {
    let name = |i: usize| {
        if i == 0 {
            r.node_name.to_string()
        } else {
            format!("{}-backing{i}", r.node_name)
        }
    };
    let mut nodes = Vec::with_capacity(layers.len());
    for (i, mut layer) in layers.into_iter().enumerate().rev() {
        if r.image.force_share {
            layer.spec.disable_locking();
        }
        let mut n = qemu_node(&layer.spec, &name(i))?;
        if layer.has_backing {
            n.insert("backing".into(), Value::String(name(i + 1)));
        }
        nodes.push(r.syntax.render(&n));
    }
    Ok(words(r, &nodes))
}

/// One layer of a backing chain: its options (without `backing`) and whether the
/// next entry of the chain is its backing node.
struct Layer {
    spec: NodeSpec,
    has_backing: bool,
}

/// Longest backing chain `qemu-args` follows.
const MAX_CHAIN: usize = 64;

/// Walk the chain from `spec` down: each layer is opened (metadata only) to read its
/// header's backing file, whose options come from the layer's `backing` options.
fn chain(mut spec: NodeSpec, ctx: &OpenContext, ids: &[String]) -> Result<Vec<Layer>> {
    let mut out: Vec<Layer> = Vec::new();
    loop {
        ensure!(
            out.len() < MAX_CHAIN,
            LimitExceeded,
            "the backing chain is deeper than {MAX_CHAIN} images (a loop?)"
        );
        let prefix = "backing.".repeat(out.len());
        let given = take_backing(&mut spec, BackingSpec::Null);
        let node = graph::open(&without_keys(&spec), ctx)?;
        take_backing(&mut spec, BackingSpec::FromHeader);
        let image = node.filename();
        layer_secret(&mut spec, &*node, &image, &prefix, ids, out.is_empty())?;
        let next = backing_spec(given, &*node, &image, &prefix)?;
        out.push(Layer {
            spec,
            has_backing: next.is_some(),
        });
        match next {
            Some(n) => spec = n,
            None => return Ok(out),
        }
    }
}

/// Replace the `backing` option of a qcow/qcow2 `spec` with `with`, returning it
/// (`FromHeader` for other drivers).
fn take_backing(spec: &mut NodeSpec, with: BackingSpec) -> BackingSpec {
    match spec {
        NodeSpec::Qcow2(q) | NodeSpec::Qcow(q) => std::mem::replace(&mut q.backing, with),
        _ => BackingSpec::FromHeader,
    }
}

/// The spec of the layer below `image`: the options given under its `backing`,
/// completed by the header's backing file name and format; `None` when the image has
/// no backing file.
fn backing_spec(
    given: BackingSpec,
    node: &dyn BlockDriver,
    image: &str,
    prefix: &str,
) -> Result<Option<NodeSpec>> {
    let mut next = match given {
        BackingSpec::Null => bail!(
            Unsupported,
            "{prefix}backing=null (cutting the chain) is not supported by qemu-args"
        ),
        BackingSpec::FromHeader => Deferred::default(),
        BackingSpec::Options(d) => d,
    };
    let Some(BackingInfo {
        filename: bname,
        format: bfmt,
    }) = node.as_backing().and_then(|b| b.backing_info())
    else {
        ensure!(
            next.is_empty(),
            Usage,
            "'{image}' has no backing file, but {prefix}backing options were given"
        );
        return Ok(None);
    };
    if !next.has_file() {
        next.complete_from(filename_options(
            &graph::resolve_backing(image, &bname),
            None,
        )?);
    }
    if !next.has_driver() {
        let fmt = match bfmt {
            Some(f) => f,
            None => graph::probe_deferred(&next)?.to_string(),
        };
        next.set_driver(&fmt);
    }
    next.resolve("").map(Some)
}

/// Check one layer's encryption and set the secret QEMU needs: `encrypt.format=luks`
/// and `encrypt.key-secret` for an encrypted qcow2 layer, `key-secret` for a luks one.
/// A top layer given as a plain filename with exactly one `--object` uses that secret.
fn layer_secret(
    spec: &mut NodeSpec,
    node: &dyn BlockDriver,
    image: &str,
    prefix: &str,
    ids: &[String],
    top: bool,
) -> Result<()> {
    let introspect = node.as_introspect();
    let info = introspect.and_then(|i| i.format_specific());
    let info = info.unwrap_or(Value::Null);
    let fallback = || match ids {
        [only] if top => Some(only.clone()),
        _ => None,
    };
    match spec {
        NodeSpec::Qcow2(q) if introspect.is_some_and(|i| i.is_encrypted()) => {
            let enc = info.get("encrypt").cloned().unwrap_or(Value::Null);
            if enc.get("format").and_then(Value::as_str) != Some("luks") {
                bail!(
                    Unsupported,
                    "'{image}' uses qcow2's legacy AES encryption, which QEMU's system emulators \
                     refuse: convert it to LUKS encryption, or serve it with `vmcrypt serve`"
                );
            }
            check_luks_for_qemu(&enc, image)?;
            let id = match q.encrypt.key_secret.take() {
                Some(id) => id,
                None => fallback().ok_or_else(|| {
                    Error::usage(format!(
                        "'{image}' is encrypted: QEMU needs {prefix}encrypt.key-secret=ID \
                         (and --object secret,id=ID,file=PATH)"
                    ))
                })?,
            };
            q.encrypt.format = Some("luks".into());
            q.encrypt.key_secret = Some(id);
        }
        NodeSpec::Luks(l) if !top => {
            check_luks_for_qemu(&info, image)?;
            ensure!(
                l.key_secret.is_some(),
                Usage,
                "'{image}' is LUKS: QEMU needs {prefix}key-secret=ID"
            );
        }
        NodeSpec::Qcow2(_) | NodeSpec::Raw(_) | NodeSpec::File(_) => {}
        d if !top => bail!(
            Unsupported,
            "'{image}' is a {} image, which qemu-args does not spell out as a backing layer",
            d.driver().unwrap_or_default()
        ),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(image: ImageArg, objects: &'a [String], syntax: Syntax) -> QemuArgsRequest<'a> {
        QemuArgsRequest {
            image,
            objects,
            node_name: "disk0",
            syntax,
            limits: KdfLimits::default(),
        }
    }

    #[test]
    fn a_raw_image_is_one_blockdev() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a,b.raw");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let name = path.to_str().unwrap();
        let image = ImageArg {
            force_share: true,
            ..ImageArg::file(name, Some("raw"))
        };
        let out = qemu_args(&request(image, &[], Syntax::Keyval)).unwrap();
        let escaped = name.replace(',', ",,");
        assert_eq!(
            out.words,
            [
                "-blockdev".to_string(),
                format!(
                    "driver=raw,node-name=disk0,file.driver=file,file.filename={escaped},file.locking=off"
                )
            ]
        );
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn inline_secrets_are_refused_before_the_image_is_read() {
        let objects = ["secret,id=s0,data=pw".to_string()];
        let image = ImageArg::file("/nonexistent/image", None);
        let e = qemu_args(&request(image, &objects, Syntax::Json)).unwrap_err();
        assert!(
            e.message().contains("data= would put the passphrase"),
            "{e}"
        );
    }
}
