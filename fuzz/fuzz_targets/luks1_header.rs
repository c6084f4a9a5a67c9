//! Fuzz target `luks1_header`: see [`vmcrypt_fuzz::format::luks1_header`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::format::luks1_header(data));
