//! Fuzz target `luks2_load`: see [`vmcrypt_fuzz::format::luks2_load`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::format::luks2_load(data));
