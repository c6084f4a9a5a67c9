//! Shared by vmcrypt-block's integration tests: [`run`], which runs a QEMU tool and fails
//! the test loudly (with the tool's output) when it is missing or fails, and [`Rng`], a
//! seeded xorshift generator that keeps the randomised tests reproducible without a
//! rand dependency.
#![allow(dead_code)]

use std::process::Command;

/// Run `cmd ARGS`; panics when it cannot be started (naming qemu-utils) or exits
/// non-zero (showing its stdout and stderr).
#[track_caller]
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is required (qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// xorshift so the tests are reproducible without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
