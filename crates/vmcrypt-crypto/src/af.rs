//! The LUKS anti-forensic information splitter (AF-split / AF-merge).
//!
//! Split spreads a key over `stripes` blocks so that destroying any part destroys the
//! key; diffusion uses H(be32(i) || block_i) per digest-sized chunk as LUKS1 defines it.
//!
//! With blocks s_0 .. s_{n-1} of the key length: s_0 .. s_{n-2} are random,
//! d_0 = 0, d_{k+1} = diffuse(d_k XOR s_k), and s_{n-1} = d_{n-1} XOR key. Merging
//! recomputes d_{n-1} from the first n-1 blocks and XORs it with the last one.
use crate::{HashAlg, SecretBytes};
use vmcrypt_error::{Error, ErrorKind, Result, bail};
use zeroize::Zeroizing;

/// Split `key` into `key.len() * stripes` bytes of key material (random filler from the OS).
pub fn split(hash: HashAlg, key: &[u8], stripes: u32) -> Result<SecretBytes> {
    let total = material_len(key.len(), stripes, ErrorKind::Usage)?;
    let mut material = SecretBytes::random(total)?;
    let (filler, last) = material.as_mut().split_at_mut(total - key.len());
    let d = fold(hash, filler, key.len());
    for ((out, k), dk) in last.iter_mut().zip(key).zip(d.iter()) {
        *out = k ^ dk;
    }
    Ok(material)
}

/// Recover a `key_len`-byte key from `material` (at least `key_len * stripes` bytes).
///
/// Errors (`Corrupt`) if `key_len` or `stripes` is zero or `material` is too short,
/// since those values come from an on-disk header.
pub fn merge(hash: HashAlg, material: &[u8], key_len: usize, stripes: u32) -> Result<SecretBytes> {
    let total = material_len(key_len, stripes, ErrorKind::Corrupt)?;
    if material.len() < total {
        bail!(
            Corrupt,
            "anti-forensic key material is {} bytes, but {key_len} bytes x {stripes} stripes \
             need {total}",
            material.len()
        );
    }
    let (filler, rest) = material[..total].split_at(total - key_len);
    let d = fold(hash, filler, key_len);
    let key = rest.iter().zip(d.iter()).map(|(m, dk)| m ^ dk).collect();
    Ok(SecretBytes::new(key))
}

/// `key_len * stripes`, validated; a zero size is an error of `kind`.
fn material_len(key_len: usize, stripes: u32, kind: ErrorKind) -> Result<usize> {
    if key_len == 0 || stripes == 0 {
        return Err(Error::new(
            kind,
            format!("anti-forensic split of a {key_len}-byte key into {stripes} stripes"),
        ));
    }
    match key_len.checked_mul(stripes as usize) {
        Some(n) if n <= isize::MAX as usize => Ok(n),
        _ => bail!(
            LimitExceeded,
            "{key_len} bytes x {stripes} stripes is too large"
        ),
    }
}

/// d after XOR-and-diffuse over every `block_len`-byte block of `blocks`.
fn fold(hash: HashAlg, blocks: &[u8], block_len: usize) -> Zeroizing<Vec<u8>> {
    let mut d = Zeroizing::new(vec![0u8; block_len]);
    for block in blocks.chunks_exact(block_len) {
        for (x, s) in d.iter_mut().zip(block) {
            *x ^= s;
        }
        diffuse(hash, &mut d);
    }
    d
}

/// Replace each digest-sized chunk i of `block` with H(be32(i) || chunk_i), truncated to
/// the chunk's length (the last chunk may be shorter than the digest).
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    for (i, chunk) in block.chunks_mut(hash.output_len()).enumerate() {
        let index = (i as u32).to_be_bytes();
        let h = Zeroizing::new(hash.digest_parts(&[&index, chunk]));
        let n = chunk.len();
        chunk.copy_from_slice(&h[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stripe_is_the_key_itself() {
        // With n = 1 there is no filler: d_0 = 0, so s_0 = key.
        let key = [7u8; 32];
        let m = split(HashAlg::Sha256, &key, 1).unwrap();
        assert_eq!(m.as_bytes(), &key);
    }

    #[test]
    fn two_stripes_match_hand_computation() {
        // s_1 = diffuse(s_0) XOR key, with a 20-byte key and sha256 (one short chunk).
        let key: Vec<u8> = (0..20).collect();
        let m = split(HashAlg::Sha256, &key, 2).unwrap();
        let s0 = &m.as_bytes()[..20];
        let h = HashAlg::Sha256.digest_parts(&[&[0, 0, 0, 0], s0]);
        let expect: Vec<u8> = key.iter().zip(&h[..20]).map(|(k, d)| k ^ d).collect();
        assert_eq!(&m.as_bytes()[20..], &expect[..]);
        assert_eq!(
            merge(HashAlg::Sha256, m.as_bytes(), 20, 2)
                .unwrap()
                .as_bytes(),
            &key[..]
        );
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let e = merge(HashAlg::Sha1, &[0u8; 10], 16, 4000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(
            merge(HashAlg::Sha1, &[], 16, 0).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            split(HashAlg::Sha1, &[], 10).unwrap_err().kind(),
            ErrorKind::Usage
        );
    }
}
