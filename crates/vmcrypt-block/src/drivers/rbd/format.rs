//! Write a LUKS header on an rbd image in the layout `rbd encryption format` writes
//! (Ceph Pacific): header at raw offset 0, AES-XTS-plain64, data offset aligned to the
//! object size (LUKS1: cryptsetup's layout with the object size as the alignment, 4 MiB
//! for 4 MiB objects; LUKS2: 16 MiB, or the object size if larger), LUKS2 with
//! 4096-byte sectors. Nothing but the header area is written.
use super::RbdDriver;
use super::magic::CloneMagicView;
use crate::driver::BlockDriver;
use crate::drivers::luks::{CreateParams, KeyslotParams, Version, Volume};
use crate::drivers::mem::MemDriver;
use std::sync::Arc;
use vmcrypt_crypto::CipherSpec;
use vmcrypt_error::{Result, ResultExt, ensure};
use vmcrypt_format::luks1::Layout;

/// librbd's LUKS2 data offset before rounding up to the object size.
const LUKS2_DATA_OFFSET: u64 = 16 << 20;

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formatted {
    pub uuid: String,
    /// Where the encrypted data starts in the image.
    pub data_offset: u64,
}

/// The header parameters librbd would use for `version` on an image with objects of
/// `object_size` bytes and AES keys of `aes_bits` (128 or 256).
pub fn librbd_params(
    version: Version,
    object_size: u64,
    aes_bits: u32,
    keyslot: KeyslotParams,
) -> Result<CreateParams> {
    ensure!(
        aes_bits == 128 || aes_bits == 256,
        Usage,
        "librbd encrypts with AES-128 or AES-256, not AES-{aes_bits}"
    );
    // XTS takes two AES keys.
    let spec = CipherSpec::from_luks2("aes-xts-plain64", aes_bits as usize / 4)?;
    let mut p = match version {
        Version::V1 => CreateParams::luks1(spec),
        Version::V2 => CreateParams::luks2(spec),
    };
    p.keyslot = keyslot;
    match version {
        Version::V1 => {
            p.layout = Layout::Cryptsetup {
                align_sectors: object_size / 512,
            };
        }
        Version::V2 => {
            p.sector_size = 4096;
            p.data_offset = Some(LUKS2_DATA_OFFSET.div_ceil(object_size) * object_size);
        }
    }
    Ok(p)
}

/// The bytes the header will take on `raw` (its data offset; for LUKS1 an upper
/// bound), after checking the passphrase and that data fits after it.
fn header_room(raw: &RbdDriver, params: &CreateParams, passphrase: &[u8]) -> Result<u64> {
    ensure!(!passphrase.is_empty(), Usage, "empty passphrase refused");
    let obj = raw.object_size();
    // LUKS1's header and key slots (AES-256) end just under 2 MiB.
    let need = params
        .data_offset
        .unwrap_or((2u64 << 20).div_ceil(obj) * obj);
    ensure!(
        raw.size() > need,
        Usage,
        "'{}' is {} bytes, no room for data after a {need}-byte encryption header; \
         nothing was written",
        raw.filename(),
        raw.size()
    );
    Ok(need)
}

/// Format `raw` with `params` (from [`librbd_params`]) and `passphrase`.
pub fn format(raw: &Arc<RbdDriver>, params: &CreateParams, passphrase: &[u8]) -> Result<Formatted> {
    let (name, need) = (raw.filename(), header_room(raw, params, passphrase)?);
    let dev: Arc<dyn BlockDriver> = raw.clone();
    let (vol, _key) =
        Volume::create(dev, params, passphrase).with_ctx(|| format!("formatting '{name}'"))?;
    raw.flush()?;
    let data_offset = match vol.v1() {
        Some(v1) => v1.payload_offset(),
        None => need,
    };
    Ok(Formatted {
        uuid: vol.uuid().to_string(),
        data_offset,
    })
}

/// Format a clone with its own key in Ceph Reef's layered layout: the header is built
/// in memory, its magic changed to the clone magic (`RBDL`, see [`super::magic`]), and
/// written from offset 0 up to the data offset in one write of whole objects (the data
/// offset is object-aligned), so no byte of the parent's header area survives in the
/// clone. The clone's data is untouched: it still reads from the parent, with the
/// parent's key, until written.
pub fn format_clone(
    raw: &Arc<RbdDriver>,
    params: &CreateParams,
    passphrase: &[u8],
) -> Result<Formatted> {
    let (name, obj) = (raw.filename(), raw.object_size());
    let need = header_room(raw, params, passphrase)?;
    let mem = Arc::new(MemDriver::new(vec![0u8; (need + obj) as usize]));
    let dev: Arc<dyn BlockDriver> = mem.clone();
    let (vol, _key) =
        Volume::create(dev, params, passphrase).with_ctx(|| format!("formatting '{name}'"))?;
    let data_offset = vol.v1().map_or(need, |v| v.payload_offset());
    ensure!(
        data_offset.is_multiple_of(obj),
        Internal,
        "clone header of {data_offset} bytes is not a whole number of {obj}-byte objects"
    );
    let mut header = mem.snapshot();
    header.truncate(data_offset as usize);
    let target: Arc<dyn BlockDriver> = raw.clone();
    let view = CloneMagicView::new(target, Some((params.version.number(), params.hdr_size)))?;
    view.write_at_mut(&mut header, 0)?;
    view.flush()?;
    Ok(Formatted {
        uuid: vol.uuid().to_string(),
        data_offset,
    })
}
