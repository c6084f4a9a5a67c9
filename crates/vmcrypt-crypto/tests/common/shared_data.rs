//! Where the test data lives: the `shared/` folder beside the checkout (`../shared` from
//! the workspace root). Written once, here, and included by the test-support modules of
//! vmcrypt-crypto and vmcrypt (`#[path]`), so every test finds it the same way.
use std::path::{Path, PathBuf};

/// `rel` inside `shared/` beside the checkout. Fails the test, naming the path it looked
/// for, when it is missing: the tests that read it are never skipped.
pub fn shared_path(rel: &str) -> PathBuf {
    // The including crate's manifest dir is <checkout>/crates/<crate>; its third
    // ancestor holds both the checkout and shared/.
    let beside = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(3)
        .expect("the checkout has a parent directory");
    let path = beside.join("shared").join(rel);
    assert!(
        path.exists(),
        "test data not found at {} (put the shared/ folder beside the checkout)",
        path.display()
    );
    path
}
