//! AES via the aes crate (AES-NI/VAES when present).
