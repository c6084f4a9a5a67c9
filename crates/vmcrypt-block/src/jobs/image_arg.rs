//! How a job opens an image: [`ImageArg`] (from [`crate::spec`]) is one image argument as
//! the user gave it (filename, `json:{...}` filename or `--image-opts` string, plus `-f`
//! and `-U`), [`Env`] the secrets and KDF limits every image of a command is opened with.
use super::Events;
use crate::driver::BlockDriver;
use crate::graph::{self, OpenContext};
use crate::secrets::SecretStore;
pub use crate::spec::ImageArg;
use std::cell::OnceCell;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::Result;

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
    /// Open the image; warns through `events` when its format was probed as raw.
    pub fn open(
        &self,
        env: &Env,
        access: Access,
        events: &mut dyn Events,
    ) -> Result<Arc<dyn BlockDriver>> {
        let ctx = env.ctx(access)?;
        let spec = self.to_spec()?;
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
