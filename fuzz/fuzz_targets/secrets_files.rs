//! Fuzz target `secrets_files`: see [`vmcrypt_fuzz::secrets::secrets_files`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::secrets::secrets_files(data));
