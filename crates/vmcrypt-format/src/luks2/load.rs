//! Choosing between the two LUKS2 header copies, as cryptsetup does on every load.
//!
//! The primary copy is read at offset 0. If its binary header and checksum are good,
//! the secondary is read at the primary's `hdr_size`; otherwise every legal header size
//! (16 KiB .. 4 MiB) is scanned for a secondary `SKUL\xba\xbe` header whose `hdr_offset`
//! and `hdr_size` equal that offset. A copy whose JSON fails validation is "invalid";
//! of two valid copies the one with the lower seqid is "outdated". The valid copy with
//! the highest seqid wins (primary on a tie); the other one, if not valid and current,
//! should be rewritten from the winner (with a fresh salt) by the caller.
use vmcrypt_error::{Error, ErrorKind, Result, ensure};

use super::binary::{BinaryHeader, HeaderCopy, SALT_LEN, verify_checksum};
use super::{BIN_HEADER_SIZE, HDR_SIZES, HeaderHasher, Luks2Header, Metadata};

/// Options for [`load`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Size of the device holding the header; when given, the headers plus keyslots
    /// area must fit (cryptsetup: "device is too small").
    pub device_size: Option<u64>,
}

/// What became of one header copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    /// Valid and current.
    Valid,
    /// Valid but with a lower seqid than the other copy.
    Outdated { seqid: u64 },
    /// Missing, damaged or failing validation; the reason says how.
    Invalid { reason: String },
}

/// The result of [`load`].
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub header: Luks2Header,
    /// The copy `header` came from.
    pub source: HeaderCopy,
    pub primary: CopyState,
    pub secondary: CopyState,
    /// The JSON needed cryptsetup's repair (stray KDF parameters dropped).
    pub json_repaired: bool,
}

impl Loaded {
    /// The copy that should be rewritten from `header`, if any.
    pub fn copy_needing_repair(&self) -> Option<HeaderCopy> {
        let other = self.source.other();
        let state = match other {
            HeaderCopy::Primary => &self.primary,
            HeaderCopy::Secondary => &self.secondary,
        };
        (*state != CopyState::Valid).then_some(other)
    }
}

/// One copy after reading: binary header (if it decoded and its checksum matched) and
/// the metadata or the reason it was rejected.
struct CopyRead {
    bin: BinaryHeader,
    json: Result<(Metadata, bool)>,
}

/// Read the binary header and JSON area of `copy` at `offset`, check the checksum.
fn read_binary<R>(
    read: &mut R,
    copy: HeaderCopy,
    offset: u64,
    hasher: &dyn HeaderHasher,
) -> Result<(BinaryHeader, Vec<u8>)>
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    let bin_bytes = read(offset, BIN_HEADER_SIZE)?;
    let bin = BinaryHeader::decode(&bin_bytes, copy, offset)?;
    let len = bin.json_area_len() as usize;
    let area = read(offset + BIN_HEADER_SIZE as u64, len)?;
    ensure!(
        area.len() == len,
        Corrupt,
        "{} LUKS2 header at offset {offset}: JSON area truncated ({} of {len} bytes)",
        copy.name(),
        area.len()
    );
    verify_checksum(&bin, &bin_bytes, &area, hasher)?;
    Ok((bin, area))
}

fn read_copy<R>(
    read: &mut R,
    copy: HeaderCopy,
    offset: u64,
    hasher: &dyn HeaderHasher,
) -> Result<CopyRead>
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    let (bin, area) = read_binary(read, copy, offset, hasher)?;
    let json = Metadata::from_json_area(&area)
        .map_err(|e| e.context(format!("{} LUKS2 header at offset {offset}", copy.name())));
    Ok(CopyRead { bin, json })
}

/// Scan the legal header sizes for a secondary header (used when the primary's binary
/// header is unusable). The first offset with a good binary header and checksum wins.
fn scan_secondary<R>(read: &mut R, hasher: &dyn HeaderHasher) -> Result<CopyRead>
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    for off in HDR_SIZES {
        if let Ok(c) = read_copy(read, HeaderCopy::Secondary, off, hasher) {
            return Ok(c);
        }
    }
    Err(Error::corrupt(
        "no secondary LUKS2 header found at any known offset",
    ))
}

fn raw_salt<R>(read: &mut R, offset: u64) -> [u8; SALT_LEN]
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    let mut salt = [0u8; SALT_LEN];
    if let Ok(b) = read(offset + 104, SALT_LEN)
        && b.len() == SALT_LEN
    {
        salt.copy_from_slice(&b);
    }
    salt
}

fn state_of(c: &Result<CopyRead>) -> CopyState {
    match c {
        Ok(CopyRead { json: Ok(_), .. }) => CopyState::Valid,
        Ok(CopyRead { json: Err(e), .. }) | Err(e) => CopyState::Invalid {
            reason: e.to_string(),
        },
    }
}

/// Why [`load_report`] failed.
#[derive(Debug)]
pub struct LoadFailure {
    pub error: Error,
    /// No valid copy was found and a copy lacks its magic where it was looked for (the
    /// primary at offset 0, or the secondary after a good primary binary header):
    /// nothing says this is a LUKS2 header at all.
    pub no_magic: bool,
}

impl From<Error> for LoadFailure {
    fn from(error: Error) -> Self {
        LoadFailure {
            error,
            no_magic: false,
        }
    }
}

/// Whether a full binary header's worth of bytes at `offset` lacks `copy`'s magic.
fn lacks_magic<R>(read: &mut R, copy: HeaderCopy, offset: u64) -> bool
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    read(offset, BIN_HEADER_SIZE)
        .is_ok_and(|b| b.len() >= BIN_HEADER_SIZE && b[..6] != copy.magic())
}

/// Load a LUKS2 header through `read(offset, len)`, which returns up to `len` bytes at
/// `offset` of the header device (fewer at its end). See the module documentation.
pub fn load_with<R>(read: R, hasher: &dyn HeaderHasher, opts: LoadOptions) -> Result<Loaded>
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    load_report(read, hasher, opts).map_err(|f| f.error)
}

/// [`load_with`], saying in the failure whether any LUKS2 magic was found.
pub fn load_report<R>(
    mut read: R,
    hasher: &dyn HeaderHasher,
    opts: LoadOptions,
) -> Result<Loaded, LoadFailure>
where
    R: FnMut(u64, usize) -> Result<Vec<u8>>,
{
    let c1 = read_copy(&mut read, HeaderCopy::Primary, 0, hasher);
    let c2 = match &c1 {
        Ok(p) => read_copy(&mut read, HeaderCopy::Secondary, p.bin.hdr_size, hasher),
        Err(_) => scan_secondary(&mut read, hasher),
    };
    let (mut s1, mut s2) = (state_of(&c1), state_of(&c2));
    let use_secondary = match (&c1, &c2) {
        (Ok(p @ CopyRead { json: Ok(_), .. }), Ok(s @ CopyRead { json: Ok(_), .. })) => {
            if p.bin.seqid > s.bin.seqid {
                s2 = CopyState::Outdated { seqid: s.bin.seqid };
            } else if p.bin.seqid < s.bin.seqid {
                s1 = CopyState::Outdated { seqid: p.bin.seqid };
            }
            p.bin.seqid < s.bin.seqid
        }
        (Ok(CopyRead { json: Ok(_), .. }), _) => false,
        (_, Ok(CopyRead { json: Ok(_), .. })) => true,
        _ => {
            let no_magic = match &c1 {
                Err(_) => lacks_magic(&mut read, HeaderCopy::Primary, 0),
                Ok(p) => {
                    c2.is_err() && lacks_magic(&mut read, HeaderCopy::Secondary, p.bin.hdr_size)
                }
            };
            let error = Error::new(
                if matches!(&c1, Err(e) if e.kind() == ErrorKind::Unsupported) {
                    ErrorKind::Unsupported
                } else {
                    ErrorKind::Corrupt
                },
                format!(
                    "no valid LUKS2 header: primary: {}; secondary: {}",
                    reason(&s1),
                    reason(&s2)
                ),
            );
            return Err(LoadFailure { error, no_magic });
        }
    };
    let (chosen, other) = if use_secondary { (c2, c1) } else { (c1, c2) };
    let chosen = chosen.map_err(|e| Error::internal(e.to_string()))?;
    let (metadata, json_repaired) = chosen.json.map_err(|e| Error::internal(e.to_string()))?;
    let bin = chosen.bin;
    let other_salt = match &other {
        Ok(o) => o.bin.salt,
        Err(_) if use_secondary => raw_salt(&mut read, 0),
        Err(_) => raw_salt(&mut read, bin.hdr_size),
    };
    let (primary_salt, secondary_salt) = if use_secondary {
        (other_salt, bin.salt)
    } else {
        (bin.salt, other_salt)
    };
    let header = Luks2Header {
        binary: bin,
        primary_salt,
        secondary_salt,
        metadata,
    };
    if let Some(size) = opts.device_size {
        let need = header.metadata.hdr_and_areas_size()?;
        if size < need {
            return Err(Error::corrupt(format!(
                "device is too small: {size} bytes, the LUKS2 header and keyslots need {need}"
            ))
            .into());
        }
    }
    Ok(Loaded {
        header,
        source: if use_secondary {
            HeaderCopy::Secondary
        } else {
            HeaderCopy::Primary
        },
        primary: s1,
        secondary: s2,
        json_repaired,
    })
}

fn reason(s: &CopyState) -> String {
    match s {
        CopyState::Invalid { reason } => reason.clone(),
        other => format!("{other:?}"),
    }
}

/// [`load_with`] over an in-memory prefix of the header device (for example its first
/// 8 MiB, enough for any header size; a shorter buffer works when the headers fit).
pub fn load(area: &[u8], hasher: &dyn HeaderHasher, opts: LoadOptions) -> Result<Loaded> {
    load_with(
        |off, len| {
            let start = usize::try_from(off).unwrap_or(usize::MAX).min(area.len());
            let end = start.saturating_add(len).min(area.len());
            Ok(area[start..end].to_vec())
        },
        hasher,
        opts,
    )
}
