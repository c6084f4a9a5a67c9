//! Hash algorithms named by LUKS headers (`hash-spec`, `hash_alg`) and ESSIV.
//!
//! Every algorithm is backed by a RustCrypto crate of the `digest` 0.10 generation
//! (`sha1`, `sha2`, `ripemd`, `whirlpool`, `sm3`); SHA-1/SHA-2 pick SHA-NI at run time.
//! SM3 is here because QEMU accepts it (`hash-alg`, `ivgen-hash-alg`, so `essiv:sm3`).
//! SHA-256 of many equal-length messages ([`HashAlg::digest_each`]) runs on our own
//! multi-message kernels instead ([`crate::sha256_kernel`]).
//!
//! `wp256`/`wp384`/`wp512` are the Linux kernel's names for Whirlpool truncated to its
//! first 32/48/64 bytes (old cryptsetup images use them for ESSIV, "xts-essiv:wp256");
//! `wp512` computes the same digest as `whirlpool` but keeps its own name.
use crate::sha256_kernel::Sha256Kernel;
use sha2::Digest;
use vmcrypt_error::{Error, Result};

/// A hash algorithm that LUKS/QEMU/cryptsetup can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// Broken for collisions; accepted because QEMU accepts it (hash-alg, ivgen-hash-alg).
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Ripemd160,
    Whirlpool,
    /// Whirlpool truncated to 32 bytes (kernel "wp256").
    Wp256,
    /// Whirlpool truncated to 48 bytes (kernel "wp384").
    Wp384,
    /// Whirlpool under the kernel's name "wp512".
    Wp512,
    /// SM3 (GB/T 32905-2016), 32 bytes.
    Sm3,
}

impl HashAlg {
    /// All supported algorithms.
    pub const ALL: [HashAlg; 12] = [
        HashAlg::Md5,
        HashAlg::Sha1,
        HashAlg::Sha224,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
        HashAlg::Ripemd160,
        HashAlg::Whirlpool,
        HashAlg::Wp256,
        HashAlg::Wp384,
        HashAlg::Wp512,
        HashAlg::Sm3,
    ];

    /// Parse a name as LUKS headers and QEMU spell it ("sha256", "SHA256", "ripemd160",
    /// "whirlpool", "wp256"); an unknown name is an `Unsupported` error naming it.
    pub fn from_name(name: &str) -> Result<Self> {
        HashAlg::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::unsupported(format!("unsupported hash algorithm '{name}'")))
    }

    /// The canonical lowercase name written into headers ("sha256").
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Md5 => "md5",
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Ripemd160 => "ripemd160",
            HashAlg::Whirlpool => "whirlpool",
            HashAlg::Wp256 => "wp256",
            HashAlg::Wp384 => "wp384",
            HashAlg::Wp512 => "wp512",
            HashAlg::Sm3 => "sm3",
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Md5 => 16,
            HashAlg::Sha1 | HashAlg::Ripemd160 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 | HashAlg::Wp256 | HashAlg::Sm3 => 32,
            HashAlg::Sha384 | HashAlg::Wp384 => 48,
            HashAlg::Sha512 | HashAlg::Whirlpool | HashAlg::Wp512 => 64,
        }
    }

    /// Hash the concatenation of `parts`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Md5 => digest_with::<md5::Md5>(parts),
            HashAlg::Sha1 => digest_with::<sha1::Sha1>(parts),
            HashAlg::Sha224 => digest_with::<sha2::Sha224>(parts),
            HashAlg::Sha256 => digest_with::<sha2::Sha256>(parts),
            HashAlg::Sha384 => digest_with::<sha2::Sha384>(parts),
            HashAlg::Sha512 => digest_with::<sha2::Sha512>(parts),
            HashAlg::Ripemd160 => digest_with::<ripemd::Ripemd160>(parts),
            HashAlg::Sm3 => digest_with::<sm3::Sm3>(parts),
            HashAlg::Whirlpool | HashAlg::Wp256 | HashAlg::Wp384 | HashAlg::Wp512 => {
                let mut d = digest_with::<whirlpool::Whirlpool>(parts);
                d.truncate(self.output_len());
                d
            }
        }
    }

    /// The full-length algorithm a truncated one is cut from (Whirlpool for wp256/wp384/
    /// wp512), or `None` if the digest is not truncated.
    pub fn truncated_from(self) -> Option<HashAlg> {
        match self {
            HashAlg::Wp256 | HashAlg::Wp384 => Some(HashAlg::Whirlpool),
            _ => None,
        }
    }

    /// Hash one buffer.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// Refuse a forced [`Self::digest_each`] kernel this process cannot run: for SHA-256,
    /// `VMCRYPT_SHA256_KERNEL` must be unset or name a kernel this CPU runs (else
    /// `digest_each` would quietly use the best one); other algorithms have no kernel
    /// to choose. For callers about to hash, before they write anything.
    pub fn check_each_kernel(self) -> Result<()> {
        if self == HashAlg::Sha256 {
            Sha256Kernel::selected()?;
        }
        Ok(())
    }

    /// Hash each `len`-byte message of `data` (`len` is not 0; the last message may be
    /// shorter and is hashed as it is) into consecutive [`Self::output_len`] slots of
    /// `out` (exactly one per message). SHA-256 runs on
    /// [`crate::sha256_kernel::Sha256Kernel::in_use`] (SHA-NI two messages at a time, or
    /// AVX-512 sixteen at a time, where the CPU has them); other algorithms hash one
    /// message at a time.
    pub fn digest_each(self, len: usize, data: &[u8], out: &mut [u8]) {
        let hl = self.output_len();
        assert!(len > 0);
        assert_eq!(
            out.len(),
            data.len().div_ceil(len) * hl,
            "one output slot per message"
        );
        if self == HashAlg::Sha256 {
            return Sha256Kernel::in_use().digest_each(len, data, out);
        }
        for (m, o) in data.chunks(len).zip(out.chunks_mut(hl)) {
            o.copy_from_slice(&self.digest(m));
        }
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

    /// Every message of every group size (both lanes, a short last group, a shorter
    /// last message) and length hashes as OpenSSL hashes it alone; lengths not a multiple of 64 and other
    /// algorithms take the one-at-a-time path.
    #[test]
    fn digest_each_matches_openssl() {
        let data: Vec<u8> = (0..7 * 4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (h, md) in [
            (HashAlg::Sha256, openssl::hash::MessageDigest::sha256()),
            (HashAlg::Sha1, openssl::hash::MessageDigest::sha1()),
        ] {
            for len in [64, 128, 100, 512, 4096] {
                for (count, short) in [(1, 0), (2, 0), (3, 0), (7, 0), (2, 1), (3, 40)] {
                    // `short` bytes less: the last message is shorter, hashed as it is.
                    let msgs = &data[..len * count - short];
                    let mut out = vec![0u8; count * h.output_len()];
                    h.digest_each(len, msgs, &mut out);
                    for (m, o) in msgs.chunks(len).zip(out.chunks(h.output_len())) {
                        let want = openssl::hash::hash(md, m).unwrap();
                        assert_eq!(o, &want[..], "{h} of {count} x {len} bytes");
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_name_is_unsupported() {
        let e = HashAlg::from_name("md4").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.message(), "unsupported hash algorithm 'md4'");
    }

    #[test]
    fn whirlpool_truncations() {
        let full = HashAlg::Whirlpool.digest(b"abc");
        assert_eq!(HashAlg::Wp512.digest(b"abc"), full);
        assert_eq!(HashAlg::Wp384.digest(b"abc"), full[..48]);
        assert_eq!(HashAlg::Wp256.digest(b"abc"), full[..32]);
        assert_eq!(HashAlg::Wp256.truncated_from(), Some(HashAlg::Whirlpool));
        assert_eq!(HashAlg::Wp512.truncated_from(), None);
    }

    #[test]
    fn parts_equal_concatenation() {
        for h in HashAlg::ALL {
            assert_eq!(h.digest_parts(&[b"ab", b"", b"c"]), h.digest(b"abc"));
        }
    }
}
