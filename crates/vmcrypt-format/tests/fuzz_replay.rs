//! Replays the committed fuzz inputs of the codec targets (LUKS1/LUKS2 headers and
//! JSON, qcow2 header and tables: `fuzz/corpus/` and `fuzz/regressions/`) through the
//! entry points the fuzz targets call, so the ordinary suite checks every kept input.
mod common;
#[path = "../../../fuzz/src/format.rs"]
mod entries;
#[path = "../../../fuzz/src/luks2_csum.rs"]
mod luks2_csum;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

replay::replay_test!();
