//! Options of the `qcow2` and `qcow` (version 1) drivers: the image's `file`, its
//! encryption key and format, and what to open as its backing file.
use super::parse::{Tuning, check_keys, required_child, write_child};
use super::qcow2_runtime::{CACHE_OPTIONS, CacheSpec, WRITE_PATH_OPTIONS};
use super::{Deferred, NodeSpec, filename_options};
use crate::opts::opt_str;
use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail};

/// `driver=qcow2` or `driver=qcow`.
#[derive(Clone, Debug, PartialEq)]
pub struct QcowSpec {
    /// `file`: the node holding the image (required).
    pub file: Box<NodeSpec>,
    /// `backing`: the backing node, when the header names one.
    pub backing: BackingSpec,
    /// `encrypt.*`: the key of an encrypted image.
    pub encrypt: EncryptSpec,
    /// qcow2's cache and write-path options (empty for qcow v1).
    pub cache: CacheSpec,
    /// Tuning options as given ([`super::TUNING_OPTIONS`]).
    pub tuning: Tuning,
}

/// The `backing` option of a qcow/qcow2 node.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BackingSpec {
    /// Not given: the backing file the header names (if any), with the header's format
    /// (probed when the header names none). Skipped when only metadata is read.
    #[default]
    FromHeader,
    /// `backing=null` (JSON): no backing node, even if the header names one.
    Null,
    /// Options for the backing node (an object, or a filename given as a string):
    /// completed by the header's backing file name when they name no `file`, and by
    /// its format (or a probe) when they name no `driver`. Parsed when opened, once
    /// the driver is known.
    Options(Deferred),
}

/// The `encrypt` options of a qcow/qcow2 node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncryptSpec {
    /// `encrypt.key-secret`: id of the `--object secret` holding the passphrase.
    pub key_secret: Option<String>,
    /// `encrypt.format`: `aes` or `luks`, checked against the header when opened.
    pub format: Option<String>,
}

impl QcowSpec {
    /// Parse the options of a `driver` (qcow2 or qcow) node in the backing-chain layer
    /// whose options start with `prefix` ("", "backing.", ...).
    pub(crate) fn parse(o: &Map<String, Value>, driver: &str, prefix: &str) -> Result<QcowSpec> {
        let mut allowed = vec!["file", "backing", "encrypt", "data-file"];
        if driver == "qcow2" {
            allowed.extend(CACHE_OPTIONS.iter().chain(WRITE_PATH_OPTIONS));
        }
        check_keys(o, driver, &allowed)?;
        if o.contains_key("data-file") {
            bail!(
                Unsupported,
                "{driver}: the 'data-file' option is not supported yet"
            );
        }
        let encrypt = EncryptSpec::parse(o, prefix)?;
        let file = required_child(o, "file", driver)?;
        Ok(QcowSpec {
            file,
            backing: BackingSpec::parse(o, prefix)?,
            encrypt,
            cache: CacheSpec::parse(o)?,
            tuning: Tuning::from_options(o),
        })
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        write_child(m, "file", &self.file);
        match &self.backing {
            BackingSpec::FromHeader => {}
            BackingSpec::Null => {
                m.insert("backing".into(), Value::Null);
            }
            BackingSpec::Options(d) => {
                m.insert("backing".into(), Value::Object(d.options().clone()));
            }
        }
        if !self.encrypt.is_empty() {
            m.insert("encrypt".into(), Value::Object(self.encrypt.to_options()));
        }
        self.cache.write_options(m);
        self.tuning.write_options(m);
    }
}

impl BackingSpec {
    fn parse(o: &Map<String, Value>, prefix: &str) -> Result<BackingSpec> {
        Ok(match o.get("backing") {
            None => BackingSpec::FromHeader,
            Some(Value::Null) => BackingSpec::Null,
            Some(Value::String(f)) => {
                BackingSpec::Options(Deferred::new(filename_options(f, None)?))
            }
            Some(Value::Object(m)) => BackingSpec::Options(Deferred::new(m.clone())),
            Some(_) => bail!(
                Usage,
                "option '{prefix}backing' must be an object, a filename or null"
            ),
        })
    }
}

impl EncryptSpec {
    fn parse(o: &Map<String, Value>, prefix: &str) -> Result<EncryptSpec> {
        match o.get("encrypt") {
            None => Ok(EncryptSpec::default()),
            Some(Value::Object(m)) => {
                if let Some(k) = m.keys().find(|k| *k != "key-secret" && *k != "format") {
                    bail!(
                        Usage,
                        "qcow2 does not support the option '{prefix}encrypt.{k}' (supported: encrypt.key-secret, encrypt.format)"
                    );
                }
                Ok(EncryptSpec {
                    key_secret: opt_str(m, "key-secret")?,
                    format: opt_str(m, "format")?,
                })
            }
            Some(_) => bail!(
                Usage,
                "option '{prefix}encrypt' must be an object (encrypt.key-secret=ID)"
            ),
        }
    }

    /// Whether neither option is set.
    pub fn is_empty(&self) -> bool {
        self.key_secret.is_none() && self.format.is_none()
    }

    fn to_options(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in [("format", &self.format), ("key-secret", &self.key_secret)] {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        m
    }
}
