//! Fuzz target `nbd_handshake`: see [`vmcrypt_fuzz::nbd::nbd_handshake`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::nbd::nbd_handshake(data));
