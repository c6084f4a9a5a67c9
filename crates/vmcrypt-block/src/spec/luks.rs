//! Options of the `luks` driver (alias `luks2`): LUKS1 or LUKS2, decrypted on read and
//! encrypted on write, with an optional detached header.
use super::NodeSpec;
use super::parse::{Tuning, check_keys, child, required_child, write_child};
use crate::opts::{opt_str, opt_u64};
use serde_json::{Map, Value};
use vmcrypt_error::Result;

/// `driver=luks`.
#[derive(Clone, Debug, PartialEq)]
pub struct LuksSpec {
    /// `file`: the node holding the payload (and the header unless `header` is given).
    pub file: Box<NodeSpec>,
    /// `header`: a detached header's node.
    pub header: Option<Box<NodeSpec>>,
    /// `key-secret`: id of the `--object secret` holding the passphrase (required
    /// unless the image is opened for its metadata only).
    pub key_secret: Option<String>,
    /// `key-slot`: try only this key slot (vmcrypt extension; QEMU tries every slot).
    pub key_slot: Option<u32>,
    /// Tuning options as given ([`super::TUNING_OPTIONS`]).
    pub tuning: Tuning,
}

impl LuksSpec {
    pub(crate) fn parse(o: &Map<String, Value>) -> Result<LuksSpec> {
        check_keys(o, "luks", &["file", "header", "key-secret", "key-slot"])?;
        let file = required_child(o, "file", "luks")?;
        let header = child(o, "header")?;
        let key_slot = opt_u64(o, "key-slot")?.map(|s| s as u32);
        Ok(LuksSpec {
            file,
            header,
            key_secret: opt_str(o, "key-secret")?,
            key_slot,
            tuning: Tuning::from_options(o),
        })
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        write_child(m, "file", &self.file);
        if let Some(h) = &self.header {
            write_child(m, "header", h);
        }
        if let Some(id) = &self.key_secret {
            m.insert("key-secret".into(), Value::String(id.clone()));
        }
        if let Some(s) = self.key_slot {
            m.insert("key-slot".into(), Value::from(s));
        }
        self.tuning.write_options(m);
    }
}
