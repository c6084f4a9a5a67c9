//! vmcrypt's fuzz entry points, one module per crate under test. The fuzz targets in
//! `fuzz_targets/` each call one function here; the crates' `tests/fuzz_replay.rs`
//! include the same files with `#[path]` and replay the committed corpora through them.
//! Run with `scripts/fuzz.sh` (see `fuzz/README.md`).
pub mod agent;
pub mod block;
/// The `vmcrypt-format` tests' helpers (the SHA-2 LUKS2 header hasher).
#[path = "../../crates/vmcrypt-format/tests/common/mod.rs"]
pub mod common;
pub mod format;
pub mod luks2_csum;
pub mod nbd;
pub mod replay;
pub mod secrets;
