//! Zeroizing containers for key material and passphrases.
use zeroize::Zeroizing;

/// Bytes that are wiped when dropped. `Debug` never prints the contents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }
    /// `len` zero bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Self {
        Self::new(vec![0u8; len])
    }
    /// `len` bytes from the OS RNG.
    pub fn random(len: usize) -> vmcrypt_error::Result<Self> {
        let mut s = Self::zeroed(len);
        crate::random::fill(s.as_mut())?;
        Ok(s)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for SecretBytes {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn debug_redacts() {
        let s = SecretBytes::from_slice(b"hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
