//! Replays the committed fuzz corpora and regression inputs (`fuzz/corpus/`,
//! `fuzz/regressions/`) through the same entry points the fuzz targets call, so every
//! input the fuzzer kept or crashed on is checked by the ordinary test suite.
#[path = "../../../fuzz/src/nbd.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn committed_fuzz_inputs_replay_cleanly() {
    let ran = replay::replay(entries::TARGETS);
    assert!(ran > 0);
}
