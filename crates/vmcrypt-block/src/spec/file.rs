//! Options of the `file` driver: the host file a graph's bytes live in.
use super::parse::{Tuning, check_keys};
use crate::opts::opt_str;
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail};

/// `driver=file`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSpec {
    /// `filename`: the host path (required).
    pub filename: String,
    /// `locking`: QEMU-compatible image locking (`on`, `off`, `auto`; default on, and
    /// off where the filesystem has no OFD locks).
    pub locking: Option<Locking>,
    /// Tuning options as given ([`super::TUNING_OPTIONS`]).
    pub tuning: Tuning,
    /// Given as a bare filename where a child node was expected (`file=PATH`): such a
    /// child is opened without the "opening child" error context, as before.
    pub(crate) bare: bool,
}

/// The `locking` option of a `file` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locking {
    On,
    Off,
    Auto,
}

impl Locking {
    fn name(self) -> &'static str {
        match self {
            Locking::On => "on",
            Locking::Off => "off",
            Locking::Auto => "auto",
        }
    }
}

impl FileSpec {
    /// A `file` node for `filename` with default options.
    pub fn new(filename: impl Into<String>) -> FileSpec {
        FileSpec {
            filename: filename.into(),
            locking: None,
            tuning: Tuning::default(),
            bare: false,
        }
    }

    /// A child given as a bare filename.
    pub(crate) fn bare(filename: &str) -> FileSpec {
        FileSpec {
            bare: true,
            ..FileSpec::new(filename)
        }
    }

    pub(crate) fn parse(o: &Map<String, Value>) -> Result<FileSpec> {
        check_keys(o, "file", &["filename", "locking"])?;
        let filename = opt_str(o, "filename")?
            .ok_or_else(|| Error::usage("driver 'file' needs the option 'filename'"))?;
        let locking = match opt_str(o, "locking")?.as_deref() {
            None => None,
            Some("auto") => Some(Locking::Auto),
            Some("on") => Some(Locking::On),
            Some("off") => Some(Locking::Off),
            Some(other) => bail!(Usage, "locking must be on, off or auto, not '{other}'"),
        };
        Ok(FileSpec {
            filename,
            locking,
            tuning: Tuning::from_options(o),
            bare: false,
        })
    }

    /// Whether the file is opened with image locking.
    pub fn locks(&self) -> bool {
        self.locking != Some(Locking::Off)
    }

    pub(crate) fn disable_locking(&mut self) {
        self.locking = Some(Locking::Off);
        self.bare = false;
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        m.insert("filename".into(), Value::String(self.filename.clone()));
        if let Some(l) = self.locking {
            m.insert("locking".into(), Value::String(l.name().into()));
        }
        self.tuning.write_options(m);
    }
}
