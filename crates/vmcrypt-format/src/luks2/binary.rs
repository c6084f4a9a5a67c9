//! The 4096-byte LUKS2 binary header (big-endian) and the header checksum.
//!
//! Layout: magic[6] (`LUKS\xba\xbe` primary, `SKUL\xba\xbe` secondary), version u16,
//! hdr_size u64 (binary header + JSON area), seqid u64, label[48], checksum_alg[32],
//! salt[64], uuid[40], subsystem[48], hdr_offset u64, 184 reserved bytes, csum[64],
//! then zero padding up to 4096. The checksum is `checksum_alg` over the binary header
//! with `csum` zeroed followed by the whole JSON area, stored left-aligned in `csum`.
//!
//! [`BinaryHeader::decode`] applies only the checks cryptsetup makes before it reads the
//! JSON area (magic, version, offset, size range); [`verify_checksum`] checks the
//! checksum; the JSON is judged elsewhere.
use vmcrypt_error::{Error, Result, ensure};

use super::{BIN_HEADER_SIZE, HDR_SIZE_MAX, HDR_SIZE_MIN, HeaderHasher};

/// Magic of the primary header copy.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary header copy.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// Length of the label and subsystem fields.
pub const LABEL_LEN: usize = 48;
/// Length of the checksum-algorithm field.
pub const CHECKSUM_ALG_LEN: usize = 32;
/// Length of the per-copy salt.
pub const SALT_LEN: usize = 64;
/// Length of the UUID field.
pub const UUID_LEN: usize = 40;
/// Length of the checksum field.
pub const CSUM_LEN: usize = 64;

const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_LABEL: usize = 24;
const OFF_CSUM_ALG: usize = 72;
const OFF_SALT: usize = 104;
const OFF_UUID: usize = 168;
const OFF_SUBSYSTEM: usize = 208;
const OFF_HDR_OFFSET: usize = 256;
/// Byte range of the checksum inside the binary header.
pub const CSUM_RANGE: std::ops::Range<usize> = 448..448 + CSUM_LEN;

/// Which of the two header copies a binary header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderCopy {
    /// At offset 0, magic `LUKS\xba\xbe`.
    Primary,
    /// At offset `hdr_size`, magic `SKUL\xba\xbe`.
    Secondary,
}

impl HeaderCopy {
    /// The magic this copy carries.
    pub fn magic(self) -> [u8; 6] {
        match self {
            HeaderCopy::Primary => MAGIC_PRIMARY,
            HeaderCopy::Secondary => MAGIC_SECONDARY,
        }
    }

    /// The other copy.
    pub fn other(self) -> HeaderCopy {
        match self {
            HeaderCopy::Primary => HeaderCopy::Secondary,
            HeaderCopy::Secondary => HeaderCopy::Primary,
        }
    }

    /// "primary" / "secondary", for messages.
    pub fn name(self) -> &'static str {
        match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Secondary => "secondary",
        }
    }
}

/// One decoded binary header. String fields hold the text up to the first NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryHeader {
    pub copy: HeaderCopy,
    pub version: u16,
    /// Binary header plus JSON area, in bytes.
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: String,
    pub checksum_alg: String,
    pub salt: [u8; SALT_LEN],
    pub uuid: String,
    pub subsystem: String,
    /// Where this copy lives on the device (0 or `hdr_size`).
    pub hdr_offset: u64,
    /// The stored checksum field (left-aligned digest, zero-padded).
    pub csum: [u8; CSUM_LEN],
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated text field. Like cryptsetup, the last byte is treated as a
/// terminator even when it is not NUL; the text must be UTF-8.
fn text_field(b: &[u8], off: usize, len: usize, field: &str) -> Result<String> {
    let raw = &b[off..off + len - 1];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end])
        .map(str::to_string)
        .map_err(|_| Error::corrupt(format!("LUKS2 header field {field} is not valid UTF-8")))
}

fn put_text(b: &mut [u8], off: usize, len: usize, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(len - 1);
    b[off..off + n].copy_from_slice(&bytes[..n]);
}

impl BinaryHeader {
    /// Decode the first 4096 bytes of `buf` as the `copy` header found at device offset
    /// `offset`. Checks what cryptsetup checks before the JSON area is read: magic,
    /// version 2, `hdr_offset == offset`, 16 KiB <= hdr_size <= 4 MiB, and for the
    /// secondary copy `offset == hdr_size`. The checksum is not checked here.
    pub fn decode(buf: &[u8], copy: HeaderCopy, offset: u64) -> Result<Self> {
        let what = copy.name();
        ensure!(
            buf.len() >= BIN_HEADER_SIZE,
            Corrupt,
            "{what} LUKS2 header truncated: {} bytes, need {BIN_HEADER_SIZE}",
            buf.len()
        );
        ensure!(
            buf[..6] == copy.magic(),
            Corrupt(BadMagic),
            "no {what} LUKS2 header magic at offset {offset}"
        );
        let version = be16(buf, OFF_VERSION);
        ensure!(
            version == 2,
            Unsupported,
            "{what} header at offset {offset}: unsupported LUKS2 header version {version}"
        );
        let hdr_offset = be64(buf, OFF_HDR_OFFSET);
        ensure!(
            hdr_offset == offset,
            Corrupt,
            "{what} LUKS2 header: hdr_offset {hdr_offset} differs from its position {offset}"
        );
        let hdr_size = be64(buf, OFF_HDR_SIZE);
        ensure!(
            (HDR_SIZE_MIN..=HDR_SIZE_MAX).contains(&hdr_size),
            Corrupt,
            "{what} LUKS2 header: bogus hdr_size {hdr_size} (must be 16 KiB to 4 MiB)"
        );
        ensure!(
            copy == HeaderCopy::Primary || offset == hdr_size,
            Corrupt,
            "secondary LUKS2 header at offset {offset} does not match its hdr_size {hdr_size}"
        );
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&buf[OFF_SALT..OFF_SALT + SALT_LEN]);
        let mut csum = [0u8; CSUM_LEN];
        csum.copy_from_slice(&buf[CSUM_RANGE]);
        Ok(BinaryHeader {
            copy,
            version,
            hdr_size,
            seqid: be64(buf, OFF_SEQID),
            label: text_field(buf, OFF_LABEL, LABEL_LEN, "label")?,
            checksum_alg: text_field(buf, OFF_CSUM_ALG, CHECKSUM_ALG_LEN, "checksum_alg")?,
            salt,
            uuid: text_field(buf, OFF_UUID, UUID_LEN, "uuid")?,
            subsystem: text_field(buf, OFF_SUBSYSTEM, LABEL_LEN, "subsystem")?,
            hdr_offset,
            csum,
        })
    }

    /// Serialise to 4096 bytes with the stored `csum` (use [`BinaryHeader::seal`] to
    /// compute it). Strings longer than their field minus the terminator are cut, and
    /// padding is zero, as cryptsetup writes it.
    pub fn encode(&self) -> [u8; BIN_HEADER_SIZE] {
        let mut b = [0u8; BIN_HEADER_SIZE];
        b[..6].copy_from_slice(&self.copy.magic());
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&self.version.to_be_bytes());
        b[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&self.hdr_size.to_be_bytes());
        b[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&self.seqid.to_be_bytes());
        put_text(&mut b, OFF_LABEL, LABEL_LEN, &self.label);
        put_text(&mut b, OFF_CSUM_ALG, CHECKSUM_ALG_LEN, &self.checksum_alg);
        b[OFF_SALT..OFF_SALT + SALT_LEN].copy_from_slice(&self.salt);
        put_text(&mut b, OFF_UUID, UUID_LEN, &self.uuid);
        put_text(&mut b, OFF_SUBSYSTEM, LABEL_LEN, &self.subsystem);
        b[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&self.hdr_offset.to_be_bytes());
        b[CSUM_RANGE].copy_from_slice(&self.csum);
        b
    }

    /// Length of the JSON area this header announces.
    pub fn json_area_len(&self) -> u64 {
        self.hdr_size - BIN_HEADER_SIZE as u64
    }

    /// Compute the checksum over this header (csum zeroed) and `json_area`, store it in
    /// `csum` and return the complete 4096 bytes.
    pub fn seal(
        &mut self,
        json_area: &[u8],
        hasher: &dyn HeaderHasher,
    ) -> Result<[u8; BIN_HEADER_SIZE]> {
        self.csum = [0; CSUM_LEN];
        let digest = checksum(&self.encode(), json_area, &self.checksum_alg, hasher)?;
        self.csum[..digest.len()].copy_from_slice(&digest);
        Ok(self.encode())
    }
}

/// `alg` over `bin` (4096 bytes; its csum field is treated as zero) and `json_area`.
pub fn checksum(
    bin: &[u8],
    json_area: &[u8],
    alg: &str,
    hasher: &dyn HeaderHasher,
) -> Result<Vec<u8>> {
    ensure!(
        bin.len() >= BIN_HEADER_SIZE,
        Corrupt,
        "LUKS2 binary header truncated"
    );
    let mut zeroed = [0u8; BIN_HEADER_SIZE];
    zeroed.copy_from_slice(&bin[..BIN_HEADER_SIZE]);
    zeroed[CSUM_RANGE].fill(0);
    let digest = hasher.digest(alg, &[&zeroed, json_area]).ok_or_else(|| {
        Error::unsupported(format!(
            "LUKS2 header checksum algorithm '{alg}' is not supported"
        ))
    })?;
    ensure!(
        !digest.is_empty() && digest.len() <= CSUM_LEN,
        Unsupported,
        "LUKS2 header checksum algorithm '{alg}' gives a {}-byte digest (must be 1..=64)",
        digest.len()
    );
    Ok(digest)
}

/// Check the stored checksum of `header` (decoded from `bin`) against `json_area`.
pub fn verify_checksum(
    header: &BinaryHeader,
    bin: &[u8],
    json_area: &[u8],
    hasher: &dyn HeaderHasher,
) -> Result<()> {
    let digest = checksum(bin, json_area, &header.checksum_alg, hasher)?;
    ensure!(
        header.csum[..digest.len()] == digest[..],
        Corrupt,
        "{} LUKS2 header checksum ({}) does not match",
        header.copy.name(),
        header.checksum_alg
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BinaryHeader {
        BinaryHeader {
            copy: HeaderCopy::Secondary,
            version: 2,
            hdr_size: 0x8000,
            seqid: 7,
            label: "vm-disk".into(),
            checksum_alg: "sha256".into(),
            salt: [0x5a; SALT_LEN],
            uuid: "5a9ad1c3-0000-4000-8000-00000000a2d0".into(),
            subsystem: "sub".into(),
            hdr_offset: 0x8000,
            csum: [0; CSUM_LEN],
        }
    }

    fn xor_hasher(_alg: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 32];
        for (i, b) in parts.iter().flat_map(|p| p.iter()).enumerate() {
            out[i % 32] ^= b.rotate_left(i as u32 % 7);
        }
        Some(out)
    }

    #[test]
    fn round_trip_and_layout() {
        let mut h = sample();
        let json = vec![0u8; 0x8000 - BIN_HEADER_SIZE];
        let bytes = h.seal(&json, &xor_hasher).unwrap();
        assert_eq!(&bytes[..8], b"SKUL\xba\xbe\x00\x02");
        assert_eq!(&bytes[72..78], b"sha256");
        assert_eq!(bytes[256..264], 0x8000u64.to_be_bytes());
        let back = BinaryHeader::decode(&bytes, HeaderCopy::Secondary, 0x8000).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.encode(), bytes);
        verify_checksum(&back, &bytes, &json, &xor_hasher).unwrap();
        let mut json2 = json.clone();
        json2[5] = 1;
        assert!(verify_checksum(&back, &bytes, &json2, &xor_hasher).is_err());
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let mut h = sample();
        let bytes = h.seal(&[], &xor_hasher).unwrap();
        let err = |b: &[u8], c, o| BinaryHeader::decode(b, c, o).unwrap_err().to_string();
        assert!(err(&bytes, HeaderCopy::Primary, 0x8000).contains("magic"));
        assert!(err(&bytes, HeaderCopy::Secondary, 0x4000).contains("hdr_offset"));
        assert!(err(&bytes[..100], HeaderCopy::Secondary, 0x8000).contains("truncated"));
        let mut b = bytes;
        b[OFF_LABEL..OFF_LABEL + 2].copy_from_slice(&[0xff, 0xfe]);
        assert!(err(&b, HeaderCopy::Secondary, 0x8000).contains("label"));
        let mut b = bytes;
        b[7] = 3;
        assert!(err(&b, HeaderCopy::Secondary, 0x8000).contains("version 3"));
    }

    #[test]
    fn only_a_missing_magic_is_bad_magic() {
        let bytes = sample().seal(&[], &xor_hasher).unwrap();
        let reason = |b: &[u8], c, o| BinaryHeader::decode(b, c, o).unwrap_err().reason();
        let bad_magic = Some(vmcrypt_error::Reason::BadMagic);
        assert_eq!(reason(&bytes, HeaderCopy::Primary, 0x8000), bad_magic);
        assert_eq!(reason(&bytes, HeaderCopy::Secondary, 0x4000), None);
        assert_eq!(reason(&bytes[..100], HeaderCopy::Secondary, 0x8000), None);
    }
}
