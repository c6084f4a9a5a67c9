//! How a job names and opens an image: [`ImageArg`] is one image argument as the user
//! gave it (filename, `json:{...}` filename or `--image-opts` string, plus `-f` and `-U`),
//! [`Env`] the secrets and KDF limits every image of a command is opened with. The
//! argument becomes a graph description here, inside the library, and nowhere else.
use super::Events;
use crate::driver::BlockDriver;
use crate::graph::{self, OpenContext};
use crate::opts::parse_keyval;
use crate::secrets::SecretStore;
use serde_json::{Map, Value};
use std::cell::OnceCell;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Result, bail};

/// One image argument of a command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageArg {
    /// A filename, a `json:{...}` filename, or (with `image_opts`) keyval options.
    pub name: String,
    /// The format given with `-f` (probed when `None`).
    pub format: Option<String>,
    /// `name` is an `--image-opts` string.
    pub image_opts: bool,
    /// Open without locking (`-U` / `--force-share`).
    pub force_share: bool,
}

/// The secrets and limits every image of one command is opened with. The secret
/// definitions are parsed (and their files read) when a job first needs them, so a job
/// that needs none (a qcow2 check, `rebase -u`) is not stopped by them.
#[derive(Default)]
pub struct Env {
    /// `--object` definitions (`secret,id=ID,file=PATH`).
    objects: Vec<String>,
    secrets: OnceCell<SecretStore>,
    /// Caps on the KDF cost accepted from a header.
    pub limits: KdfLimits,
}

/// Whether an image is opened for writing and whether its key is needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub read_only: bool,
    /// Open encrypted nodes without their key (what `info` needs).
    pub metadata_only: bool,
}

impl Access {
    /// Read data (key needed).
    pub const READ: Access = Access {
        read_only: true,
        metadata_only: false,
    };
    /// Read metadata only (no key needed).
    pub const METADATA: Access = Access {
        read_only: true,
        metadata_only: true,
    };
    /// Read and write data.
    pub const WRITE: Access = Access {
        read_only: false,
        metadata_only: false,
    };
}

impl Env {
    /// Secrets from the `--object` definitions `objects`, and the KDF caps `limits`.
    pub fn new(objects: Vec<String>, limits: KdfLimits) -> Env {
        Env {
            objects,
            secrets: OnceCell::new(),
            limits,
        }
    }

    /// The secrets, parsed on first use.
    pub fn secrets(&self) -> Result<&SecretStore> {
        if let Some(s) = self.secrets.get() {
            return Ok(s);
        }
        let mut store = SecretStore::new();
        for o in &self.objects {
            store.add_object(o)?;
        }
        Ok(self.secrets.get_or_init(|| store))
    }

    /// The open context for `access`, backing files read-only.
    pub fn ctx(&self, access: Access) -> Result<OpenContext<'_>> {
        Ok(OpenContext {
            secrets: self.secrets()?,
            read_only: access.read_only,
            metadata_only: access.metadata_only,
            limits: self.limits,
            writable_backing: false,
        })
    }
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

    /// The graph description of this argument.
    pub fn spec(&self) -> Result<Map<String, Value>> {
        let mut spec = if self.image_opts {
            if self.format.is_some() {
                bail!(Usage, "--image-opts and -f are mutually exclusive");
            }
            parse_keyval(&self.name, None)?
        } else {
            graph::spec_from_filename(&self.name, self.format.as_deref())?
        };
        if self.force_share {
            graph::disable_locking(&mut spec);
        }
        Ok(spec)
    }

    /// Open the image; warns through `events` when its format was probed as raw.
    pub fn open(
        &self,
        env: &Env,
        access: Access,
        events: &mut dyn Events,
    ) -> Result<Arc<dyn BlockDriver>> {
        let ctx = env.ctx(access)?;
        let spec = self.spec()?;
        if let Ok(Some("raw")) = graph::probed_format(&spec) {
            events.warning(&probed_raw_warning(&self.name));
        }
        graph::open(&spec, &ctx)
    }
}

/// qemu-img's warning for an image whose format was probed as raw.
pub fn probed_raw_warning(name: &str) -> String {
    format!(
        "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions."
    )
}
