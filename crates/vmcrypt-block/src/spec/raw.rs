//! Options of the `raw` driver: a format node that passes its `file` child's bytes
//! through, optionally only a window of them.
use super::NodeSpec;
use super::parse::{Tuning, check_keys, required_child, write_child};
use crate::opts::opt_u64;
use serde_json::{Map, Value};
use vmcrypt_error::Result;

/// `driver=raw`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSpec {
    /// `file`: the node holding the bytes (required).
    pub file: Box<NodeSpec>,
    /// `offset`: where the window starts in `file` (default 0).
    pub offset: Option<u64>,
    /// `size`: the window's length (default: the rest of `file`).
    pub size: Option<u64>,
    /// Tuning options as given ([`super::TUNING_OPTIONS`]).
    pub tuning: Tuning,
}

impl RawSpec {
    pub(crate) fn parse(o: &Map<String, Value>) -> Result<RawSpec> {
        check_keys(o, "raw", &["file", "offset", "size"])?;
        Ok(RawSpec {
            file: required_child(o, "file", "raw")?,
            offset: opt_u64(o, "offset")?,
            size: opt_u64(o, "size")?,
            tuning: Tuning::from_options(o),
        })
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        write_child(m, "file", &self.file);
        for (k, v) in [("offset", self.offset), ("size", self.size)] {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v));
            }
        }
        self.tuning.write_options(m);
    }
}
