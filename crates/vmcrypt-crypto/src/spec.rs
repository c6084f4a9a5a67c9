//! Cipher specifications: what a LUKS header or a QEMU option names, parsed and validated.
//!
//! LUKS1 stores `cipher_name` ("aes") + `cipher_mode` ("xts-plain64", "cbc-essiv:sha256")
//! + key bytes; LUKS2 stores one string ("aes-xts-plain64"); QEMU's options split it into
//! cipher-alg ("aes-256"), cipher-mode ("xts"), ivgen-alg ("plain64"), ivgen-hash-alg.
use crate::HashAlg;
use vmcrypt_error::Result;

/// Block cipher family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherFamily {
    Aes,
    Twofish,
    Serpent,
    Cast5,
}

/// Block cipher mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherMode {
    Xts,
    Cbc,
    Ecb,
}

/// dm-crypt IV generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IvGen {
    /// le32 of the sector number (truncated), zero padded.
    Plain,
    /// le64 of the sector number, zero padded.
    Plain64,
    /// be64 of the sector number, right-aligned in the IV.
    Plain64Be,
    /// Encrypt le64(sector) with the family cipher keyed by H(volume key).
    Essiv(HashAlg),
    /// Big-endian narrow block count, starting at 1.
    Benbi,
    /// All-zero IV.
    Null,
}

/// A complete sector-cipher description plus the total key length in bytes
/// (for XTS: both halves, e.g. 64 for AES-256-XTS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSpec {
    pub family: CipherFamily,
    pub mode: CipherMode,
    pub ivgen: IvGen,
    pub key_bytes: usize,
}

impl CipherSpec {
    /// From LUKS1 fields: `("aes", "xts-plain64", 64)`, `("aes", "cbc-essiv:sha256", 32)`,
    /// `("cast5", "cbc-plain64", 16)`, `("aes", "ecb", 32)` (ECB has no IV part).
    /// Errors name the unsupported or inconsistent part (e.g. key size 24 for cast5).
    pub fn from_luks(cipher_name: &str, cipher_mode: &str, key_bytes: usize) -> Result<Self> {
        todo!("{cipher_name} {cipher_mode} {key_bytes}")
    }

    /// From a LUKS2 `encryption` string: "aes-xts-plain64", "aes-cbc-essiv:sha256".
    pub fn from_luks2(encryption: &str, key_bytes: usize) -> Result<Self> {
        todo!("{encryption} {key_bytes}")
    }

    /// From QEMU's option names: cipher-alg "aes-256", cipher-mode "xts",
    /// ivgen-alg "plain64", ivgen-hash-alg "sha256" (only for essiv).
    pub fn from_qemu(
        cipher_alg: &str,
        cipher_mode: &str,
        ivgen_alg: &str,
        ivgen_hash: Option<&str>,
    ) -> Result<Self> {
        todo!("{cipher_alg} {cipher_mode} {ivgen_alg} {ivgen_hash:?}")
    }

    /// LUKS1 `cipher_name` ("aes").
    pub fn luks_cipher_name(&self) -> &'static str {
        todo!("{self:?}")
    }

    /// LUKS1 `cipher_mode` ("xts-plain64", "cbc-essiv:sha256", "ecb").
    pub fn luks_cipher_mode(&self) -> String {
        todo!("{self:?}")
    }

    /// QEMU's cipher-alg name: family + bits of ONE cipher key ("aes-256" for a 64-byte
    /// XTS key, "cast5-128").
    pub fn qemu_cipher_alg(&self) -> String {
        todo!("{self:?}")
    }

    /// QEMU's cipher-mode name ("xts", "cbc", "ecb").
    pub fn qemu_cipher_mode(&self) -> &'static str {
        todo!("{self:?}")
    }

    /// QEMU's ivgen-alg name ("plain64", "essiv", ...); `None` for ECB.
    pub fn qemu_ivgen_alg(&self) -> Option<&'static str> {
        todo!("{self:?}")
    }

    /// The cipher block size in bytes (16, or 8 for cast5).
    pub fn block_size(&self) -> usize {
        todo!("{self:?}")
    }
}
