//! Fuzz target `agent_files`: see [`vmcrypt_fuzz::agent::agent_files`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmcrypt_fuzz::agent::agent_files(data));
