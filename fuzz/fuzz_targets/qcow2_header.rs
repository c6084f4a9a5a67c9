//! Fuzz target `qcow2_header`: see [`vmcrypt_fuzz::format::qcow2_header`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::format::qcow2_header(data));
