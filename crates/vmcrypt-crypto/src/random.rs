//! The OS random number generator (getrandom(2)).
use vmcrypt_error::{Error, Result};

/// Fill `buf` with cryptographically secure random bytes.
pub fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf)
        .map_err(|e| Error::internal(format!("the OS random number generator failed: {e}")))
}
