//! Replaying the committed fuzz corpora and regression inputs in ordinary tests.
//!
//! Included with `#[path]` by each crate's `tests/fuzz_replay.rs`, next to that crate's
//! entry-point file, so `cargo test --workspace` runs every committed input through the
//! same function the fuzzer calls, on the stable toolchain and without libFuzzer.
use std::path::{Path, PathBuf};

/// A fuzz target: its name (the corpus directory) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The `fuzz/` directory of the checkout, found above the crate being tested.
pub fn fuzz_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("fuzz"))
        .find(|f| f.join("corpus").is_dir())
        .expect("no fuzz/corpus directory above the crate")
}

/// The files of `dir`, sorted (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading a corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run every input of `corpus/<name>` and `regressions/<name>` through its target;
/// returns how many ran. A panicking input is named on stderr before the panic goes on.
pub fn replay(targets: &[Target]) -> usize {
    let root = fuzz_dir();
    let mut ran = 0;
    for (name, target) in targets {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz target {name} has no committed corpus"
        );
        for path in seeds
            .iter()
            .chain(&inputs(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(path).expect("reading a fuzz input");
            eprintln!("replaying {}", path.display());
            target(&data);
            ran += 1;
        }
    }
    ran
}

/// The `#[test]` of each crate's `tests/fuzz_replay.rs`, which declares `entries` (its
/// entry-point file) and `replay` (this file) beside it.
#[allow(unused_macros)] // see the `use` below
macro_rules! replay_test {
    () => {
        #[test]
        fn committed_fuzz_inputs_replay_cleanly() {
            assert!(replay::replay(entries::TARGETS) > 0);
        }
    };
}
#[allow(unused_imports)] // used by the tests that include this file, not by the fuzz crate
pub(crate) use replay_test;
