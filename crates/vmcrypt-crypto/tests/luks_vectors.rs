//! Known answers from real QEMU-made LUKS1 images (shared/vectors/qemu): unlock key
//! slot 0 (PBKDF2 + key-material decryption + AF merge + master-key digest), compare the
//! master key with METADATA.txt, decrypt the payload and compare its sha256 with
//! README.txt. The LUKS1 header is parsed by fixed offsets (tests/common/luks1.rs),
//! independently of vmcrypt-format.
mod common;

use common::luks1::{Header, parse_header, spec_of, unlock};
use std::path::PathBuf;
use vmcrypt_crypto::SectorCipher;

/// `name` in the QEMU-made vectors folder.
fn vector_path(name: &str) -> PathBuf {
    common::shared_data::shared_path("vectors/qemu").join(name)
}

fn read_vector(name: &str) -> Vec<u8> {
    let path = vector_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The master key METADATA.txt lists for `name`.
fn metadata_master_key(name: &str) -> Vec<u8> {
    let meta = std::fs::read_to_string(vector_path("METADATA.txt")).unwrap();
    let section = meta
        .split("\n=== ")
        .find(|s| s.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in METADATA.txt"));
    let line = section
        .lines()
        .find(|l| l.trim().starts_with("master key:"))
        .unwrap();
    hex::decode(line.trim().trim_start_matches("master key:").trim()).unwrap()
}

/// The expected sha256 of the decrypted disk from README.txt's table.
fn readme_plain_sha256(name: &str) -> String {
    let readme = std::fs::read_to_string(vector_path("README.txt")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in README.txt"));
    line.split_whitespace().last().unwrap().to_string()
}

/// Decrypt the payload with `mk` (IV sector 0 at the payload start) and hash it.
fn payload_sha256(image: &[u8], h: &Header, mk: &[u8]) -> String {
    let mut payload = image[h.payload_offset as usize * 512..].to_vec();
    let cipher = SectorCipher::new(&spec_of(h), mk).unwrap();
    cipher.decrypt(0, 512, &mut payload).unwrap();
    hex::encode(openssl::sha::sha256(&payload))
}

/// Full check of one vector: header fields, slot 0 unlock, master key, payload.
fn check_vector(name: &str, pass: &str, cipher: &str, mode: &str, hash: &str) {
    let image = read_vector(name);
    let h = parse_header(&image);
    assert_eq!(
        (h.cipher_name.as_str(), h.cipher_mode.as_str()),
        (cipher, mode)
    );
    assert_eq!(h.hash_spec, hash);
    let expected_mk = metadata_master_key(name);

    // The payload decrypts with the published master key ...
    assert_eq!(
        payload_sha256(&image, &h, &expected_mk),
        readme_plain_sha256(name),
        "payload"
    );
    // ... and slot 0 yields that master key.
    let mk = unlock(&image, &h, 0, pass.as_bytes()).expect("master key digest mismatch");
    assert_eq!(
        hex::encode(mk.as_bytes()),
        hex::encode(&expected_mk),
        "master key"
    );
}

#[test]
fn aes256_xts_plain64_sha256() {
    check_vector(
        "luks1-aes256-xts-plain64-sha256.luks",
        "vec-aes256-xts",
        "aes",
        "xts-plain64",
        "sha256",
    );
}

#[test]
fn aes128_cbc_essiv_sha256_with_sha1() {
    check_vector(
        "luks1-aes128-cbc-essiv_sha256-hsha1.luks",
        "vec-aes128-cbc-essiv",
        "aes",
        "cbc-essiv:sha256",
        "sha1",
    );
}

#[test]
fn cast5_cbc_plain64_sha256() {
    check_vector(
        "luks1-cast5-cbc-plain64-sha256.luks",
        "vec-cast5",
        "cast5",
        "cbc-plain64",
        "sha256",
    );
}

#[test]
fn twofish256_xts_plain64_sha512() {
    check_vector(
        "luks1-twofish256-xts-plain64-sha512.luks",
        "vec-twofish",
        "twofish",
        "xts-plain64",
        "sha512",
    );
}

#[test]
fn serpent128_cbc_plain_sha256() {
    check_vector(
        "luks1-serpent128-cbc-plain-sha256.luks",
        "vec-serpent",
        "serpent",
        "cbc-plain",
        "sha256",
    );
}

#[test]
fn wrong_passphrase_fails_the_digest() {
    let image = read_vector("luks1-aes128-cbc-essiv_sha256-hsha1.luks");
    let h = parse_header(&image);
    assert!(unlock(&image, &h, 0, b"vec-aes128-cbc-essiv").is_some());
    assert!(unlock(&image, &h, 0, b"vec-aes128-cbc-essiV").is_none());
}
