//! Shared by vmcrypt-block's integration tests: [`run`], which runs a QEMU tool and fails
//! the test loudly (with the tool's output) when it is missing or fails, and [`Rng`], a
//! seeded xorshift generator that keeps the randomised tests reproducible without a
//! rand dependency, [`faulty_pair`], a run over two in-memory devices with a write
//! fault on one of them, [`with_edited_metadata`], a LUKS2 header rewritten with
//! edited metadata, and [`Pass`], a key source with one passphrase.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;

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

/// Run `run(first, second)` on in-memory devices holding `first` and `second`, one of
/// them (`fault_first`) behind a [`FaultyDriver`] that fails after `budget` writes
/// (`(n, true)`: the failing write is torn in half; None: no fault). Returns the
/// run's result, both devices' bytes after it and the writes done on the faulty one.
pub fn faulty_pair(
    first: Vec<u8>,
    second: Vec<u8>,
    fault_first: bool,
    budget: Option<(usize, bool)>,
    run: impl FnOnce(Arc<dyn BlockDriver>, Arc<dyn BlockDriver>) -> vmcrypt_error::Result<()>,
) -> (vmcrypt_error::Result<()>, Vec<u8>, Vec<u8>, usize) {
    let (a, b) = (
        Arc::new(MemDriver::new(first)),
        Arc::new(MemDriver::new(second)),
    );
    let target = if fault_first { &a } else { &b };
    let f = Arc::new(match budget {
        None => FaultyDriver::new(target.clone(), usize::MAX),
        Some((n, false)) => FaultyDriver::new(target.clone(), n),
        Some((n, true)) => FaultyDriver::torn_half(target.clone(), n),
    });
    let (x, y): (Arc<dyn BlockDriver>, Arc<dyn BlockDriver>) = if fault_first {
        (f.clone(), b.clone())
    } else {
        (a.clone(), f.clone())
    };
    let r = run(x, y);
    (r, a.snapshot(), b.snapshot(), f.writes_done())
}

/// `img` (a LUKS2 header at its start) with the metadata changed by `edit` (on its
/// JSON) in both header copies, checksums recomputed and the sequence id raised: the
/// state a tool that wrote that metadata leaves.
pub fn with_edited_metadata(img: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let hasher = vmcrypt_block::drivers::luks::v2::header_hasher;
    let mut hdr = vmcrypt_format::luks2::load(img, &hasher, Default::default())
        .unwrap()
        .header;
    let mut v = hdr.metadata.to_value();
    edit(&mut v);
    hdr.metadata = vmcrypt_format::luks2::Metadata::from_value(v).unwrap();
    hdr.binary.seqid += 1;
    let both = hdr.encode_both(&hasher).unwrap();
    let mut out = img.to_vec();
    out[..both.len()].copy_from_slice(&both);
    out
}

/// A key source that answers every question with its passphrase.
pub struct Pass(pub &'static [u8]);

impl vmcrypt_block::jobs::luks::KeySource for Pass {
    fn existing(&mut self) -> vmcrypt_error::Result<vmcrypt_crypto::SecretBytes> {
        Ok(vmcrypt_crypto::SecretBytes::new(self.0.to_vec()))
    }
    fn new_passphrase(&mut self) -> vmcrypt_error::Result<vmcrypt_crypto::SecretBytes> {
        Ok(vmcrypt_crypto::SecretBytes::new(self.0.to_vec()))
    }
}
