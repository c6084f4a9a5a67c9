//! The checks every node's options go through: the driver's name, unknown option names
//! (refused with their name), children (`file`, `header`: an object or a bare
//! filename), and the tuning options accepted on every node.
use super::{FileSpec, LuksSpec, NodeSpec, QcowSpec, RawSpec, RbdSpec, known_driver};
use crate::opts::opt_str;
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, ResultExt, bail};

/// Options QEMU takes on every node that tune its own I/O; vmcrypt accepts them on every
/// node, keeps them and prints them back, and otherwise ignores them.
pub const TUNING_OPTIONS: &[&str] = &[
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

/// The [`TUNING_OPTIONS`] a node was given, with their values as given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuning(pub Map<String, Value>);

impl Tuning {
    /// The tuning options among `o`.
    pub(crate) fn from_options(o: &Map<String, Value>) -> Tuning {
        Tuning(
            o.iter()
                .filter(|(k, _)| TUNING_OPTIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        m.extend(self.0.clone());
    }
}

/// Parse a node whose driver is given (or, for a `protocol` child, defaults to `file`).
/// `prefix` is the option prefix of its backing-chain layer, for error messages.
pub(crate) fn node(o: &Map<String, Value>, protocol: bool, prefix: &str) -> Result<NodeSpec> {
    let driver = match opt_str(o, "driver")? {
        Some(d) => d,
        None if protocol => "file".to_string(),
        None => bail!(Usage, "a node is missing its 'driver' option"),
    };
    Ok(match known_driver(&driver)? {
        "file" => NodeSpec::File(FileSpec::parse(o)?),
        "rbd" => NodeSpec::Rbd(RbdSpec::parse(o)?),
        "raw" => NodeSpec::Raw(RawSpec::parse(o)?),
        "luks" => NodeSpec::Luks(LuksSpec::parse(o)?),
        "qcow2" => NodeSpec::Qcow2(QcowSpec::parse(o, "qcow2", prefix)?),
        _ => NodeSpec::Qcow(QcowSpec::parse(o, "qcow", prefix)?),
    })
}

/// Refuse any option of `o` that `driver` does not take.
pub(crate) fn check_keys(o: &Map<String, Value>, driver: &str, allowed: &[&str]) -> Result<()> {
    for k in o.keys() {
        if k != "driver" && !allowed.contains(&k.as_str()) && !TUNING_OPTIONS.contains(&k.as_str())
        {
            bail!(
                Usage,
                "block driver '{driver}' does not support the option '{k}'"
            );
        }
    }
    Ok(())
}

/// The child `role` of `o`, if given: a nested node (driver `file` unless it names
/// another) or a bare filename.
pub(crate) fn child(o: &Map<String, Value>, role: &str) -> Result<Option<Box<NodeSpec>>> {
    match o.get(role) {
        None => Ok(None),
        Some(Value::String(name)) if name.starts_with("rbd:") => {
            let m = super::rbd_filename_options(name)?;
            Ok(Some(Box::new(NodeSpec::Rbd(RbdSpec::parse(&m)?))))
        }
        Some(Value::String(name)) => Ok(Some(Box::new(NodeSpec::File(FileSpec::bare(name))))),
        Some(Value::Object(m)) => node(m, true, "")
            .map(|n| Some(Box::new(n)))
            .with_ctx(|| format!("opening child '{role}'")),
        Some(_) => bail!(Usage, "child '{role}' must be an object or a filename"),
    }
}

/// The child `role` of `o`, which `driver` cannot do without.
pub(crate) fn required_child(
    o: &Map<String, Value>,
    role: &str,
    driver: &str,
) -> Result<Box<NodeSpec>> {
    child(o, role)?.ok_or_else(|| {
        Error::usage(format!(
            "driver '{driver}' needs a '{role}' child (e.g. {role}.filename=PATH)"
        ))
    })
}

/// Write a child back as a nested object.
pub(crate) fn write_child(m: &mut Map<String, Value>, role: &str, child: &NodeSpec) {
    m.insert(role.into(), Value::Object(child.to_options()));
}
