//! Fuzz target `luks_driver`: see [`vmcrypt_fuzz::block::luks_driver`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::block::luks_driver(data));
