//! Shared helpers for the LUKS2 tests: a SHA-2 header hasher, vector paths, and
//! reading/unpacking the cryptsetup vectors.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

/// Header checksum via the `sha2` crate (the vectors use sha256).
pub fn sha2_hasher(alg: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match alg {
        "sha256" => Some(run::<sha2::Sha256>(parts)),
        "sha512" => Some(run::<sha2::Sha512>(parts)),
        "sha384" => Some(run::<sha2::Sha384>(parts)),
        "sha224" => Some(run::<sha2::Sha224>(parts)),
        _ => None,
    }
}

/// The cryptsetup vectors in the `shared/` folder beside the checkout (`../shared` from
/// the workspace root); fails the test, naming the path it looked for, when missing.
pub fn vectors() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/cryptsetup");
    assert!(
        p.is_dir(),
        "test data not found at {} (put the shared/ folder beside the checkout)",
        p.display()
    );
    p
}

/// The first 8 MiB of a file (enough for any LUKS2 header pair) and the file size.
pub fn head(path: &Path) -> (Vec<u8>, u64) {
    use std::io::Read;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let size = f.metadata().unwrap().len();
    let mut buf = Vec::new();
    f.take(8 << 20).read_to_end(&mut buf).unwrap();
    (buf, size)
}

/// Unpack `upstream/NAME.tar.xz` into a fresh temporary directory.
pub fn untar(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xJf")
        .arg(vectors().join("upstream").join(name))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar must be installed");
    assert!(st.success(), "tar -xJf {name} failed");
    dir
}

/// Decompress `upstream/NAME.xz` into a temporary directory; returns (dir, file path).
pub fn unxz(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name.trim_end_matches(".xz"));
    let data = Command::new("xz")
        .arg("-dc")
        .arg(vectors().join("upstream").join(name))
        .output()
        .expect("xz must be installed");
    assert!(data.status.success(), "xz -dc {name} failed");
    std::fs::write(&out, data.stdout).unwrap();
    (dir, out)
}

/// Every file under `dir`, recursively, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
