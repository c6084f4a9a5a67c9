//! cryptsetup's LUKS2 header-validation images (`luks2-validation-images.tar.xz`, made
//! by cryptsetup v2.6.1's test generators) through the real binaries: `vmcrypt luks dump`
//! must accept or refuse every image exactly as `cryptsetup luksDump` does, and both
//! must give the verdict upstream expects (`luks2-validation-expected.txt`). The codec
//! gives the same verdicts in vmcrypt-format's `tests/luks2_upstream.rs`; this test is
//! the same through the CLI, where a keyslot whose KDF vmcrypt cannot run (most of these
//! images use "argon2", the pre-release name) must not stop the dump (issue 10 item 3).
mod common;

use common::*;
use std::path::Path;

/// Unpack `vectors/cryptsetup/upstream/NAME` (a .tar.xz) into `dir`.
fn untar(name: &str, dir: &Path) {
    let tarball = shared(&format!("vectors/cryptsetup/upstream/{name}"));
    let dir = dir.to_str().unwrap();
    tool("tar", &["-xJf", &tarball, "-C", dir]).ok();
}

/// Accepted (exit 0) or refused (any other exit) by `cmd IMG`, with its stderr.
fn verdict(out: &Out) -> (bool, String) {
    (out.code == Some(0), out.stderr.trim().to_string())
}

#[test]
fn luks_dump_gives_cryptsetups_verdict_on_every_validation_image() {
    let sc = Scratch::new();
    untar("luks2-validation-images.tar.xz", &sc.path(""));
    let expected = std::fs::read_to_string(shared(
        "vectors/cryptsetup/upstream/luks2-validation-expected.txt",
    ))
    .unwrap();
    let mut want: Vec<(String, bool)> = expected
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap().to_string();
            let load = match w.next() {
                Some("expected=R") => true,
                Some("expected=F") => false,
                other => panic!("bad line {l:?}: {other:?}"),
            };
            (name, load)
        })
        .collect();
    assert_eq!(want.len(), 83, "upstream's list has 83 images");
    want.push(("luks2_valid_hdr.img".into(), true));

    let mut mismatches = Vec::new();
    let mut argon2_dumps = 0;
    for (name, load) in &want {
        let img = sc.p(name);
        assert!(Path::new(&img).is_file(), "{name} missing from the tarball");
        let before = std::fs::metadata(&img).unwrap().modified().unwrap();
        let vm = vmcrypt(&["luks", "dump", &img]);
        let after = std::fs::metadata(&img).unwrap().modified().unwrap();
        assert_eq!(
            before, after,
            "{name}: vmcrypt luks dump wrote to the image"
        );
        // cryptsetup may repair its input in place, so it runs second.
        let cs = cryptsetup(&["luksDump", &img]);
        let ((vm_ok, vm_err), (cs_ok, cs_err)) = (verdict(&vm), verdict(&cs));
        if vm_ok != cs_ok || cs_ok != *load {
            mismatches.push(format!(
                "{name}: expected {}, cryptsetup {} ({cs_err}), vmcrypt {} ({vm_err})",
                if *load { "R" } else { "F" },
                if cs_ok { "R" } else { "F" },
                if vm_ok { "R" } else { "F" },
            ));
        }
        if vm_ok
            && vm
                .stdout_str()
                .contains("PBKDF:      argon2 (not supported")
        {
            argon2_dumps += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} verdicts differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The images loaded through keyslots whose KDF vmcrypt cannot run were dumped.
    assert!(argon2_dumps >= 28, "only {argon2_dumps} argon2 dumps");
}
