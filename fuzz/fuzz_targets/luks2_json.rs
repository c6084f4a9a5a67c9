//! Fuzz target `luks2_json`: see [`vmcrypt_fuzz::format::luks2_json`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::format::luks2_json(data));
