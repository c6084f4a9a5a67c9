//! Fuzz target `qcow2_driver`: see [`vmcrypt_fuzz::block::qcow2_driver`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::block::qcow2_driver(data));
