//! `vmcrypt rekey`: a new volume key for an image.
//!
//! * qcow2+LUKS: in place and crash-safe (the mechanics are in
//!   [`crate::drivers::qcow2::Qcow2Driver::rekey`]).
//! * LUKS1: a copy under the new key beside the image, renamed over it
//!   ([`super::rekey_luks`]); LUKS2 is `vmcrypt luks reencrypt`'s.
//!
//! The image is named as every command names it, its current key in its options
//! (`--image-opts driver=qcow2,file.filename=F,encrypt.key-secret=OLD`). The new LUKS
//! header is described like a new image's: `-o encrypt.key-secret=NEW` (qcow2) or
//! `-o key-secret=NEW` (luks), required, and optionally `iter-time`, `hash-alg` and the
//! cipher options; cipher, IV generator, hash and UUID default to the current header's,
//! the KDF cost to a new calibration.
use super::image_arg::Access;
use super::options::merge_options;
use super::{Env, Events, ImageArg};
use crate::drivers::luks::Luks1Volume;
use crate::drivers::qcow2::RekeyStats;
use crate::drivers::qcow2::create::LUKS_KEYS;
use crate::graph::open_qcow2_layer;
use crate::opts::opt_str;
use crate::spec::{NodeSpec, QcowSpec};
use serde_json::{Map, Value};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::Layout;

/// What `vmcrypt rekey` was asked for.
#[derive(Clone, Debug, Default)]
pub struct RekeyRequest {
    /// The image, with its current key.
    pub image: ImageArg,
    /// Every `-o` argument: the new header's options (`encrypt.key-secret=ID`, ...).
    pub options: Vec<String>,
}

/// Options of the new header that `rekey` accepts (under `encrypt.`) besides those a
/// new qcow2 image takes ([`LUKS_KEYS`]).
const MORE_HEADER_OPTIONS: &[&str] = &["key-secret", "iterations", "uuid"];

/// What a re-key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyReport {
    /// A qcow2+LUKS image, re-encrypted in place.
    InPlace(RekeyStats),
    /// A LUKS1 image, copied under the new key and renamed over the original.
    Copied { bytes: u64 },
}

/// Re-key the image `req` names; progress goes to `events` (data clusters in place,
/// bytes for a copy).
pub fn run(req: &RekeyRequest, env: &Env, events: &mut dyn Events) -> Result<RekeyReport> {
    ensure!(
        !req.image.force_share,
        Usage,
        "rekey rewrites the image: -U (force-share) is not possible"
    );
    let spec = req.image.to_spec()?;
    match &spec {
        NodeSpec::Qcow2(q) => {
            let new = new_header_options(&req.options, true)?;
            rekey_qcow2(q, &new, env, events).map(RekeyReport::InPlace)
        }
        NodeSpec::Luks(l) => {
            let new = new_header_options(&req.options, false)?;
            let bytes = super::rekey_luks::rekey_by_copy(&req.image, l, new, env, events)?;
            Ok(RekeyReport::Copied { bytes })
        }
        _ => bail!(
            Usage,
            "rekey needs the image's format and current key: --image-opts driver=qcow2,file.filename=FILE,encrypt.key-secret=ID (or driver=luks,...,key-secret=ID)"
        ),
    }
}

fn rekey_qcow2(
    q: &QcowSpec,
    new: &Map<String, Value>,
    env: &Env,
    events: &mut dyn Events,
) -> Result<RekeyStats> {
    ensure!(
        q.encrypt.key_secret.is_some(),
        Usage,
        "rekey needs the current key: encrypt.key-secret=ID in the image's options (--image-opts)"
    );
    let id = opt_str(new, "key-secret")?.expect("checked");
    let pass = env.secrets()?.get(&id)?;
    let img = open_qcow2_layer(q, &env.ctx(Access::WRITE)?).ctx("image")?;
    let Some(old) = img.luks_volume() else {
        bail!(
            Unsupported,
            "the image is not encrypted with LUKS (encrypt.format=luks): nothing to re-key"
        );
    };
    let params = new_params(old, new)?;
    img.rekey(&params, pass.as_bytes(), &mut |d, t| events.progress(d, t))
}

/// The new header's options from the `-o` arguments, checked: under `encrypt.` for a
/// qcow2 image (`qcow2`), at the top level for a LUKS image, as `create` takes them.
fn new_header_options(options: &[String], qcow2: bool) -> Result<Map<String, Value>> {
    let mut all = merge_options(options)?;
    let (enc, prefix) = if qcow2 {
        let enc = match all.remove("encrypt") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        if let Some(k) = all.keys().next() {
            bail!(
                Usage,
                "rekey takes only the new header's options (-o encrypt.key-secret=ID,...), not '{k}'"
            );
        }
        (enc, "encrypt.")
    } else {
        (all, "")
    };
    let known: Vec<&str> = MORE_HEADER_OPTIONS
        .iter()
        .chain(LUKS_KEYS)
        .copied()
        .collect();
    for k in enc.keys() {
        ensure!(
            known.contains(&k.as_str()),
            Usage,
            "invalid option '{prefix}{k}' for rekey (supported: {})",
            known.join(", ")
        );
    }
    ensure!(
        enc.contains_key("key-secret"),
        Usage,
        "name the new passphrase with -o {prefix}key-secret=ID (and --object secret,id=ID,file=PATH)"
    );
    Ok(enc)
}

/// The new header's parameters: what `new` names, the rest from the current header.
fn new_params(
    old: &Luks1Volume,
    new: &Map<String, Value>,
) -> Result<crate::drivers::luks::CreateParams> {
    let mut p = super::create::luks_params(new)?;
    let cipher_named = ["cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg"]
        .iter()
        .any(|k| new.contains_key(*k));
    if !cipher_named {
        p.spec = *old.spec();
    }
    if !new.contains_key("hash-alg") {
        p.keyslot.hash = old.hash();
    }
    if p.uuid.is_none() {
        p.uuid = Some(old.header().uuid.clone());
    }
    p.layout = Layout::Qemu;
    Ok(p)
}
