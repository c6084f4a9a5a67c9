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

    /// The open context for `access`, backing files read-only, image locking on (an
    /// image argument's `-U` comes from [`ImageArg::context`]).
    pub fn ctx(&self, access: Access) -> Result<OpenContext<'_>> {
        Ok(OpenContext {
            secrets: self.secrets()?,
            read_only: access.read_only,
            metadata_only: access.metadata_only,
            limits: self.limits,
            writable_backing: false,
            force_share: false,
        })
    }
}

impl ImageArg {
    /// The context this image is opened with for `access`: [`Env::ctx`] plus its `-U`,
    /// which then reaches every node of the graph (backing layers, detached header).
    /// `-U` with a writing `access` is refused when the graph is opened.
    pub fn context<'e>(&self, env: &'e Env, access: Access) -> Result<OpenContext<'e>> {
        Ok(OpenContext {
            force_share: self.force_share,
            ..env.ctx(access)?
        })
    }

    /// Open the image; warns through `events` when its format was probed as raw.
    pub fn open(
        &self,
        env: &Env,
        access: Access,
        events: &mut dyn Events,
    ) -> Result<Arc<dyn BlockDriver>> {
        let ctx = self.context(env, access)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::file::FileDriver;
    use crate::jobs::NoEvents;
    use crate::jobs::create_request::CreateRequest;
    use crate::jobs::testutil::{Scratch, sized};
    use std::path::Path;
    use vmcrypt_error::ErrorKind;

    /// A qcow2 overlay over a raw base, the base held for writing by another open (OFD
    /// locks conflict between open files of one process too).
    fn overlay_over_a_written_base(sc: &Scratch) -> (String, FileDriver) {
        let base = sc.raw("base.raw", &[7u8; 65536]);
        let top = sc.create(
            "top.qcow2",
            CreateRequest {
                backing: Some(base.clone()),
                backing_format: Some("raw".into()),
                ..sized("qcow2", "64K")
            },
        );
        let writer = FileDriver::open(Path::new(&base), false).unwrap();
        (top, writer)
    }

    #[test]
    fn force_share_reaches_the_backing_file() {
        let sc = Scratch::new();
        let (top, _writer) = overlay_over_a_written_base(&sc);
        let env = Env::default();
        let arg = ImageArg::file(&top, Some("qcow2"));
        let e = arg.open(&env, Access::READ, &mut NoEvents).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert!(e.display_chain().contains("base.raw"), "{e}");
        let shared = ImageArg {
            force_share: true,
            ..arg
        };
        let node = shared.open(&env, Access::READ, &mut NoEvents).unwrap();
        let mut buf = [0u8; 512];
        node.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [7u8; 512]);
    }

    #[test]
    fn force_share_is_refused_for_writing() {
        let sc = Scratch::new();
        let img = sc.create("img.qcow2", sized("qcow2", "64K"));
        let arg = ImageArg {
            force_share: true,
            ..ImageArg::file(&img, Some("qcow2"))
        };
        let e = arg
            .open(&Env::default(), Access::WRITE, &mut NoEvents)
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(e.message().contains("read-only images"), "{e}");
    }
}
