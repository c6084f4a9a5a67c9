//! The LUKS1 on-disk header (592 bytes, big-endian) and its validation.
//!
//! [`Luks1Header::decode`] turns bytes into a typed header without judging it;
//! [`Luks1Header::validate`] applies the checks cryptsetup applies before it trusts a
//! header (key-slot states, stripes, overlap with the header, each other and the payload,
//! caps on iteration counts) and names the offending field. [`Layout`] computes where
//! key material and payload go for a new volume, the way cryptsetup or QEMU lay them out.
use vmcrypt_error::{Error, ErrorKind, Result, bail, ensure};

/// `LUKS\xba\xbe`.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Size of the binary header.
pub const HEADER_SIZE: usize = 592;
/// Number of key slots.
pub const NUM_KEYSLOTS: usize = 8;
/// The only AF stripe count LUKS1 implementations accept.
pub const STRIPES: u32 = 4000;
/// LUKS1 sectors are always 512 bytes.
pub const SECTOR_SIZE: u64 = 512;
/// `active` value of an enabled key slot.
pub const KEY_ENABLED: u32 = 0x00AC_71F3;
/// `active` value of a disabled key slot.
pub const KEY_DISABLED: u32 = 0x0000_DEAD;
/// Salt length of key slots and of the master-key digest.
pub const SALT_LEN: usize = 32;
/// Length of the master-key digest (PBKDF2 output truncated to 20 bytes).
pub const DIGEST_LEN: usize = 20;
/// Key material starts at a multiple of this many sectors (4 KiB).
pub const KEYSLOT_ALIGN_SECTORS: u64 = 8;

const OFF_VERSION: usize = 6;
const OFF_CIPHER_NAME: usize = 8;
const OFF_CIPHER_MODE: usize = 40;
const OFF_HASH_SPEC: usize = 72;
const OFF_PAYLOAD: usize = 104;
const OFF_KEY_BYTES: usize = 108;
const OFF_MK_DIGEST: usize = 112;
const OFF_MK_SALT: usize = 132;
const OFF_MK_ITER: usize = 164;
const OFF_UUID: usize = 168;
const OFF_KEYSLOTS: usize = 208;
const KEYSLOT_SIZE: usize = 48;
const NAME_LEN: usize = 32;
const UUID_LEN: usize = 40;

/// Limits that protect an unlock from a hostile header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest PBKDF2 iteration count accepted in a key slot or the master-key digest.
    /// The default (100 million, about 10-40 s of PBKDF2 on a fast core) is far above what
    /// cryptsetup calibrates for a 2 s unlock but stops a header from hanging us for hours.
    pub max_iterations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_iterations: 100_000_000,
        }
    }
}

/// One key slot as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyslot {
    /// [`KEY_ENABLED`], [`KEY_DISABLED`], or (in a damaged header) anything else.
    pub active: u32,
    pub iterations: u32,
    pub salt: [u8; SALT_LEN],
    /// Start of the key material, in 512-byte sectors from the start of the header.
    pub key_material_offset: u32,
    pub stripes: u32,
}

impl Keyslot {
    /// A disabled slot with the given key-material position (salt zeroed).
    pub fn disabled(key_material_offset: u32) -> Self {
        Keyslot {
            active: KEY_DISABLED,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_material_offset,
            stripes: STRIPES,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.active == KEY_ENABLED
    }

    /// Byte offset of the key material.
    pub fn material_offset_bytes(&self) -> u64 {
        u64::from(self.key_material_offset) * SECTOR_SIZE
    }
}

/// A decoded LUKS1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Header {
    pub version: u16,
    pub cipher_name: String,
    pub cipher_mode: String,
    pub hash_spec: String,
    /// Payload start in 512-byte sectors (0 for QEMU's detached headers).
    pub payload_offset: u32,
    pub key_bytes: u32,
    pub mk_digest: [u8; DIGEST_LEN],
    pub mk_digest_salt: [u8; SALT_LEN],
    pub mk_digest_iter: u32,
    pub uuid: String,
    pub keyslots: [Keyslot; NUM_KEYSLOTS],
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// A NUL-terminated string field; must be terminated and valid UTF-8.
fn cstr(b: &[u8], off: usize, len: usize, field: &str) -> Result<String> {
    let raw = &b[off..off + len];
    let end = raw.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::corrupt(format!("LUKS1 header field {field} is not NUL-terminated"))
    })?;
    let s = std::str::from_utf8(&raw[..end])
        .map_err(|_| Error::corrupt(format!("LUKS1 header field {field} is not valid text")))?;
    Ok(s.to_string())
}

fn put_cstr(b: &mut [u8], off: usize, len: usize, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(len - 1);
    b[off..off + n].copy_from_slice(&bytes[..n]);
}

/// Byte range of key slot `slot`'s 48-byte record inside the binary header.
pub fn keyslot_record_range(slot: usize) -> (usize, usize) {
    let start = OFF_KEYSLOTS + slot * KEYSLOT_SIZE;
    (start, start + KEYSLOT_SIZE)
}

/// True if `buf` starts with the LUKS magic (either version).
pub fn has_magic(buf: &[u8]) -> bool {
    buf.len() >= MAGIC.len() && buf[..MAGIC.len()] == MAGIC
}

/// The version field of a buffer that starts with the LUKS magic.
pub fn version_of(buf: &[u8]) -> Option<u16> {
    (has_magic(buf) && buf.len() >= 8).then(|| u16::from_be_bytes([buf[6], buf[7]]))
}

impl Luks1Header {
    /// Parse the first [`HEADER_SIZE`] bytes of `buf`. Checks magic, version and string
    /// fields only; call [`Luks1Header::validate`] before trusting the result.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        ensure!(
            buf.len() >= HEADER_SIZE,
            Corrupt,
            "LUKS1 header truncated: {} bytes, need {HEADER_SIZE}",
            buf.len()
        );
        ensure!(
            has_magic(buf),
            Corrupt,
            "not a LUKS device (no LUKS magic at offset 0)"
        );
        let version = u16::from_be_bytes([buf[OFF_VERSION], buf[OFF_VERSION + 1]]);
        if version == 2 {
            bail!(
                Unsupported,
                "LUKS version 2 header; this operation supports LUKS1 only"
            );
        }
        ensure!(
            version == 1,
            Unsupported,
            "unsupported LUKS version {version}"
        );
        let keyslots = std::array::from_fn(|i| {
            let o = OFF_KEYSLOTS + i * KEYSLOT_SIZE;
            let mut salt = [0u8; SALT_LEN];
            salt.copy_from_slice(&buf[o + 8..o + 8 + SALT_LEN]);
            Keyslot {
                active: be32(buf, o),
                iterations: be32(buf, o + 4),
                salt,
                key_material_offset: be32(buf, o + 40),
                stripes: be32(buf, o + 44),
            }
        });
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(&buf[OFF_MK_DIGEST..OFF_MK_DIGEST + DIGEST_LEN]);
        let mut mk_digest_salt = [0u8; SALT_LEN];
        mk_digest_salt.copy_from_slice(&buf[OFF_MK_SALT..OFF_MK_SALT + SALT_LEN]);
        Ok(Luks1Header {
            version,
            cipher_name: cstr(buf, OFF_CIPHER_NAME, NAME_LEN, "cipher_name")?,
            cipher_mode: cstr(buf, OFF_CIPHER_MODE, NAME_LEN, "cipher_mode")?,
            hash_spec: cstr(buf, OFF_HASH_SPEC, NAME_LEN, "hash_spec")?,
            payload_offset: be32(buf, OFF_PAYLOAD),
            key_bytes: be32(buf, OFF_KEY_BYTES),
            mk_digest,
            mk_digest_salt,
            mk_digest_iter: be32(buf, OFF_MK_ITER),
            uuid: cstr(buf, OFF_UUID, UUID_LEN, "uuid")?,
            keyslots,
        })
    }

    /// Serialise to the 592-byte on-disk form.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..6].copy_from_slice(&MAGIC);
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&self.version.to_be_bytes());
        put_cstr(&mut b, OFF_CIPHER_NAME, NAME_LEN, &self.cipher_name);
        put_cstr(&mut b, OFF_CIPHER_MODE, NAME_LEN, &self.cipher_mode);
        put_cstr(&mut b, OFF_HASH_SPEC, NAME_LEN, &self.hash_spec);
        put32(&mut b, OFF_PAYLOAD, self.payload_offset);
        put32(&mut b, OFF_KEY_BYTES, self.key_bytes);
        b[OFF_MK_DIGEST..OFF_MK_DIGEST + DIGEST_LEN].copy_from_slice(&self.mk_digest);
        b[OFF_MK_SALT..OFF_MK_SALT + SALT_LEN].copy_from_slice(&self.mk_digest_salt);
        put32(&mut b, OFF_MK_ITER, self.mk_digest_iter);
        put_cstr(&mut b, OFF_UUID, UUID_LEN, &self.uuid);
        for (i, ks) in self.keyslots.iter().enumerate() {
            let o = OFF_KEYSLOTS + i * KEYSLOT_SIZE;
            put32(&mut b, o, ks.active);
            put32(&mut b, o + 4, ks.iterations);
            b[o + 8..o + 8 + SALT_LEN].copy_from_slice(&ks.salt);
            put32(&mut b, o + 40, ks.key_material_offset);
            put32(&mut b, o + 44, ks.stripes);
        }
        b
    }

    /// Bytes of key material per slot: key_bytes * stripes, rounded up to a sector.
    pub fn material_len(&self, slot: usize) -> u64 {
        let raw = u64::from(self.key_bytes) * u64::from(self.keyslots[slot].stripes);
        raw.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
    }

    /// Payload start in bytes.
    pub fn payload_offset_bytes(&self) -> u64 {
        u64::from(self.payload_offset) * SECTOR_SIZE
    }

    /// End of the header area in bytes: the furthest key-material end (or the binary
    /// header itself). This is how big a detached header file must be. Saturates on a
    /// header that was not validated (found by the `luks1_header` fuzz target).
    pub fn header_area_end(&self) -> u64 {
        (0..NUM_KEYSLOTS)
            .map(|i| {
                let start = self.keyslots[i].material_offset_bytes();
                start.saturating_add(self.material_len(i))
            })
            .chain(std::iter::once(HEADER_SIZE as u64))
            .max()
            .unwrap_or(HEADER_SIZE as u64)
    }

    /// Check the header as cryptsetup does before using it.
    ///
    /// `header_device_size` is the size of the file holding the header (so a truncated
    /// device is caught); `detached` says the payload lives in another file, in which case
    /// the payload is not checked against the key material. As in cryptsetup, a zero
    /// payload offset (a detached header's) is legal either way: the header and its key
    /// slots are usable alone; whoever opens the data refuses a payload at offset 0 of
    /// the header's own device.
    pub fn validate(&self, header_device_size: u64, detached: bool, limits: &Limits) -> Result<()> {
        ensure!(
            self.key_bytes > 0 && self.key_bytes <= 256,
            Corrupt,
            "LUKS1 header: key_bytes {} is not a valid key size",
            self.key_bytes
        );
        ensure!(
            self.mk_digest_iter > 0,
            Corrupt,
            "LUKS1 header: master-key digest iteration count is 0"
        );
        ensure!(
            self.mk_digest_iter <= limits.max_iterations,
            LimitExceeded,
            "LUKS1 header: master-key digest iteration count {} exceeds the limit {}",
            self.mk_digest_iter,
            limits.max_iterations
        );
        for i in 0..NUM_KEYSLOTS {
            self.validate_slot(i, detached, limits)?;
        }
        self.check_overlaps()?;
        let end = self.header_area_end();
        ensure!(
            header_device_size >= end,
            Corrupt,
            "device is too small: {header_device_size} bytes, LUKS1 requires at least {end} bytes"
        );
        Ok(())
    }

    fn validate_slot(&self, i: usize, detached: bool, limits: &Limits) -> Result<()> {
        let ks = &self.keyslots[i];
        let bad = |what: String| Error::corrupt(format!("LUKS keyslot {i} is invalid: {what}"));
        match ks.active {
            KEY_ENABLED => {
                if ks.iterations == 0 {
                    return Err(bad("enabled with 0 iterations".into()));
                }
                if ks.iterations > limits.max_iterations {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "LUKS keyslot {i}: iteration count {} exceeds the limit {}",
                            ks.iterations, limits.max_iterations
                        ),
                    ));
                }
            }
            KEY_DISABLED => {}
            other => {
                return Err(bad(format!(
                    "state 0x{other:08x} is neither enabled nor disabled"
                )));
            }
        }
        if ks.stripes != STRIPES {
            return Err(bad(format!(
                "AF stripes {} (must be {STRIPES})",
                ks.stripes
            )));
        }
        let start = ks.material_offset_bytes();
        if start < HEADER_SIZE as u64 {
            return Err(bad(format!(
                "key material offset {} (sectors) lies inside the LUKS header",
                ks.key_material_offset
            )));
        }
        let end = start + self.material_len(i);
        let payload = self.payload_offset_bytes();
        if !detached && payload != 0 && end > payload {
            return Err(bad(format!(
                "key material [{start}, {end}) overlaps the payload at {payload}"
            )));
        }
        Ok(())
    }

    fn check_overlaps(&self) -> Result<()> {
        for i in 0..NUM_KEYSLOTS {
            for j in (i + 1)..NUM_KEYSLOTS {
                let (a, b) = (&self.keyslots[i], &self.keyslots[j]);
                let (a0, b0) = (a.material_offset_bytes(), b.material_offset_bytes());
                let (a1, b1) = (a0 + self.material_len(i), b0 + self.material_len(j));
                if a0 < b1 && b0 < a1 {
                    bail!(
                        Corrupt,
                        "LUKS keyslot {j} is invalid: its key material overlaps keyslot {i}"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Where a new volume's key material and payload go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cryptsetup's: key material 4 KiB aligned, payload aligned to `align_sectors`
    /// (2048 = 1 MiB by default).
    Cryptsetup { align_sectors: u64 },
    /// QEMU's: payload packed right after the last key slot (4 KiB aligned).
    Qemu,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::Cryptsetup {
            align_sectors: 2048,
        }
    }
}

/// Key material offsets (sectors) of the eight slots and the payload offset (sectors) for
/// a key of `key_bytes`. With `detached`, the payload offset is 0 (data file starts with
/// ciphertext) unless the caller overrides it.
pub fn plan_layout(key_bytes: u32, layout: Layout, detached: bool) -> ([u32; NUM_KEYSLOTS], u32) {
    let material = (u64::from(key_bytes) * u64::from(STRIPES)).div_ceil(SECTOR_SIZE);
    let stride = material.div_ceil(KEYSLOT_ALIGN_SECTORS) * KEYSLOT_ALIGN_SECTORS;
    let first = KEYSLOT_ALIGN_SECTORS;
    let offsets = std::array::from_fn(|i| (first + i as u64 * stride) as u32);
    let end = first + 7 * stride + material;
    let payload = if detached {
        0
    } else {
        let align = match layout {
            Layout::Cryptsetup { align_sectors } => align_sectors.max(1),
            Layout::Qemu => KEYSLOT_ALIGN_SECTORS,
        };
        end.div_ceil(align) * align
    };
    (offsets, payload as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Luks1Header {
        let (offs, payload) = plan_layout(64, Layout::default(), false);
        Luks1Header {
            version: 1,
            cipher_name: "aes".into(),
            cipher_mode: "xts-plain64".into(),
            hash_spec: "sha256".into(),
            payload_offset: payload,
            key_bytes: 64,
            mk_digest: [7; DIGEST_LEN],
            mk_digest_salt: [9; SALT_LEN],
            mk_digest_iter: 1000,
            uuid: "43414df1-b289-4300-b990-6e1dbedd6b5d".into(),
            keyslots: std::array::from_fn(|i| Keyslot::disabled(offs[i])),
        }
    }

    #[test]
    fn layouts_match_cryptsetup_and_qemu() {
        // cryptsetup, 512-bit key: 8, 512, 1016, ... payload 4096 (1 MiB aligned).
        let (o, p) = plan_layout(64, Layout::default(), false);
        assert_eq!(o, [8, 512, 1016, 1520, 2024, 2528, 3032, 3536]);
        assert_eq!(p, 4096);
        // QEMU, 512-bit key: payload 4040 (vector luks1-aes256-xts-plain64-sha256.luks).
        assert_eq!(plan_layout(64, Layout::Qemu, false).1, 4040);
        // QEMU, 128-bit key: slots 128 sectors apart, payload 1032.
        let (o, p) = plan_layout(16, Layout::Qemu, false);
        assert_eq!((o[1], o[7], p), (136, 904, 1032));
        assert_eq!(plan_layout(64, Layout::Qemu, true).1, 0);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut h = sample();
        h.keyslots[3].active = KEY_ENABLED;
        h.keyslots[3].iterations = 12345;
        h.keyslots[3].salt = [0xab; SALT_LEN];
        let bytes = h.encode();
        assert_eq!(&bytes[..6], b"LUKS\xba\xbe");
        let back = Luks1Header::decode(&bytes).unwrap();
        assert_eq!(back, h);
        back.validate(4096 * 512, false, &Limits::default())
            .unwrap();
    }

    #[test]
    fn rejects_what_cryptsetup_rejects() {
        let lim = Limits::default();
        let size = 4096 * 512;
        let mut h = sample();
        h.keyslots[5].stripes = 44944;
        let e = h.validate(size, false, &lim).unwrap_err();
        assert!(e.to_string().contains("keyslot 5 is invalid"), "{e}");

        let mut h = sample();
        h.keyslots[2].key_material_offset = 1;
        let e = h.validate(size, false, &lim).unwrap_err();
        assert!(e.to_string().contains("keyslot 2 is invalid"), "{e}");

        let mut h = sample();
        h.keyslots[3].key_material_offset = 4000;
        let e = h.validate(size, false, &lim).unwrap_err();
        assert!(e.to_string().contains("overlaps the payload"), "{e}");

        let mut h = sample();
        h.keyslots[2].key_material_offset = h.keyslots[1].key_material_offset;
        let e = h.validate(size, false, &lim).unwrap_err();
        assert!(e.to_string().contains("overlaps keyslot 1"), "{e}");

        let e = sample().validate(1_049_088, false, &lim).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");

        let mut h = sample();
        h.keyslots[0].active = KEY_ENABLED;
        h.keyslots[0].iterations = u32::MAX;
        let e = h.validate(size, false, &lim).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);

        let mut h = sample();
        h.keyslots[0].active = 0x1234;
        assert!(h.validate(size, false, &lim).is_err());
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(Luks1Header::decode(&[0u8; 100]).is_err());
        assert!(Luks1Header::decode(&[0u8; HEADER_SIZE]).is_err());
        let mut b = sample().encode();
        b[7] = 2;
        assert_eq!(
            Luks1Header::decode(&b).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let mut b = sample().encode();
        b[OFF_CIPHER_NAME..OFF_CIPHER_NAME + NAME_LEN].fill(b'a');
        assert!(
            Luks1Header::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("cipher_name")
        );
    }
}
