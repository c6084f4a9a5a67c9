//! Key-management jobs: the `vmcrypt luks ...` operations (cryptsetup's header and
//! key-slot commands), each a typed request and a typed report, version-blind through
//! [`Volume`]. Secrets come from a [`KeySource`], asked only at the point an operation
//! needs them, so prompts and errors keep cryptsetup's order.
//!
//! * [`slots`]: add, remove, kill, change and test a key slot;
//! * [`format`]: luksFormat on an existing device, keeping its size;
//! * [`header`]: dump, header backup and restore, UUID, isLuks, format conversion;
//! * [`luks2`]: LUKS2-only tokens, keyslot priority / label, repair;
//! * [`reencrypt`]: a new volume key, or `--decrypt` (`decrypt.rs`), in cryptsetup's
//!   LUKS2 reencryption format; [`encrypt`]: encryption of a plain device in place in
//!   the same format;
//!   [`online`]: the control channel of a reencryption run by a serving process;
//! * [`open`] and [`active`]: unlock a device for a daemon to serve under a name, and
//!   the run directory that records which names are active (open/close/status).
//!
//! A device is a file (or block device), or a Ceph RBD image named
//! `rbd:POOL[/NAMESPACE]/IMAGE[:conf=PATH][:id=USER]` whose raw bytes start with the
//! LUKS header librbd's encryption uses (header at raw offset 0); a clone formatted with
//! its own key (`RBDL` magic) is shown to the LUKS code as plain LUKS and keeps its magic.
pub mod active;
mod decrypt;
mod decrypt_shift;
pub mod encrypt;
pub mod format;
pub mod header;
pub mod luks2;
pub mod online;
pub mod open;
pub mod reencrypt;
pub mod slots;

use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::Volume;
use crate::drivers::luks::embedded::{self, Container, require_plain};
use crate::drivers::rbd::RbdDriver;
use crate::drivers::rbd::magic::{CloneMagicView, is_clone_header};
use crate::spec::{RbdSpec, rbd_filename_options};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Result, ResultExt, ensure};

/// The device a key-management job works on.
#[derive(Clone, Debug)]
pub struct Target {
    /// The device as named on the command line (used in messages).
    pub device: String,
    /// A detached header file holding the LUKS header instead of `device`.
    pub header: Option<String>,
    /// Limits on the KDF costs of the header's key slots.
    pub limits: KdfLimits,
}

/// Where an operation gets its secrets; each is asked for only when needed.
pub trait KeySource {
    /// A passphrase that opens an existing key slot.
    fn existing(&mut self) -> Result<SecretBytes>;
    /// The passphrase for a new key slot.
    fn new_passphrase(&mut self) -> Result<SecretBytes>;
    /// A volume key given directly instead of an existing passphrase (add-key).
    fn volume_key(&mut self) -> Result<Option<SecretBytes>> {
        Ok(None)
    }
}

/// How the header device is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Only the header lock: a VM using the image keeps running, as with cryptsetup on
    /// an active device.
    Header { read_only: bool },
    /// The image lock, writable: for changes a running user must not see (restoring a
    /// header, converting its format).
    WholeImage,
}

/// The header device of `t`: a detached header, the device itself, or the LUKS header
/// embedded in a LUKS-encrypted qcow2 image.
struct HeaderDevice {
    dev: Arc<dyn BlockDriver>,
    detached: bool,
    container: Container,
}

impl Target {
    fn header_device(&self, access: Access) -> Result<HeaderDevice> {
        let name = self.header.as_deref().unwrap_or(&self.device);
        if name.starts_with("rbd:") {
            let read_only = matches!(access, Access::Header { read_only: true });
            return Ok(HeaderDevice {
                dev: rbd_device(name, read_only)?,
                detached: self.header.is_some(),
                container: Container::Plain,
            });
        }
        let path = Path::new(name);
        let file = match access {
            Access::WholeImage => FileDriver::open(path, false)?,
            Access::Header { read_only } => FileDriver::open_header(path, read_only)?,
        };
        let (dev, container) = embedded::header_device(Arc::new(file))?;
        Ok(HeaderDevice {
            dev,
            detached: self.header.is_some(),
            container,
        })
    }

    /// Open the header of either version.
    fn open(&self, read_only: bool) -> Result<Volume> {
        let h = self.header_device(Access::Header { read_only })?;
        Volume::open(h.dev, h.detached, &self.limits).with_ctx(|| format!("device {}", self.device))
    }

    /// Open a header to change its key slots: a LUKS2 header with unmet requirements (or
    /// a reencryption in progress) is refused before any passphrase is asked for.
    fn open_for_write(&self) -> Result<Volume> {
        let vol = self.open(false)?;
        vol.check_writable()
            .with_ctx(|| format!("device {}", self.device))?;
        Ok(vol)
    }

    /// Open a LUKS2 header for a LUKS2-only command (a qcow2-embedded header is LUKS1).
    fn open_v2(&self, read_only: bool) -> Result<Volume> {
        // Only the container is kept: the read-only header lock goes before the open.
        let container = self
            .header_device(Access::Header { read_only: true })?
            .container;
        require_plain(container, &self.device, "this command")?;
        let vol = self.open(read_only)?;
        vol.require_luks2(&self.device)?;
        Ok(vol)
    }
}

/// The raw bytes of the rbd image `name` (an `rbd:` filename), through a
/// [`CloneMagicView`] when it holds a clone header. Opened writable, it holds the
/// image's LUKS header lock (a RADOS lock of its own name on the header object), so two
/// header changes never run at once; librbd's exclusive lock is left to whoever writes
/// the data (as with cryptsetup and a file, a running user keeps running). Each header
/// write is one RADOS object write.
fn rbd_device(name: &str, read_only: bool) -> Result<Arc<dyn BlockDriver>> {
    let spec = RbdSpec::parse(&rbd_filename_options(name)?)?;
    ensure!(
        spec.snapshot.is_none() || read_only,
        Usage,
        "rbd image {name} is a snapshot: its LUKS header cannot be changed"
    );
    let mut rbd = RbdDriver::open(&spec, None, read_only)?;
    if !read_only {
        rbd = rbd.lock_header("luks header change")?;
    }
    let raw: Arc<dyn BlockDriver> = Arc::new(rbd);
    let mut head = [0u8; 6];
    if raw.size() >= 6 {
        raw.read_at(&mut head, 0)?;
    }
    if is_clone_header(&head) {
        return Ok(Arc::new(CloneMagicView::new(raw, None)?));
    }
    Ok(raw)
}
