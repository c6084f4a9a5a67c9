//! Hash algorithms named by LUKS headers (`hash-spec`, `hash_alg`) and ESSIV.
//!
//! Every algorithm is backed by a RustCrypto crate of the `digest` 0.10 generation
//! (`sha1`, `sha2`, `ripemd`, `whirlpool`); SHA-1/SHA-2 pick SHA-NI at run time.
use sha2::Digest;
use vmcrypt_error::{Error, Result};

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
        HashAlg::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::unsupported(format!("unsupported hash algorithm '{name}'")))
    }

    /// The canonical lowercase name written into headers ("sha256").
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Ripemd160 => "ripemd160",
            HashAlg::Whirlpool => "whirlpool",
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 | HashAlg::Ripemd160 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 | HashAlg::Whirlpool => 64,
        }
    }

    /// Hash the concatenation of `parts`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => digest_with::<sha1::Sha1>(parts),
            HashAlg::Sha224 => digest_with::<sha2::Sha224>(parts),
            HashAlg::Sha256 => digest_with::<sha2::Sha256>(parts),
            HashAlg::Sha384 => digest_with::<sha2::Sha384>(parts),
            HashAlg::Sha512 => digest_with::<sha2::Sha512>(parts),
            HashAlg::Ripemd160 => digest_with::<ripemd::Ripemd160>(parts),
            HashAlg::Whirlpool => digest_with::<whirlpool::Whirlpool>(parts),
        }
    }

    /// Hash one buffer.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }
}

impl std::fmt::Display for HashAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn digest_with<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = D::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmcrypt_error::ErrorKind;

    #[test]
    fn names_round_trip_in_any_case() {
        for h in HashAlg::ALL {
            assert_eq!(HashAlg::from_name(h.name()).unwrap(), h);
            assert_eq!(HashAlg::from_name(&h.name().to_uppercase()).unwrap(), h);
            assert_eq!(h.digest(b"abc").len(), h.output_len());
        }
    }

    #[test]
    fn unknown_name_is_unsupported() {
        let e = HashAlg::from_name("md5").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.message(), "unsupported hash algorithm 'md5'");
    }

    #[test]
    fn parts_equal_concatenation() {
        for h in HashAlg::ALL {
            assert_eq!(h.digest_parts(&[b"ab", b"", b"c"]), h.digest(b"abc"));
        }
    }
}
