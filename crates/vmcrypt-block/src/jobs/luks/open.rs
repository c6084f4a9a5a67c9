//! `luks open`: unlock a LUKS device (either version, optionally with a detached
//! header) into a `luks` node that a daemon then serves, and describe it with the fields
//! of cryptsetup's `status` ([`DeviceInfo`]). The device is opened with QEMU's image
//! locks, so a device some VM or another daemon writes is refused. An rbd image
//! (`rbd:POOL/IMAGE...`, librbd's encryption layout) is opened as the rbd node's
//! `encrypt.format=luks-any` opens it, holes reading as zeros as librbd reads them.
use super::Target;
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::LuksDriver;
use crate::drivers::rbd::RbdDriver;
use crate::drivers::rbd::crypt::RbdCryptDriver;
use crate::spec::{RbdEncryptFormat, RbdSpec, rbd_filename_options};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_error::{Error, Result, ResultExt, ensure};

/// What `luks open` was asked for.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    pub target: Target,
    /// `--readonly`: open the device read-only and refuse writes.
    pub read_only: bool,
    /// `--key-slot`: try only this slot.
    pub key_slot: Option<u32>,
}

/// An opened device as cryptsetup's `status` describes it (sizes in 512-byte sectors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// "LUKS1" or "LUKS2".
    pub luks_type: String,
    /// cryptsetup's cipher string, e.g. "aes-xts-plain64".
    pub cipher: String,
    pub key_bits: u32,
    /// The key slot the passphrase opened.
    pub key_slot: u32,
    /// The device, as an absolute path.
    pub device: String,
    /// The detached header, as an absolute path.
    pub header: Option<String>,
    pub sector_size: u64,
    pub offset_sectors: u64,
    pub size_sectors: u64,
    pub read_only: bool,
}

/// An unlocked device: the node to serve and its description.
pub struct Opened {
    pub node: Arc<dyn BlockDriver>,
    pub info: DeviceInfo,
}

/// Open `req`'s device with `passphrase`: a wrong passphrase is `WrongKey` here, before
/// anything is served.
pub fn open(req: &OpenRequest, passphrase: &[u8]) -> Result<Opened> {
    let t = &req.target;
    if t.device.starts_with("rbd:") {
        return open_rbd(req, passphrase);
    }
    let file = open_file(&t.device, req.read_only)?;
    let header = match &t.header {
        Some(h) => Some(open_file(h, req.read_only)?),
        None => None,
    };
    let node = LuksDriver::open(file, header, Some(passphrase), req.key_slot, &t.limits)
        .with_ctx(|| format!("device {}", t.device))?;
    let info = describe(req, &node, absolute(&t.device))?;
    Ok(Opened {
        node: Arc::new(node),
        info,
    })
}

/// Open an rbd image encrypted in librbd's layout (header at raw offset 0).
fn open_rbd(req: &OpenRequest, passphrase: &[u8]) -> Result<Opened> {
    let t = &req.target;
    ensure!(
        t.header.is_none(),
        Usage,
        "rbd image {}: librbd's encryption keeps the LUKS header in the image, a detached \
         header (--header) is not used",
        t.device
    );
    let spec = RbdSpec::parse(&rbd_filename_options(&t.device)?)?;
    let read_only = req.read_only || spec.snapshot.is_some();
    let raw = Arc::new(RbdDriver::open(&spec, None, read_only)?);
    let node = RbdCryptDriver::open(
        raw,
        RbdEncryptFormat::Any,
        Some(passphrase),
        req.key_slot,
        &t.limits,
        None,
    )
    .with_ctx(|| format!("device {}", t.device))?;
    let info = describe(req, node.luks(), t.device.clone())?;
    Ok(Opened {
        node: Arc::new(node),
        info,
    })
}

/// `status`'s description of the unlocked `node` of `device`.
fn describe(req: &OpenRequest, node: &LuksDriver, device: String) -> Result<DeviceInfo> {
    let t = &req.target;
    let spec = node
        .data_spec()
        .ok_or_else(|| Error::internal("a LUKS node opened with its key has no cipher"))?;
    Ok(DeviceInfo {
        luks_type: format!("LUKS{}", node.header().version().number()),
        cipher: spec.luks2_encryption(),
        key_bits: (spec.key_bytes * 8) as u32,
        key_slot: node.unlocked_slot().unwrap_or(0),
        device,
        header: t.header.as_deref().map(absolute),
        sector_size: node.sector_size(),
        offset_sectors: node.data_offset() / 512,
        size_sectors: node.size() / 512,
        read_only: req.read_only || node.is_read_only(),
    })
}

fn open_file(path: &str, read_only: bool) -> Result<Arc<dyn BlockDriver>> {
    Ok(Arc::new(FileDriver::open(Path::new(path), read_only)?))
}

/// `path` made absolute (symlinks resolved where possible), for `status`.
fn absolute(path: &str) -> String {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_or_else(|_| path.to_string(), |p| p.display().to_string())
}
