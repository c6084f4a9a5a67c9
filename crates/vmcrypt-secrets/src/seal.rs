//! Sealing a secret's value: XChaCha20-Poly1305 under the store's master key, with the
//! secret's UUID and the format version as associated data, so a value file copied to
//! another secret's name, flipped, truncated or sealed under another key does not
//! authenticate and is refused instead of decrypted to garbage.
//!
//! Layout of a `UUID.value` file: `VMCSEAL1` (8 bytes) | 24-byte random nonce |
//! ciphertext | 16-byte tag.
use crate::uuid::Uuid;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, ensure};
use zeroize::Zeroizing;

/// The format's magic and version.
const MAGIC: &[u8; 8] = b"VMCSEAL1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The 32-byte key every value of a store is sealed under; zeroized on drop and never
/// printed (its `Debug` shows nothing of it).
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// What the tag covers besides the ciphertext: the magic (version) and the UUID.
fn associated_data(uuid: &Uuid) -> [u8; 24] {
    let mut ad = [0u8; 24];
    ad[..8].copy_from_slice(MAGIC);
    ad[8..].copy_from_slice(uuid.as_bytes());
    ad
}

/// Seal `value` as secret `uuid`'s.
pub fn seal(key: &MasterKey, uuid: &Uuid, value: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    vmcrypt_crypto::random::fill(&mut nonce)?;
    let ad = associated_data(uuid);
    let ct = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: value,
                aad: &ad,
            },
        )
        .map_err(|_| Error::internal("sealing a secret value failed"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Open a value sealed for secret `uuid`.
pub fn open(key: &MasterKey, uuid: &Uuid, sealed: &[u8]) -> Result<SecretBytes> {
    ensure!(
        sealed.len() >= MAGIC.len() + NONCE_LEN + TAG_LEN && sealed.starts_with(MAGIC),
        Corrupt,
        "secret {uuid}: sealed value is truncated or not a vmcrypt sealed value"
    );
    let (nonce, ct) = sealed[MAGIC.len()..].split_at(NONCE_LEN);
    let ad = associated_data(uuid);
    let plain = key
        .cipher()
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &ad })
        .map_err(|_| {
            Error::wrong_key(format!(
                "secret {uuid}: sealed value does not authenticate (tampered, or sealed under \
                 another master key)"
            ))
        })?;
    Ok(SecretBytes::new(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refusals() {
        let k = MasterKey::from_bytes([7; 32]);
        let (a, b) = (Uuid([1; 16]), Uuid([2; 16]));
        let s = seal(&k, &a, b"hunter2").unwrap();
        assert_eq!(open(&k, &a, &s).unwrap().as_bytes(), b"hunter2");
        assert_ne!(
            seal(&k, &a, b"hunter2").unwrap(),
            s,
            "fresh nonce each time"
        );
        let e = open(&k, &b, &s).unwrap_err();
        assert!(e.to_string().contains("does not authenticate"), "{e}");
        let other = MasterKey::from_bytes([8; 32]);
        assert!(open(&other, &a, &s).is_err());
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(open(&k, &a, &t).is_err(), "flip at {i} accepted");
        }
        assert!(open(&k, &a, &s[..s.len() - 1]).is_err());
        assert!(open(&k, &a, &s[..20]).is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
