//! Fuzz target `image_opts`: see [`vmcrypt_fuzz::block::image_opts`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::block::image_opts(data));
