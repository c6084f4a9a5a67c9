//! `vmcrypt luks reencrypt --decrypt --header NEW.hdr IMG` against `cryptsetup
//! reencrypt --decrypt --header NEW.hdr --force-offline-reencrypt IMG` (2.6.1) on
//! LUKS2 images whose header is attached (made by cryptsetup: `reencrypt --encrypt
//! --reduce-device-size`, so the plaintext is known): the header moves into NEW.hdr
//! and the data shifts left over the old header. Whole runs in either tool leave the
//! same bytes on IMG (the plaintext at offset 0) and the same NEW.hdr; `--init-only`
//! writes the same metadata and the other tool resumes it; each tool killed (-9) at
//! random points is finished by the other; bad input is refused with nothing written.
mod reencrypt_support;

use reencrypt_support::{
    Rng, assert_decrypted_header, cryptsetup_detached, dump_json, in_progress,
    interrupt_after_start, ok, refused_for_bad_sha256_kernel, vmcrypt, vmcrypt_detached,
    with_bad_sha256_kernel,
};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// Plaintext written before encryption, and the device reduction (its half is the
/// header, i.e. the shift).
const PLAIN: u64 = 12 * MIB;
const REDUCE: u64 = 8 * MIB;
/// Bytes of decrypted data: the device less the shift.
const DATA: u64 = PLAIN + REDUCE / 2;

struct Image {
    dir: tempfile::TempDir,
    img: PathBuf,
    hdr: PathBuf,
    pw: PathBuf,
    plain: Vec<u8>,
}

/// Random plaintext encrypted in place by cryptsetup with the header attached.
fn image(sector: u32, seed: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let (img, hdr, pw) = (
        dir.path().join("d.img"),
        dir.path().join("new.hdr"),
        dir.path().join("pw"),
    );
    std::fs::write(&pw, b"secret").unwrap();
    let mut rng = Rng(seed);
    let plain: Vec<u8> = (0..PLAIN).map(|_| rng.next() as u8).collect();
    let mut all = plain.clone();
    all.resize((PLAIN + REDUCE) as usize, 0);
    std::fs::write(&img, &all).unwrap();
    ok(Command::new("cryptsetup")
        .args(["reencrypt", "--encrypt", "--type", "luks2", "-q"])
        .args(["--force-offline-reencrypt", "--pbkdf", "pbkdf2"])
        .args([
            "--pbkdf-force-iterations",
            "1000",
            "--reduce-device-size",
            "8M",
        ])
        .arg("--sector-size")
        .arg(sector.to_string())
        .arg("--key-file")
        .args([&pw, &img]));
    assert!(
        std::fs::read(&img).unwrap()[..4] == *b"LUKS",
        "not attached"
    );
    Image {
        dir,
        img,
        hdr,
        pw,
        plain,
    }
}

impl Image {
    /// A copy of the image (no header file yet) named `name`.
    fn copy(&self, name: &str) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join(format!("{name}.img"));
        std::fs::copy(&self.img, &img).unwrap();
        Image {
            hdr: dir.path().join(format!("{name}.hdr")),
            img,
            dir,
            pw: self.pw.clone(),
            plain: self.plain.clone(),
        }
    }

    /// The decrypted data: the first `DATA` bytes of the device.
    fn data(&self) -> Vec<u8> {
        let mut d = std::fs::read(&self.img).unwrap();
        d.truncate(DATA as usize);
        d
    }
}

/// The device holds the plaintext from offset 0, NEW.hdr what cryptsetup leaves.
#[track_caller]
fn check(im: &Image, what: &str) {
    let d = im.data();
    assert!(
        d[..PLAIN as usize] == im.plain[..],
        "{what}: not the plaintext at 0"
    );
    assert_decrypted_header(&im.hdr, what);
}

fn cryptsetup(im: &Image, extra: &[&str]) -> Command {
    cryptsetup_detached(&im.pw, &im.hdr, &im.img, extra)
}

fn vm(im: &Image, extra: &[&str]) -> Command {
    vmcrypt_detached(&im.pw, &im.hdr, &im.img, extra)
}

/// Options of a run: checksum moves the whole shift (cryptsetup's default), journal
/// 1 MiB (the moved segment must fit its area).
fn mode_args(mode: &str) -> Vec<&str> {
    let mut v = vec!["--resilience", mode];
    if mode == "journal" {
        v.extend(["--hotzone-size", "1M"]);
    }
    v
}

/// NEW.hdr's metadata without the salts, digests and iteration counts of digests.
fn normalized(hdr: &Path) -> serde_json::Value {
    let mut j = dump_json(hdr);
    for d in j["digests"].as_object_mut().unwrap().values_mut() {
        let d = d.as_object_mut().unwrap();
        for k in ["salt", "digest", "iterations"] {
            d.remove(k);
        }
    }
    j
}

#[test]
fn whole_runs_leave_the_same_bytes_and_header() {
    for sector in [512u32, 4096] {
        let base = image(sector, u64::from(sector));
        for mode in ["checksum", "journal"] {
            let (a, b) = (base.copy("vm"), base.copy("cs"));
            let mut args = vec!["--decrypt"];
            args.extend(mode_args(mode));
            ok(&mut vm(&a, &args));
            check(&a, &format!("{sector} {mode}: vmcrypt"));
            ok(&mut cryptsetup(&b, &args));
            check(&b, &format!("{sector} {mode}: cryptsetup"));
            assert!(a.data() == b.data(), "{sector} {mode}: the devices differ");
            assert_eq!(dump_json(&a.hdr), dump_json(&b.hdr), "{sector} {mode}");
        }
    }
}

/// `--init-only` writes the same metadata (and moves the same bytes) in both tools,
/// and each tool resumes the other's.
#[test]
fn init_only_matches_and_the_other_tool_resumes() {
    for (sector, mode) in [(4096, "checksum"), (512, "checksum"), (4096, "journal")] {
        let base = image(sector, 3);
        let (a, b) = (base.copy("vm"), base.copy("cs"));
        let mut args = vec!["--decrypt", "--init-only"];
        args.extend(mode_args(mode));
        ok(&mut vm(&a, &args));
        ok(&mut cryptsetup(&b, &args));
        assert_eq!(normalized(&a.hdr), normalized(&b.hdr), "{mode}");
        assert!(
            std::fs::read(&a.img).unwrap() == std::fs::read(&b.img).unwrap(),
            "{mode}: the devices differ after --init-only"
        );
        ok(&mut cryptsetup(&a, &["--resume-only"]));
        check(&a, &format!("{mode}: vmcrypt init, cryptsetup run"));
        // The hotzones of this mode are the shift: a size given on resuming is
        // reported as having no effect, not dropped silently.
        let out = vm(&b, &["--resume-only", "--hotzone-size", "2M"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: vmcrypt resume: {err}");
        assert!(
            err.contains("--hotzone-size has no effect"),
            "{mode}: {err}"
        );
        check(&b, &format!("{mode}: cryptsetup init, vmcrypt run"));
        assert!(a.data() == b.data(), "{mode}: the devices differ");
    }
}

/// A vmcrypt run paused after one hotzone writes cryptsetup's segments, and
/// cryptsetup finishes it.
#[test]
fn paused_segments_match_cryptsetup() {
    let base = image(4096, 5);
    let a = base.copy("vm");
    ok(&mut vm(&a, &["--decrypt", "--max-hotzones", "1"]));
    let j = dump_json(&a.hdr);
    let s = &j["segments"];
    let shift = REDUCE / 2;
    let want = serde_json::json!([
        ["crypt", "0", shift.to_string()],
        ["linear", shift.to_string(), shift.to_string()],
        ["crypt", (3 * shift).to_string(), "dynamic"],
        ["crypt", shift.to_string(), "dynamic"],
        ["linear", "0", "dynamic"],
        ["crypt", "0", shift.to_string()],
    ]);
    let got: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            let x = &s[i.to_string()];
            serde_json::json!([x["type"], x["offset"], x["size"]])
        })
        .collect();
    assert_eq!(serde_json::Value::from(got), want, "{s}");
    assert_eq!(s["2"]["iv_tweak"], (2 * shift / 512).to_string(), "{s}");
    let digests: Vec<&serde_json::Value> = j["digests"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| &d["segments"])
        .collect();
    assert!(
        digests.contains(&&serde_json::json!(["3", "5", "0", "2"])),
        "{digests:?}"
    );
    ok(&mut cryptsetup(&a, &["--resume-only"]));
    check(&a, "vmcrypt paused, cryptsetup finished");
}

/// Whether all data but the moved segment is plaintext (nothing hot): cryptsetup
/// 2.6.1 fails to resume that state ("Failed to write reencryption resilience
/// metadata") when the moved segment is shorter than the shift, even its own.
fn before_moved(hdr: &Path) -> bool {
    let j = dump_json(hdr);
    let regular: Vec<&serde_json::Value> = j["segments"]
        .as_object()
        .unwrap()
        .values()
        .filter(|s| !s["flags"].to_string().contains("backup-"))
        .collect();
    regular.len() == 2
        && regular[0]["type"] == "crypt"
        && regular[1]["type"] == "linear"
        && regular[1]["size"] == "dynamic"
}

/// Finish with cryptsetup (`repair` first for a hot state); a state it cannot
/// resume ([`before_moved`], journal runs) is finished by vmcrypt. Returns whether
/// cryptsetup finished it.
fn cryptsetup_finish(im: &Image, mode: &str) -> bool {
    if in_progress(&im.hdr).1 {
        ok(Command::new("cryptsetup")
            .args(["repair", "-q", "--key-file"])
            .arg(&im.pw)
            .arg("--header")
            .args([&im.hdr, &im.img]));
    }
    if !in_progress(&im.hdr).0 {
        return true;
    }
    if mode == "journal" && before_moved(&im.hdr) {
        ok(&mut vm(im, &["--resume-only"]));
        return false;
    }
    ok(&mut cryptsetup(im, &["--resume-only"]));
    true
}

const MODES: [&str; 2] = ["checksum", "journal"];

#[test]
fn cryptsetup_killed_vmcrypt_finishes() {
    let mut rng = Rng(0x5eed);
    let mut hot = 0;
    for sector in [512u32, 4096] {
        let base = image(sector, rng.next());
        for mode in MODES {
            for round in 0..2 {
                let im = base.copy("k");
                let mut args = vec!["--decrypt"];
                args.extend(mode_args(mode));
                let ms =
                    interrupt_after_start(&[&im.img], &im.hdr, &mut rng, 300, "-KILL", &|| {
                        let _ = std::fs::remove_file(&im.hdr);
                        cryptsetup(&im, &args)
                    });
                hot += u32::from(in_progress(&im.hdr).1);
                ok(&mut vm(&im, &["--resume-only"]));
                check(
                    &im,
                    &format!("{sector} {mode} round {round}: killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{hot} of 8 kills hit a hotzone in flight");
}

#[test]
fn vmcrypt_killed_cryptsetup_finishes() {
    let mut rng = Rng(0x5eee);
    let (mut hot, mut by_cryptsetup) = (0, 0);
    for sector in [512u32, 4096] {
        let base = image(sector, rng.next());
        for mode in MODES {
            for round in 0..3 {
                let im = base.copy("k");
                let mut args = vec!["--decrypt"];
                args.extend(mode_args(mode));
                // Counted from the first header (the verification digest's KDF
                // comes before it); the rest of a run takes some 50 ms.
                args.extend(["--pbkdf-force-iterations", "1000"]);
                let ms = interrupt_after_start(&[&im.img], &im.hdr, &mut rng, 60, "-KILL", &|| {
                    let _ = std::fs::remove_file(&im.hdr);
                    vm(&im, &args)
                });
                hot += u32::from(in_progress(&im.hdr).1);
                by_cryptsetup += u32::from(cryptsetup_finish(&im, mode));
                check(
                    &im,
                    &format!("{sector} {mode} round {round}: killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{hot} of 12 kills hit a hotzone in flight");
    assert!(
        by_cryptsetup >= 6,
        "cryptsetup finished only {by_cryptsetup} of 12"
    );
}

/// Runs `cmd`, which must fail with `code` and a message containing `want`, and leave
/// `files` as they were (and create no header file).
#[track_caller]
fn refused(mut cmd: Command, code: i32, want: &str, im: &Image) {
    let before = std::fs::read(&im.img).unwrap();
    let hdr_before = std::fs::read(&im.hdr).ok();
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {err}");
    assert!(err.contains(want), "{cmd:?}: {err}");
    assert!(
        std::fs::read(&im.img).unwrap() == before,
        "{cmd:?} wrote the device"
    );
    assert_eq!(
        std::fs::read(&im.hdr).ok(),
        hdr_before,
        "{cmd:?} wrote the header file"
    );
}

#[test]
fn bad_input_is_refused_and_nothing_written() {
    let base = image(4096, 77);
    let im = base.copy("r");
    // Wrong passphrase: exit 2.
    let bad = im.dir.path().join("bad");
    std::fs::write(&bad, b"wrong").unwrap();
    let wrong = Image {
        pw: bad,
        ..base.copy("w")
    };
    refused(vm(&wrong, &["--decrypt"]), 2, "passphrase", &wrong);
    // `none` (cryptsetup refuses it too when the data is moved).
    refused(
        vm(&im, &["--decrypt", "--resilience", "none"]),
        1,
        "none",
        &im,
    );
    // A journal moved segment larger than its area (cryptsetup: "Moved segment too
    // large").
    let big = [
        "--decrypt",
        "--resilience",
        "journal",
        "--hotzone-size",
        "4M",
    ];
    refused(vm(&im, &big), 1, "journal", &im);
    // NEW.hdr already exists.
    std::fs::write(&im.hdr, b"keep me").unwrap();
    refused(vm(&im, &["--decrypt"]), 1, "already exists", &im);
    std::fs::remove_file(&im.hdr).unwrap();
    // Served while in progress: refused with a pointer to --resume-only.
    ok(&mut vm(&im, &["--decrypt", "--init-only"]));
    let out = vmcrypt()
        .args(["convert", "--object"])
        .arg(format!("secret,id=s0,file={}", im.pw.display()))
        .arg("--image-opts")
        .arg(format!(
            "driver=luks,key-secret=s0,file.filename={},header.filename={}",
            im.img.display(),
            im.hdr.display()
        ))
        .args(["-O", "raw"])
        .arg(im.dir.path().join("out.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("--resume-only"), "{err}");
    ok(&mut vm(&im, &["--resume-only"]));
    check(&im, "after the refusals");
    // LUKS1 with its header attached.
    let v1 = base.copy("v1");
    std::fs::File::create(&v1.img)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks1", "-q", "--iter-time", "10"])
        .arg("--key-file")
        .args([&v1.pw, &v1.img]));
    refused(vm(&v1, &["--decrypt"]), 4, "LUKS1", &v1);
}

/// `VMCRYPT_SHA256_KERNEL` naming no kernel: a checksum run is refused before
/// anything is written (no header file made), when it starts and when it resumes
/// (the shift engine checks the stored checksum hash when it loads the run); a
/// journal run hashes nothing and is not refused.
#[test]
fn a_bad_sha256_kernel_name_refuses_only_runs_that_hash() {
    let im = image(4096, 91);
    let j = im.copy("journal");
    let checksum = ["--decrypt", "--resilience", "checksum"];
    refused_for_bad_sha256_kernel(&mut vm(&im, &checksum), &[&im.img, &im.hdr]);
    assert!(!im.hdr.exists(), "a refused start made the header file");
    ok(&mut vm(&im, &[&checksum[..], &["--init-only"]].concat()));
    refused_for_bad_sha256_kernel(&mut vm(&im, &["--resume-only"]), &[&im.img, &im.hdr]);
    ok(&mut vm(&im, &["--resume-only"]));
    check(&im, "checksum, resumed without the variable");
    let mut args = vec!["--decrypt"];
    args.extend(mode_args("journal"));
    ok(with_bad_sha256_kernel(&mut vm(&j, &args)));
    check(&j, "journal with a bad kernel name");
}
