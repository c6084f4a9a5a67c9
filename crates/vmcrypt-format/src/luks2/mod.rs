//! The LUKS2 on-disk header: binary header + JSON metadata, in two copies.
//!
//! A LUKS2 device starts with the primary header (4096-byte binary header followed by a
//! NUL-padded JSON area, `hdr_size` bytes in all), immediately followed by the secondary
//! copy, then the keyslots area (`config.keyslots_size` bytes), then the data segments.
//!
//! * [`binary`]: the binary header and its checksum.
//! * [`json`] / [`Metadata`]: the JSON tree, typed views ([`model`]) and edits.
//! * [`validate`]: cryptsetup's metadata checks.
//! * [`load`]: read both copies, pick the valid one with the highest seqid, and say
//!   which copy needs repair.
//!
//! Hashing is not done here: callers pass a [`HeaderHasher`] (the block layer uses
//! `vmcrypt_crypto::HashAlg`), so this crate stays free of crypto code.
pub mod base64;
pub mod binary;
pub mod encrypt;
pub mod json;
mod jsonutil;
pub mod load;
pub mod model;
pub mod reencrypt;
pub mod validate;

pub use binary::{BinaryHeader, HeaderCopy};
pub use json::Metadata;
pub use load::{CopyState, LoadOptions, Loaded, load, load_with};
pub use model::{
    Config, Digest, Kdf, Keyslot, KeyslotKind, Luks2Keyslot, Priority, Segment, SegmentSize, Token,
};

use vmcrypt_error::Result;

/// Size of the binary header.
pub const BIN_HEADER_SIZE: usize = 4096;
/// Smallest `hdr_size` (16 KiB).
pub const HDR_SIZE_MIN: u64 = 0x4000;
/// Largest `hdr_size` (4 MiB), also the largest secondary-header offset.
pub const HDR_SIZE_MAX: u64 = 0x40_0000;
/// The legal header sizes, which are also where a secondary header may live.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x1_0000, 0x2_0000, 0x4_0000, 0x8_0000, 0x10_0000, 0x20_0000, 0x40_0000,
];
/// Largest keyslots area (128 MiB).
pub const MAX_KEYSLOTS_SIZE: u64 = 0x800_0000;
/// Keyslot ids are 0..32.
pub const KEYSLOTS_MAX: u32 = 32;
/// Token ids are 0..32.
pub const TOKENS_MAX: u32 = 32;
/// Segment ids are 0..32.
pub const SEGMENTS_MAX: u32 = 32;
/// Digest ids accepted (cryptsetup creates at most 8, but does not refuse more).
pub const DIGESTS_MAX: u32 = 32;
/// Deepest JSON nesting accepted (json-c's default parser limit).
pub const JSON_MAX_DEPTH: usize = 32;

/// True if `size` is one of [`HDR_SIZES`].
pub fn is_legal_hdr_size(size: u64) -> bool {
    HDR_SIZES.contains(&size)
}

/// Computes header checksums: `alg` ("sha256", ...) over the concatenated `parts`;
/// None if the algorithm is unknown. Implemented for closures of that shape.
pub trait HeaderHasher {
    fn digest(&self, alg: &str, parts: &[&[u8]]) -> Option<Vec<u8>>;
}

impl<F: Fn(&str, &[&[u8]]) -> Option<Vec<u8>>> HeaderHasher for F {
    fn digest(&self, alg: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
        self(alg, parts)
    }
}

/// A LUKS2 header: the binary fields (from the copy it was read from), the salts of
/// both copies, and the metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Luks2Header {
    /// Binary header of the copy this was loaded from (or built for). `copy`,
    /// `hdr_offset`, `salt` and `csum` are replaced per copy when encoding.
    pub binary: BinaryHeader,
    /// Salt of the primary copy.
    pub primary_salt: [u8; binary::SALT_LEN],
    /// Salt of the secondary copy.
    pub secondary_salt: [u8; binary::SALT_LEN],
    pub metadata: Metadata,
}

impl Luks2Header {
    /// `hdr_size`: one copy (binary + JSON area).
    pub fn hdr_size(&self) -> u64 {
        self.binary.hdr_size
    }

    /// Encode one copy (binary header with checksum followed by the JSON area): exactly
    /// `hdr_size` bytes, to be written at offset 0 (primary) or `hdr_size` (secondary).
    /// The metadata is validated first; seqid is written as stored (callers bump it).
    pub fn encode_copy(&self, copy: HeaderCopy, hasher: &dyn HeaderHasher) -> Result<Vec<u8>> {
        let json_len = self.binary.json_area_len();
        self.metadata.validate(json_len)?;
        let area = self.metadata.to_json_area(json_len as usize)?;
        let mut bin = self.binary.clone();
        bin.copy = copy;
        (bin.hdr_offset, bin.salt) = match copy {
            HeaderCopy::Primary => (0, self.primary_salt),
            HeaderCopy::Secondary => (bin.hdr_size, self.secondary_salt),
        };
        let sealed = bin.seal(&area, hasher)?;
        let mut out = Vec::with_capacity(bin.hdr_size as usize);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&area);
        Ok(out)
    }

    /// Both copies back to back (2 * `hdr_size` bytes, written at offset 0).
    pub fn encode_both(&self, hasher: &dyn HeaderHasher) -> Result<Vec<u8>> {
        let mut out = self.encode_copy(HeaderCopy::Primary, hasher)?;
        out.extend(self.encode_copy(HeaderCopy::Secondary, hasher)?);
        Ok(out)
    }

    /// What the `config.requirements` of this header mean for the caller.
    pub fn requirements(&self) -> Result<Requirements> {
        Ok(Requirements::from_names(
            self.metadata.config()?.mandatory_requirements,
        ))
    }
}

/// `config.requirements.mandatory`, classified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// All mandatory requirements, as stored.
    pub mandatory: Vec<String>,
    /// "online-reencrypt*" entries: a reencryption is in progress (or crashed).
    pub reencryption: Vec<String>,
    /// Everything else ("offline-reencrypt", unknown future features).
    pub unknown: Vec<String>,
}

impl Requirements {
    /// Classify requirement names.
    pub fn from_names(mandatory: Vec<String>) -> Self {
        let (reencryption, unknown) = mandatory
            .iter()
            .cloned()
            .partition(|r| r.starts_with("online-reencrypt"));
        Requirements {
            mandatory,
            reencryption,
            unknown,
        }
    }

    /// True if a reencryption is in progress.
    pub fn reencryption_in_progress(&self) -> bool {
        !self.reencryption.is_empty()
    }

    /// True if the header must not be modified (and the volume not activated) by an
    /// implementation that knows no requirements: anything listed.
    pub fn read_only(&self) -> bool {
        !self.mandatory.is_empty()
    }

    /// A `ReadOnly` error naming the requirements if any are set, for callers about to
    /// write the header.
    pub fn check_writable(&self) -> Result<()> {
        if self.read_only() {
            let what = if self.reencryption_in_progress() && self.unknown.is_empty() {
                "LUKS2 reencryption is in progress"
            } else {
                "unmet LUKS2 requirements detected"
            };
            vmcrypt_error::bail!(
                ReadOnly,
                "{what} ({}); the header is read-only",
                self.mandatory.join(", ")
            );
        }
        Ok(())
    }
}
