//! Choosing between the two LUKS2 header copies, as cryptsetup does on every load.
//!
//! The primary copy is read at offset 0. If its binary header and checksum are good,
//! the secondary is read at the primary's `hdr_size`; otherwise every legal header size
//! (16 KiB .. 4 MiB) is scanned for a secondary `SKUL\xba\xbe` header whose `hdr_offset`
//! and `hdr_size` equal that offset. A copy whose JSON fails validation is "invalid";
//! of two valid copies the one with the lower seqid is "outdated". The valid copy with
//! the highest seqid wins (primary on a tie); the other one, if not valid and current,
//! should be rewritten from the winner (with a fresh salt) by the caller.
use vmcrypt_error::{Error, ErrorKind, Reason, Result, ensure};

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

/// Load a LUKS2 header through `read(offset, len)`, which returns up to `len` bytes at
/// `offset` of the header device (fewer at its end). See the module documentation.
pub fn load_with<R>(mut read: R, hasher: &dyn HeaderHasher, opts: LoadOptions) -> Result<Loaded>
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
            return Err(no_valid_header(&c1, &c2, &s1, &s2));
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
        ensure!(
            size >= need,
            Corrupt,
            "device is too small: {size} bytes, the LUKS2 header and keyslots need {need}"
        );
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

/// The error when neither copy is usable: unsupported when the primary is of an unknown
/// version, else corrupt; [`Reason::BadMagic`] when a copy had no magic (no LUKS2 header
/// there at all).
fn no_valid_header(
    c1: &Result<CopyRead>,
    c2: &Result<CopyRead>,
    s1: &CopyState,
    s2: &CopyState,
) -> Error {
    let kind = if matches!(c1, Err(e) if e.kind() == ErrorKind::Unsupported) {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Corrupt
    };
    let e = Error::new(
        kind,
        format!(
            "no valid LUKS2 header: primary: {}; secondary: {}",
            reason(s1),
            reason(s2)
        ),
    );
    let no_magic =
        |c: &Result<CopyRead>| matches!(c, Err(e) if e.reason() == Some(Reason::BadMagic));
    if no_magic(c1) || no_magic(c2) {
        e.with_reason(Reason::BadMagic)
    } else {
        e
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn no_hash(_alg: &str, _parts: &[&[u8]]) -> Option<Vec<u8>> {
        None
    }

    fn load_err(area: &[u8]) -> Error {
        load(area, &no_hash, LoadOptions::default()).unwrap_err()
    }

    #[test]
    fn no_magic_anywhere_is_bad_magic() {
        let e = load_err(&[0u8; 0x10000]);
        assert_eq!(
            (e.kind(), e.reason()),
            (ErrorKind::Corrupt, Some(Reason::BadMagic))
        );
        assert!(
            e.message().starts_with("no valid LUKS2 header: primary: "),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_header_with_its_magic_is_not_bad_magic() {
        let mut area = vec![0u8; 0x10000];
        area[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x02");
        area[8..16].copy_from_slice(&0x4000u64.to_be_bytes()); // hdr_size
        area[256..264].copy_from_slice(&0x1000u64.to_be_bytes()); // wrong hdr_offset
        let e = load_err(&area);
        assert_eq!((e.kind(), e.reason()), (ErrorKind::Corrupt, None));
        area[7] = 3; // unsupported version
        let e = load_err(&area);
        assert_eq!((e.kind(), e.reason()), (ErrorKind::Unsupported, None));
    }
}
