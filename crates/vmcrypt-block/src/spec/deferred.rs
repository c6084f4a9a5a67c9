//! Options kept untyped until their driver is known: a top node to be probed, and the
//! options given for a backing node (completed from the image header when opened).
use super::{NodeSpec, parse};
use crate::opts::opt_str;
use serde_json::{Map, Value};
use vmcrypt_error::Result;

/// An option tree whose driver is not known yet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deferred(Map<String, Value>);

impl Deferred {
    pub(crate) fn new(options: Map<String, Value>) -> Deferred {
        Deferred(options)
    }

    /// The options as given.
    pub fn options(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Whether no option is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `driver` option, if given.
    pub fn driver(&self) -> Result<Option<String>> {
        opt_str(&self.0, "driver")
    }

    /// Whether a `driver` is given.
    pub fn has_driver(&self) -> bool {
        self.0.contains_key("driver")
    }

    /// Whether a `file` child is given.
    pub fn has_file(&self) -> bool {
        self.0.contains_key("file")
    }

    /// The `file` child's filename: a bare filename or its `filename` option.
    pub fn file_name(&self) -> Result<Option<String>> {
        match self.0.get("file") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(m)) => opt_str(m, "filename"),
            _ => Ok(None),
        }
    }

    /// The `file` child when it is an rbd node (`driver=rbd` or an `rbd:` filename).
    pub(crate) fn rbd_child(&self) -> Result<Option<super::RbdSpec>> {
        match self.0.get("file") {
            Some(Value::String(s)) if s.starts_with("rbd:") => {
                super::RbdSpec::parse(&super::rbd_filename_options(s)?).map(Some)
            }
            Some(Value::Object(m)) if opt_str(m, "driver")?.as_deref() == Some("rbd") => {
                super::RbdSpec::parse(m).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Add the options of `defaults` that are not given.
    pub(crate) fn complete_from(&mut self, defaults: Map<String, Value>) {
        for (k, v) in defaults {
            self.0.entry(k).or_insert(v);
        }
    }

    /// Name the driver.
    pub(crate) fn set_driver(&mut self, driver: &str) {
        self.0.insert("driver".into(), Value::String(driver.into()));
    }

    /// The typed spec, now that the driver is set; `prefix` is the option prefix of the
    /// node's backing-chain layer, for error messages.
    pub(crate) fn resolve(&self, prefix: &str) -> Result<NodeSpec> {
        parse::node(&self.0, false, prefix)
    }

    /// `-U` for a node still to be probed: its `file` child's `locking=off`.
    pub(crate) fn disable_locking(&mut self) {
        disable_locking_in(&mut self.0, false);
    }
}

/// `locking=off` on the first `file` node down the `file` children of `spec`; a
/// `protocol` child without a driver is a `file` node.
fn disable_locking_in(spec: &mut Map<String, Value>, protocol: bool) {
    let driver = spec.get("driver");
    if driver.and_then(Value::as_str) == Some("file") || (protocol && driver.is_none()) {
        spec.insert("locking".into(), Value::String("off".into()));
        return;
    }
    match spec.get_mut("file") {
        Some(Value::Object(f)) => disable_locking_in(f, true),
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
