//! Fuzz target `nbd_transmission`: see [`vmcrypt_fuzz::nbd::nbd_transmission`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::nbd::nbd_transmission(data));
