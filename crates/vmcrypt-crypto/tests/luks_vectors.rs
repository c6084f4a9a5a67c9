//! Known answers from real QEMU-made LUKS1 images (/work/shared/vectors/qemu): unlock key
//! slot 0 (PBKDF2 + key-material decryption + AF merge + master-key digest), compare the
//! master key with METADATA.txt, decrypt the payload and compare its sha256 with
//! README.txt. The LUKS1 header is parsed here by fixed offsets, independently of
//! vmcrypt-format.
use std::path::PathBuf;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, af, kdf};

const VECTORS: &str = "/work/shared/vectors/qemu";
const SLOT_ENABLED: u32 = 0x00AC_71F3;

struct Slot {
    active: u32,
    iterations: u32,
    salt: Vec<u8>,
    key_material_offset: u32,
    stripes: u32,
}

struct Header {
    cipher_name: String,
    cipher_mode: String,
    hash_spec: String,
    payload_offset: u32,
    key_bytes: u32,
    mk_digest: Vec<u8>,
    mk_digest_salt: Vec<u8>,
    mk_digest_iter: u32,
    slots: Vec<Slot>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).unwrap()
}

fn parse_header(b: &[u8]) -> Header {
    assert_eq!(&b[..6], b"LUKS\xba\xbe", "magic");
    assert_eq!(u16::from_be_bytes([b[6], b[7]]), 1, "version");
    let slots = (0..8)
        .map(|i| {
            let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
            Slot {
                active: be32(s, 0),
                iterations: be32(s, 4),
                salt: s[8..40].to_vec(),
                key_material_offset: be32(s, 40),
                stripes: be32(s, 44),
            }
        })
        .collect();
    Header {
        cipher_name: cstr(&b[8..40]),
        cipher_mode: cstr(&b[40..72]),
        hash_spec: cstr(&b[72..104]),
        payload_offset: be32(b, 104),
        key_bytes: be32(b, 108),
        mk_digest: b[112..132].to_vec(),
        mk_digest_salt: b[132..164].to_vec(),
        mk_digest_iter: be32(b, 164),
        slots,
    }
}

fn read_vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(VECTORS).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The master key METADATA.txt lists for `name`.
fn metadata_master_key(name: &str) -> Vec<u8> {
    let meta = std::fs::read_to_string(PathBuf::from(VECTORS).join("METADATA.txt")).unwrap();
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
    let readme = std::fs::read_to_string(PathBuf::from(VECTORS).join("README.txt")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in README.txt"));
    line.split_whitespace().last().unwrap().to_string()
}

fn spec_of(h: &Header) -> CipherSpec {
    CipherSpec::from_luks(&h.cipher_name, &h.cipher_mode, h.key_bytes as usize).unwrap()
}

/// Unlock key slot `slot` with `pass`: the master key if it matches the header's digest.
fn unlock(image: &[u8], h: &Header, slot: usize, pass: &[u8]) -> Option<SecretBytes> {
    let s = &h.slots[slot];
    assert_eq!(s.active, SLOT_ENABLED, "slot {slot} not enabled");
    let hash = HashAlg::from_name(&h.hash_spec).unwrap();
    let key_len = h.key_bytes as usize;
    let mut slot_key = SecretBytes::zeroed(key_len);
    kdf::pbkdf2(hash, pass, &s.salt, s.iterations, slot_key.as_mut());

    let material_len = key_len * s.stripes as usize;
    let start = s.key_material_offset as usize * 512;
    let mut material = image[start..start + material_len.div_ceil(512) * 512].to_vec();
    let cipher = SectorCipher::new(&spec_of(h), slot_key.as_bytes()).unwrap();
    cipher.decrypt(0, 512, &mut material).unwrap();
    let mk = af::merge(hash, &material, key_len, s.stripes).unwrap();

    let mut digest = [0u8; 20];
    kdf::pbkdf2(
        hash,
        mk.as_bytes(),
        &h.mk_digest_salt,
        h.mk_digest_iter,
        &mut digest,
    );
    (digest[..] == h.mk_digest[..]).then_some(mk)
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
