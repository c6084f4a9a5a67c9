//! Replays the committed fuzz inputs of the `secrets_files` target (secret XML, a
//! store's definition and sealed-value files, usage/UUID/base64 text) through its
//! fuzz entry point.
#[path = "../../../fuzz/src/secrets.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

replay::replay_test!();
