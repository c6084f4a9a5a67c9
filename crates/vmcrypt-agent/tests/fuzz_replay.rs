//! Replays the committed fuzz inputs of the `agent_files` target (the agent config,
//! the mount table, key-file paths on a medium) through its fuzz entry point.
#[path = "../../../fuzz/src/agent.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

replay::replay_test!();
