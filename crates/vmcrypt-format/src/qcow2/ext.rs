//! qcow2 header extensions: typed views of the known ones, raw bytes for the rest.
//!
//! Extensions follow the header (at `header_length`) up to the backing file name or the
//! end of the first cluster. Each is `u32 type, u32 length, data`, padded to 8 bytes;
//! type 0 ends the list.
use super::be::{u32_at, u64_at};
use vmcrypt_error::{Result, ensure};

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_FDE: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// Which feature field a feature name table entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureKind {
    Incompatible,
    Compatible,
    Autoclear,
    Other(u8),
}

/// One 48-byte entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    pub kind: FeatureKind,
    pub bit: u8,
    pub name: String,
}

/// The full-disk-encryption header pointer (LUKS header region in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdeRegion {
    pub offset: u64,
    pub length: u64,
}

/// The bitmaps extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapsExt {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// Every extension of a header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    pub fde: Option<FdeRegion>,
    pub data_file: Option<String>,
    pub bitmaps: Option<BitmapsExt>,
    /// Unknown extensions, kept as (type, data).
    pub unknown: Vec<(u32, Vec<u8>)>,
}

impl Extensions {
    /// Parse the extensions in `buf[start..end]` (`buf` is the start of the file).
    pub fn decode(buf: &[u8], start: u64, end: u64) -> Result<Extensions> {
        let end = end.min(buf.len() as u64) as usize;
        let mut pos = start as usize;
        let mut ext = Extensions::default();
        let mut seen = Vec::new();
        while pos + 8 <= end {
            let kind = u32_at(buf, pos);
            let len = u32_at(buf, pos + 4) as usize;
            if kind == EXT_END {
                return Ok(ext);
            }
            let data_start = pos + 8;
            ensure!(
                len <= end - data_start,
                Corrupt,
                "qcow2: header extension {kind:#010x} at {pos:#x} ({len} bytes) runs past the header area"
            );
            ensure!(
                !(is_known(kind) && seen.contains(&kind)),
                Corrupt,
                "qcow2: header extension {kind:#010x} appears twice"
            );
            seen.push(kind);
            ext.add(kind, &buf[data_start..data_start + len])?;
            pos = data_start + len.next_multiple_of(8);
        }
        // Running into the end of the area without an end marker is what QEMU accepts
        // when the area is exactly full; anything shorter than an extension header is
        // padding.
        Ok(ext)
    }

    fn add(&mut self, kind: u32, data: &[u8]) -> Result<()> {
        match kind {
            EXT_BACKING_FORMAT => self.backing_format = Some(name_of("backing format", data)?),
            EXT_DATA_FILE => self.data_file = Some(name_of("external data file", data)?),
            EXT_FEATURE_NAMES => self.feature_names = feature_names(data)?,
            EXT_FDE => {
                ensure!(
                    data.len() == 16,
                    Corrupt,
                    "qcow2: encryption header extension is {} bytes, expected 16",
                    data.len()
                );
                self.fde = Some(FdeRegion {
                    offset: u64_at(data, 0),
                    length: u64_at(data, 8),
                });
            }
            EXT_BITMAPS => {
                ensure!(
                    data.len() >= 24,
                    Corrupt,
                    "qcow2: bitmaps extension is {} bytes, expected 24",
                    data.len()
                );
                self.bitmaps = Some(BitmapsExt {
                    nb_bitmaps: u32_at(data, 0),
                    directory_size: u64_at(data, 8),
                    directory_offset: u64_at(data, 16),
                });
            }
            _ => self.unknown.push((kind, data.to_vec())),
        }
        Ok(())
    }

    /// The on-disk bytes of these extensions, each padded to 8 bytes, in the order QEMU
    /// writes them (backing format, external data file, FDE, feature names, bitmaps,
    /// unknown ones verbatim), followed by the 8-byte end marker.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(f) = &self.backing_format {
            push_ext(&mut out, EXT_BACKING_FORMAT, f.as_bytes());
        }
        if let Some(f) = &self.data_file {
            push_ext(&mut out, EXT_DATA_FILE, f.as_bytes());
        }
        if let Some(r) = &self.fde {
            let mut d = r.offset.to_be_bytes().to_vec();
            d.extend_from_slice(&r.length.to_be_bytes());
            push_ext(&mut out, EXT_FDE, &d);
        }
        if !self.feature_names.is_empty() {
            let d: Vec<u8> = self
                .feature_names
                .iter()
                .flat_map(FeatureName::encode)
                .collect();
            push_ext(&mut out, EXT_FEATURE_NAMES, &d);
        }
        if let Some(b) = &self.bitmaps {
            let mut d = b.nb_bitmaps.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&b.directory_size.to_be_bytes());
            d.extend_from_slice(&b.directory_offset.to_be_bytes());
            push_ext(&mut out, EXT_BITMAPS, &d);
        }
        for (kind, data) in &self.unknown {
            push_ext(&mut out, *kind, data);
        }
        out.extend_from_slice(&[0; 8]);
        out
    }

    /// The name the feature table gives `bit` of `kind`, if any.
    pub fn feature_name(&self, kind: FeatureKind, bit: u8) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|f| f.kind == kind && f.bit == bit)
            .map(|f| f.name.as_str())
    }
}

impl FeatureName {
    /// QEMU's feature name table for a new version 3 image, in QEMU's order.
    pub fn qemu_table() -> Vec<FeatureName> {
        use FeatureKind::*;
        [
            (Incompatible, 0, "dirty bit"),
            (Incompatible, 1, "corrupt bit"),
            (Incompatible, 2, "external data file"),
            (Incompatible, 3, "compression type"),
            (Incompatible, 4, "extended L2 entries"),
            (Compatible, 0, "lazy refcounts"),
            (Autoclear, 0, "bitmaps"),
            (Autoclear, 1, "raw external data"),
        ]
        .into_iter()
        .map(|(kind, bit, name)| FeatureName {
            kind,
            bit,
            name: name.to_string(),
        })
        .collect()
    }

    /// The 48-byte table entry (the name is cut to 46 bytes, zero-padded).
    pub fn encode(&self) -> [u8; 48] {
        let mut e = [0u8; 48];
        e[0] = match self.kind {
            FeatureKind::Incompatible => 0,
            FeatureKind::Compatible => 1,
            FeatureKind::Autoclear => 2,
            FeatureKind::Other(k) => k,
        };
        e[1] = self.bit;
        let n = self.name.len().min(46);
        e[2..2 + n].copy_from_slice(&self.name.as_bytes()[..n]);
        e
    }
}

/// Append extension `kind` with `data`, zero-padded to 8 bytes.
fn push_ext(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn is_known(kind: u32) -> bool {
    matches!(
        kind,
        EXT_BACKING_FORMAT | EXT_FEATURE_NAMES | EXT_FDE | EXT_DATA_FILE | EXT_BITMAPS
    )
}

fn name_of(what: &str, data: &[u8]) -> Result<String> {
    ensure!(
        data.len() <= 1023,
        Corrupt,
        "qcow2: {what} name of {} bytes is too long",
        data.len()
    );
    let s = std::str::from_utf8(data)
        .map_err(|_| vmcrypt_error::Error::corrupt(format!("qcow2: {what} name is not UTF-8")))?;
    Ok(s.trim_end_matches('\0').to_string())
}

fn feature_names(data: &[u8]) -> Result<Vec<FeatureName>> {
    ensure!(
        data.len().is_multiple_of(48),
        Corrupt,
        "qcow2: feature name table of {} bytes is not a multiple of 48",
        data.len()
    );
    Ok(data
        .chunks_exact(48)
        .map(|e| {
            let raw = &e[2..];
            let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            FeatureName {
                kind: match e[0] {
                    0 => FeatureKind::Incompatible,
                    1 => FeatureKind::Compatible,
                    2 => FeatureKind::Autoclear,
                    k => FeatureKind::Other(k),
                },
                bit: e[1],
                name: String::from_utf8_lossy(&raw[..n]).into_owned(),
            }
        })
        .collect())
}
