//! The LUKS header of a device for the key-slot commands: a LUKS device itself, or the
//! LUKS1 header QEMU embeds in a LUKS-encrypted qcow2 image.
//!
//! A qcow2 image with `crypt_method` LUKS keeps a LUKS1 header in the region its full
//! disk encryption header extension names; key-slot offsets count from the start of
//! that region. [`header_device`] hands out a [`RawDriver`] window over exactly that
//! region, so every LUKS1 operation reads and writes inside it and the qcow2 metadata
//! around it is never touched.
use crate::driver::BlockDriver;
use crate::drivers::raw::RawDriver;
use std::sync::Arc;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1;
use vmcrypt_format::qcow2::{self, CryptMethod, Extensions, Header as QHeader};

/// Where a device's LUKS header lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// The device is (or starts with) the LUKS header.
    Plain,
    /// The header is embedded in a qcow2 image at this region of the file.
    Qcow2 { offset: u64, length: u64 },
}

impl Container {
    pub fn is_qcow2(&self) -> bool {
        matches!(self, Container::Qcow2 { .. })
    }
}

/// The node to open the LUKS header on: `file` itself, or (for a LUKS-encrypted qcow2
/// image) a window over its embedded header. Legacy-AES and unencrypted qcow2 images
/// are refused with a message saying how to get a LUKS header.
pub fn header_device(file: Arc<dyn BlockDriver>) -> Result<(Arc<dyn BlockDriver>, Container)> {
    let mut magic = [0u8; 8];
    if file.size() < 8 {
        return Ok((file, Container::Plain));
    }
    file.read_at(&mut magic, 0)?;
    match qcow2::version_of(&magic) {
        None => Ok((file, Container::Plain)),
        Some(2 | 3) => qcow2_window(file),
        Some(v) => bail!(
            Unsupported,
            "'{}' is a qcow version {v} image; only LUKS-encrypted qcow2 images have a LUKS header",
            file.filename()
        ),
    }
}

fn qcow2_window(file: Arc<dyn BlockDriver>) -> Result<(Arc<dyn BlockDriver>, Container)> {
    let name = file.filename();
    let fsize = file.size();
    let mut head = vec![0u8; fsize.min(1 << 21) as usize];
    file.read_at(&mut head, 0)?;
    let h = QHeader::decode(&head).with_ctx(|| format!("qcow2 image '{name}'"))?;
    h.validate(fsize, &qcow2::Limits::default())
        .with_ctx(|| format!("qcow2 image '{name}'"))?;
    let cs = (h.cluster_size() as usize).min(head.len());
    let ext = Extensions::decode(&head[..cs], h.header_length.into(), h.extensions_end())
        .with_ctx(|| format!("qcow2 image '{name}'"))?;
    match h.crypt_method {
        CryptMethod::None => bail!(
            Unsupported,
            "'{name}' is a qcow2 image without encryption: it has no LUKS header"
        ),
        CryptMethod::Aes => bail!(
            Unsupported,
            "'{name}' uses qcow2's legacy AES encryption, which has no LUKS header or key slots; \
             re-encrypt it with `vmcrypt convert -O qcow2 -o encrypt.format=luks ...`"
        ),
        CryptMethod::Luks => {}
    }
    let Some(fde) = ext.fde else {
        bail!(
            Corrupt,
            "'{name}': LUKS-encrypted qcow2 image without an encryption header extension"
        );
    };
    ensure!(
        fde.length >= luks1::HEADER_SIZE as u64,
        Corrupt,
        "'{name}': the qcow2 LUKS header region is only {} bytes",
        fde.length
    );
    let window = RawDriver::new(file, fde.offset, Some(fde.length))
        .with_ctx(|| format!("'{name}': the qcow2 LUKS header region"))?;
    Ok((
        Arc::new(window),
        Container::Qcow2 {
            offset: fde.offset,
            length: fde.length,
        },
    ))
}

/// Refuse a LUKS2-only operation on a qcow2-embedded header (always LUKS1).
pub fn require_plain(c: Container, device: &str, what: &str) -> Result<()> {
    ensure!(
        !c.is_qcow2(),
        Unsupported,
        "{device}: {what} needs a LUKS2 device; the LUKS header inside a qcow2 image is LUKS1"
    );
    Ok(())
}
