//! Test-only helpers shared by the block-cipher tests: hex parsing, minimal XTS/CBC
//! sector loops over a [`BlockCipher`] (the real modes live in `sector`), the QEMU
//! vector files, and a small deterministic byte generator.
use super::BlockCipher;
use sha2::{Digest, Sha256};

/// Decode a hex string (whitespace ignored).
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("valid hex in test vector")
}

/// Lowercase hex of the sha256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The test vectors folder: `$VMCRYPT_VECTORS`, else `shared/vectors` in the `shared/`
/// folder beside the checkout (`../shared` from the workspace root).
fn vectors_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("VMCRYPT_VECTORS") {
        return dir.into();
    }
    // The manifest dir is <checkout>/crates/vmcrypt-crypto; its third ancestor holds both.
    let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(3)
        .expect("the checkout has a parent directory");
    beside.join("shared/vectors")
}

/// Read `len` bytes at `offset` of a file in the QEMU vectors (`qemu/` in
/// [`vectors_dir`]); fails the test, naming the path, if the file is missing.
pub(crate) fn qemu_payload(name: &str, offset: usize, len: usize) -> Vec<u8> {
    let path = vectors_dir().join("qemu").join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    data[offset..offset + len].to_vec()
}

/// Multiply an XTS tweak by x in GF(2^128) (IEEE 1619, little-endian).
fn xts_double(t: &mut [u8; 16]) {
    let carry = t[15] >> 7;
    for i in (1..16).rev() {
        t[i] = (t[i] << 1) | (t[i - 1] >> 7);
    }
    t[0] = (t[0] << 1) ^ (0x87 * carry);
}

/// XTS-plain64 decryption of whole 512-byte sectors, sector numbers from 0.
pub(crate) fn xts_decrypt_sectors(k1: &dyn BlockCipher, k2: &dyn BlockCipher, data: &mut [u8]) {
    for (s, sector) in data.chunks_exact_mut(512).enumerate() {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&(s as u64).to_le_bytes());
        k2.encrypt_blocks(&mut t);
        for block in sector.chunks_exact_mut(16) {
            block.iter_mut().zip(&t).for_each(|(b, x)| *b ^= x);
            k1.decrypt_blocks(block);
            block.iter_mut().zip(&t).for_each(|(b, x)| *b ^= x);
            xts_double(&mut t);
        }
    }
}

/// CBC decryption of whole 512-byte sectors with the "plain" IV (le32 sector number).
pub(crate) fn cbc_plain_decrypt_sectors(c: &dyn BlockCipher, data: &mut [u8]) {
    for (s, sector) in data.chunks_exact_mut(512).enumerate() {
        let mut prev = [0u8; 16];
        prev[..4].copy_from_slice(&(s as u32).to_le_bytes());
        for block in sector.chunks_exact_mut(16) {
            let mut ct = [0u8; 16];
            ct.copy_from_slice(block);
            c.decrypt_blocks(block);
            block.iter_mut().zip(&prev).for_each(|(b, x)| *b ^= x);
            prev = ct;
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for round-trip tests.
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}
