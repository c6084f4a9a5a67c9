//! Hash algorithms named by LUKS headers (`hash-spec`, `hash_alg`) and ESSIV.
use vmcrypt_error::Result;

/// A hash algorithm that LUKS/QEMU/cryptsetup can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Ripemd160,
    Whirlpool,
}

impl HashAlg {
    /// All supported algorithms.
    pub const ALL: [HashAlg; 7] = [
        HashAlg::Sha1,
        HashAlg::Sha224,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
        HashAlg::Ripemd160,
        HashAlg::Whirlpool,
    ];

    /// Parse a name as LUKS headers and QEMU spell it ("sha256", "SHA256", "ripemd160",
    /// "whirlpool"); an unknown name is an `Unsupported` error naming it.
    pub fn from_name(name: &str) -> Result<Self> {
        todo!("{name}")
    }

    /// The canonical lowercase name written into headers ("sha256").
    pub fn name(self) -> &'static str {
        todo!("{self:?}")
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        todo!("{self:?}")
    }

    /// Hash the concatenation of `parts`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        todo!("{self:?} {}", parts.len())
    }

    /// Hash one buffer.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }
}
