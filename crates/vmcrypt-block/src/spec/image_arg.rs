//! The one way a command line's image argument becomes a [`NodeSpec`]: a filename, a
//! `json:{...}` filename, or `--image-opts` keyval options, with `-f` and `-U`.
use super::NodeSpec;
use crate::opts::{opt_str, parse_json_filename, parse_keyval};
use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail};

/// An image as a command line names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageArg {
    /// The argument: a filename, `json:{...}`, or keyval options with `image_opts`.
    pub name: String,
    /// `-f FMT`: the top node's driver (probed when `None`).
    pub format: Option<String>,
    /// `--image-opts`: `name` is `driver=...,file.filename=...` keyval options.
    pub image_opts: bool,
    /// `-U`: open the protocol node without image locking.
    pub force_share: bool,
}

impl ImageArg {
    /// A plain filename (or `json:` filename) with an optional format.
    pub fn file(name: &str, format: Option<&str>) -> ImageArg {
        ImageArg {
            name: name.into(),
            format: format.map(Into::into),
            ..ImageArg::default()
        }
    }

    /// The node spec the argument describes.
    pub fn to_spec(&self) -> Result<NodeSpec> {
        let mut spec = if self.image_opts {
            if self.format.is_some() {
                bail!(Usage, "--image-opts and -f are mutually exclusive");
            }
            NodeSpec::from_options(&parse_keyval(&self.name, None)?)?
        } else {
            spec_from_filename(&self.name, self.format.as_deref())?
        };
        if self.force_share {
            spec.disable_locking();
        }
        Ok(spec)
    }
}

/// Describe `filename` opened with format `format` (probed when `None`). A
/// `json:{...}` filename is parsed as such.
pub fn spec_from_filename(filename: &str, format: Option<&str>) -> Result<NodeSpec> {
    NodeSpec::from_options(&filename_options(filename, format)?)
}

/// The option tree of `filename` with format `format`: a `json:{...}` filename's
/// options (its driver checked against `format`), or
/// `{"driver": FORMAT, "file": {"driver": "file", "filename": NAME}}`.
pub fn filename_options(filename: &str, format: Option<&str>) -> Result<Map<String, Value>> {
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
    if filename.starts_with("rbd:") {
        return rbd_options(filename, format);
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

/// An `rbd:` pseudo-filename: with `-f rbd` the rbd node itself (a protocol node
/// serving the image's bytes); with another `-f FORMAT` that format over it; without
/// `-f` a node to probe over it (QEMU's probe of the image's first bytes, see
/// [`crate::graph::probe_format_of`]).
fn rbd_options(filename: &str, format: Option<&str>) -> Result<Map<String, Value>> {
    let node = super::rbd_filename_options(filename)?;
    if format == Some("rbd") {
        return Ok(node);
    }
    let mut m = Map::new();
    if let Some(f) = format {
        m.insert("driver".into(), Value::String(f.into()));
    }
    m.insert("file".into(), Value::Object(node));
    Ok(m)
}
