//! Replays the committed fuzz inputs of the NBD protocol targets (handshake and
//! transmission codecs) through the entry points the fuzz targets call.
#[path = "../../../fuzz/src/nbd.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

replay::replay_test!();
