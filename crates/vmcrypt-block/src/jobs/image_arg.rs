//! How a job opens an image: [`ImageArg`] (from [`crate::spec`]) is one image argument as
//! the user gave it (filename, `json:{...}` filename or `--image-opts` string, plus `-f`
//! and `-U`), [`Env`] the secrets and KDF limits every image of a command is opened with.
use super::Events;
use crate::driver::BlockDriver;
use crate::graph::{self, OpenContext};
use crate::secrets::{SecretStore, StoredSecrets};
pub use crate::spec::ImageArg;
use std::cell::OnceCell;
use std::sync::Arc;
use vmcrypt_crypto::SecretBytes;
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
    /// Where `store-uuid=`/`store-usage=` secrets are loaded from.
    stored: Option<Arc<dyn StoredSecrets>>,
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
            stored: None,
            limits,
        }
    }

    /// Let `--object secret` name stored secrets, loaded through `loader`.
    pub fn with_stored(mut self, loader: Arc<dyn StoredSecrets>) -> Env {
        self.stored = Some(loader);
        self
    }

    /// Add the secret `id` with `value` (a key handed over a pipe, never an `--object`
    /// string); the `--object` definitions are parsed now (once: secrets added before
    /// are kept).
    pub fn with_secret(mut self, id: &str, value: SecretBytes) -> Result<Env> {
        let mut store = match self.secrets.take() {
            Some(s) => s,
            None => {
                let mut s = SecretStore::with_stored(self.stored.clone());
                for o in &self.objects {
                    s.add_object(o)?;
                }
                s
            }
        };
        store.insert(id, value)?;
        Ok(Env {
            secrets: OnceCell::from(store),
            ..self
        })
    }

    /// The secrets, parsed on first use.
    pub fn secrets(&self) -> Result<&SecretStore> {
        if let Some(s) = self.secrets.get() {
            return Ok(s);
        }
        let mut store = SecretStore::with_stored(self.stored.clone());
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
        let node = graph::open(&spec, &ctx)?;
        if !access.metadata_only {
            warn_unverified_keys(node.as_ref(), events);
        }
        Ok(node)
    }
}

/// Warn once for each node of the graph (its children and backing chain included) that
/// decrypts with a key it could not check: legacy qcow AES has no key digest, so a
/// wrong passphrase reads as garbage with no error, in QEMU too.
fn warn_unverified_keys(node: &dyn BlockDriver, events: &mut dyn Events) {
    if node.as_introspect().is_some_and(|i| i.key_unverified()) {
        events.warning(&unverified_key_warning(&node.filename()));
    }
    for c in node.children() {
        warn_unverified_keys(c.node.as_ref(), events);
    }
    if let Some(b) = node.as_backing().and_then(|b| b.backing_node()) {
        warn_unverified_keys(b.as_ref(), events);
    }
}

/// The warning for an image whose legacy AES key cannot be verified, with how to check it.
pub fn unverified_key_warning(name: &str) -> String {
    format!(
        "WARNING: '{name}' uses legacy qcow AES encryption, which cannot verify a passphrase: \
         a wrong key is not an error, the data just decrypts to garbage.\n         \
         To check the key, convert the image (vmcrypt convert ... -O raw plain.raw) and look \
         at the result: compare it with a copy you trust, or look for a partition table or \
         filesystem (blkid plain.raw, file -s plain.raw).\n         \
         Then move off legacy AES: vmcrypt convert ... -O qcow2 -o \
         encrypt.format=luks,encrypt.key-secret=ID"
    )
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

    /// Warnings a job sent.
    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl Events for Recorded {
        fn warning(&mut self, text: &str) {
            self.0.push(text.to_string());
        }
    }

    #[test]
    fn a_legacy_aes_key_is_reported_unverified_through_events() {
        let img = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vectors/qemu/qcow2-legacy-aes.qcow2")
            .display()
            .to_string();
        assert!(Path::new(&img).is_file(), "test vector missing: {img}");
        let sc = Scratch::new();
        let key = sc.raw("key", b"any key: legacy AES takes it");
        let env = Env::new(
            vec![format!("secret,id=s0,file={key}")],
            KdfLimits::default(),
        );
        let arg = ImageArg {
            name: format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0"),
            image_opts: true,
            ..ImageArg::default()
        };
        let mut events = Recorded::default();
        arg.open(&env, Access::READ, &mut events).unwrap();
        assert_eq!(events.0, [unverified_key_warning(&img)]);
        // Metadata only (info): no data is decrypted, nothing to warn about.
        let mut events = Recorded::default();
        arg.open(&env, Access::METADATA, &mut events).unwrap();
        assert!(events.0.is_empty(), "{:?}", events.0);
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
