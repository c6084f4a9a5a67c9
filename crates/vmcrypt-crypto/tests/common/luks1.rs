//! A LUKS1 header parsed by fixed offsets and a key-slot unlock (PBKDF2 + key-material
//! decryption + AF merge + master-key digest), independent of vmcrypt-format.
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, af, kdf};

const SLOT_ENABLED: u32 = 0x00AC_71F3;

pub struct Slot {
    pub active: u32,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub key_material_offset: u32,
    pub stripes: u32,
}

pub struct Header {
    pub cipher_name: String,
    pub cipher_mode: String,
    pub hash_spec: String,
    pub payload_offset: u32,
    pub key_bytes: u32,
    pub mk_digest: Vec<u8>,
    pub mk_digest_salt: Vec<u8>,
    pub mk_digest_iter: u32,
    pub slots: Vec<Slot>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).unwrap()
}

pub fn parse_header(b: &[u8]) -> Header {
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

pub fn spec_of(h: &Header) -> CipherSpec {
    CipherSpec::from_luks(&h.cipher_name, &h.cipher_mode, h.key_bytes as usize).unwrap()
}

/// Unlock key slot `slot` with `pass`: the master key if it matches the header's digest.
pub fn unlock(image: &[u8], h: &Header, slot: usize, pass: &[u8]) -> Option<SecretBytes> {
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
