//! Fuzz target `qcow2_tables`: see [`vmcrypt_fuzz::format::qcow2_tables`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::format::qcow2_tables(data));
