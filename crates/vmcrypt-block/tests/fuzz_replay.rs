//! Replays the committed fuzz inputs of the block-layer targets (the qcow2 driver over
//! an in-memory image, the image-opts/json: parsers) through the fuzz entry points.
#[path = "../../../fuzz/src/block.rs"]
mod entries;
#[path = "../../../fuzz/src/luks2_csum.rs"]
mod luks2_csum;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

replay::replay_test!();
