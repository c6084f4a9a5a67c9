//! Typed node specifications: what `--image-opts`, `json:{...}` filenames and plain
//! filenames (with `-f`) describe, parsed once into a tree like QEMU's `BlockdevOptions`.
//!
//! [`NodeSpec`] has one variant per driver and each driver's options are the typed
//! fields of its own struct, one file per driver: [`file::FileSpec`],
//! [`raw::RawSpec`], [`luks::LuksSpec`] and [`qcow2::QcowSpec`] (qcow2 and qcow v1).
//! Children (`file`, `header`) are boxed specs; a child given as a bare filename is a
//! `file` node. Unknown options are refused with their name; the tuning options QEMU
//! takes on every node ([`TUNING_OPTIONS`]: cache, aio, node-name, ...) are accepted,
//! kept as given and printed back, but do not change how vmcrypt opens a node.
//!
//! Options stay untyped ([`Deferred`]) only where the driver is not known yet when they
//! are read: a top node without a `driver` ([`NodeSpec::Probe`], probed when opened) and
//! the options under a qcow/qcow2 node's `backing` (completed from the image header
//! when opened). [`crate::graph`] turns them into typed specs as soon as it knows the
//! driver, with the same checks.
//!
//! [`ImageArg`] is the one entry point from a command line's image argument;
//! [`NodeSpec::to_options`] prints a spec back as QEMU's JSON option tree.
pub(crate) mod deferred;
pub(crate) mod file;
mod image_arg;
pub(crate) mod luks;
mod parse;
pub(crate) mod qcow2;
pub(crate) mod qcow2_runtime;
pub(crate) mod raw;
pub(crate) mod rbd;

pub use deferred::Deferred;
pub use file::{FileSpec, Locking};
pub use image_arg::{ImageArg, filename_options, spec_from_filename};
pub use luks::LuksSpec;
pub use parse::{TUNING_OPTIONS, Tuning};
pub use qcow2::{BackingSpec, EncryptSpec, QcowSpec};
pub use qcow2_runtime::CacheSpec;
pub use raw::RawSpec;
pub use rbd::{RbdEncrypt, RbdEncryptFormat, RbdSpec, rbd_filename_options};

use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail};

/// One block node: its driver and that driver's options.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeSpec {
    /// `driver=file`: a host file (the protocol node).
    File(FileSpec),
    /// `driver=rbd`: a Ceph RBD image (a protocol node), optionally with librbd's
    /// encryption.
    Rbd(RbdSpec),
    /// `driver=raw`: the bytes of its `file` child, optionally a window of them.
    Raw(RawSpec),
    /// `driver=luks` (or its alias `luks2`): LUKS1 or LUKS2 over its `file` child.
    Luks(LuksSpec),
    /// `driver=qcow2`.
    Qcow2(QcowSpec),
    /// `driver=qcow`: qcow version 1 (read only).
    Qcow(QcowSpec),
    /// A top node without a `driver`: its format is probed from its `file` child when
    /// it is opened, then its options are parsed for that driver.
    Probe(Deferred),
}

impl NodeSpec {
    /// Parse the option tree of a top node (from keyval or a `json:` filename). Without
    /// a `driver` the node is left to be probed ([`NodeSpec::Probe`]).
    pub fn from_options(options: &Map<String, Value>) -> Result<NodeSpec> {
        if !options.contains_key("driver") {
            return Ok(NodeSpec::Probe(Deferred::new(options.clone())));
        }
        parse::node(options, false, "")
    }

    /// The driver's name (`None` for a node still to be probed).
    pub fn driver(&self) -> Option<&'static str> {
        Some(match self {
            NodeSpec::File(_) => "file",
            NodeSpec::Rbd(_) => "rbd",
            NodeSpec::Raw(_) => "raw",
            NodeSpec::Luks(_) => "luks",
            NodeSpec::Qcow2(_) => "qcow2",
            NodeSpec::Qcow(_) => "qcow",
            NodeSpec::Probe(_) => return None,
        })
    }

    /// The `file` child of a format node (`None` for a `file` node or a node to probe).
    pub fn file(&self) -> Option<&NodeSpec> {
        match self {
            NodeSpec::Raw(r) => Some(&r.file),
            NodeSpec::Luks(l) => Some(&l.file),
            NodeSpec::Qcow2(q) | NodeSpec::Qcow(q) => Some(&q.file),
            NodeSpec::File(_) | NodeSpec::Rbd(_) | NodeSpec::Probe(_) => None,
        }
    }

    fn file_mut(&mut self) -> Option<&mut NodeSpec> {
        match self {
            NodeSpec::Raw(r) => Some(&mut r.file),
            NodeSpec::Luks(l) => Some(&mut l.file),
            NodeSpec::Qcow2(q) | NodeSpec::Qcow(q) => Some(&mut q.file),
            NodeSpec::File(_) | NodeSpec::Rbd(_) | NodeSpec::Probe(_) => None,
        }
    }

    /// The host filename of this node's `file` child when that child is a `file` node
    /// (for a node to probe: its `file.filename` option).
    pub fn file_name(&self) -> Result<Option<String>> {
        match (self, self.file()) {
            (NodeSpec::Probe(d), _) => d.file_name(),
            (_, Some(NodeSpec::File(f))) => Ok(Some(f.filename.clone())),
            _ => Ok(None),
        }
    }

    /// Turn off image locking for the protocol nodes (qemu-img's `-U`): this node when it
    /// is a `file` node, otherwise down its `file` children and a luks node's detached
    /// `header`. This is how `-U` is printed back (`qemu-args`); opening a graph takes
    /// `-U` from [`crate::graph::OpenContext::force_share`], which also reaches the
    /// nodes the spec does not spell out (backing files named by a header).
    pub fn disable_locking(&mut self) {
        match self {
            NodeSpec::File(f) => f.disable_locking(),
            NodeSpec::Probe(d) => d.disable_locking(),
            other => {
                if let NodeSpec::Luks(LuksSpec {
                    header: Some(h), ..
                }) = other
                {
                    h.disable_locking();
                }
                if let Some(f) = other.file_mut() {
                    f.disable_locking();
                }
            }
        }
    }

    /// The spec as QEMU's JSON option tree: `driver` first, every child an object with
    /// its own `driver`, numbers as numbers, tuning options as they were given.
    pub fn to_options(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(d) = self.driver() {
            m.insert("driver".into(), Value::String(d.into()));
        }
        match self {
            NodeSpec::File(f) => f.write_options(&mut m),
            NodeSpec::Rbd(r) => r.write_options(&mut m),
            NodeSpec::Raw(r) => r.write_options(&mut m),
            NodeSpec::Luks(l) => l.write_options(&mut m),
            NodeSpec::Qcow2(q) | NodeSpec::Qcow(q) => q.write_options(&mut m),
            NodeSpec::Probe(d) => m.extend(d.options().clone()),
        }
        m
    }

    /// The spec as a `json:{...}` filename, the way qemu-img names a node it cannot
    /// name by a plain filename.
    pub fn to_json_filename(&self) -> String {
        format!("json:{}", Value::Object(self.to_options()))
    }
}

/// The driver named by `name`, checked against the drivers vmcrypt has.
pub(crate) fn known_driver(name: &str) -> Result<&'static str> {
    Ok(match name {
        "file" => "file",
        "rbd" => "rbd",
        "raw" => "raw",
        // One driver serves both LUKS versions; "luks2" is accepted as an alias.
        "luks" | "luks2" => "luks",
        "qcow2" => "qcow2",
        "qcow" => "qcow",
        other => bail!(
            Unsupported,
            "unknown driver '{other}' (supported: file, rbd, raw, luks, qcow2, qcow)"
        ),
    })
}

#[cfg(test)]
mod tests;
