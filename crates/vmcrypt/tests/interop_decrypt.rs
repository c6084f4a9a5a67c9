//! `vmcrypt luks reencrypt --decrypt` against `cryptsetup reencrypt --decrypt
//! --force-offline-reencrypt` on LUKS2 images with a detached header, made by
//! cryptsetup (`reencrypt --encrypt --header`). Whole runs in either tool leave the
//! original plaintext on the device (compared byte for byte) and the same header
//! metadata; each tool is interrupted at random points (kill -9 for checksum and
//! journal resilience, a clean stop for `none`) and the other one finishes; bad
//! input is refused with nothing written. 512- and 4096-byte sectors.
mod reencrypt_support;

use reencrypt_support::{
    Rng, assert_decrypted_header, cryptsetup_detached, dump_json, in_progress,
    interrupt_after_start, interrupt_mid_run, ok, refused_for_bad_sha256_kernel, vmcrypt,
    vmcrypt_detached, with_bad_sha256_kernel,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;
const DATA: u64 = 24 * MIB;

struct Image {
    dir: tempfile::TempDir,
    img: PathBuf,
    hdr: PathBuf,
    pw: PathBuf,
    plain: Vec<u8>,
}

/// Random plaintext encrypted in place by cryptsetup with a detached header.
fn image(sector: u32, seed: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let (img, hdr, pw) = (
        dir.path().join("d.img"),
        dir.path().join("d.hdr"),
        dir.path().join("pw"),
    );
    std::fs::write(&pw, b"secret").unwrap();
    let mut rng = Rng(seed);
    let plain: Vec<u8> = (0..DATA).map(|_| rng.next() as u8).collect();
    std::fs::write(&img, &plain).unwrap();
    ok(Command::new("cryptsetup")
        .args(["reencrypt", "--encrypt", "--type", "luks2", "-q"])
        .args(["--force-offline-reencrypt", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--sector-size"])
        .arg(sector.to_string())
        .arg("--header")
        .arg(&hdr)
        .arg("--key-file")
        .args([&pw, &img]));
    assert!(std::fs::read(&img).unwrap() != plain, "not encrypted");
    Image {
        dir,
        img,
        hdr,
        pw,
        plain,
    }
}

impl Image {
    /// A copy of this image (both files) in the same directory, named `name`.
    fn copy(&self, name: &str) -> Image {
        let (img, hdr) = (
            self.dir.path().join(format!("{name}.img")),
            self.dir.path().join(format!("{name}.hdr")),
        );
        std::fs::copy(&self.img, &img).unwrap();
        std::fs::copy(&self.hdr, &hdr).unwrap();
        Image {
            dir: tempfile::tempdir().unwrap(),
            img,
            hdr,
            pw: self.pw.clone(),
            plain: self.plain.clone(),
        }
    }
}

/// The device holds the plaintext, the header what cryptsetup leaves.
#[track_caller]
fn check(im: &Image, what: &str) {
    assert!(
        std::fs::read(&im.img).unwrap() == im.plain,
        "{what}: the device does not hold the plaintext"
    );
    assert_decrypted_header(&im.hdr, what);
}

fn cryptsetup(im: &Image, extra: &[&str]) -> Command {
    cryptsetup_detached(&im.pw, &im.hdr, &im.img, extra)
}

fn vmcrypt_decrypt(im: &Image, extra: &[&str]) -> Command {
    vmcrypt_detached(&im.pw, &im.hdr, &im.img, extra)
}

/// cryptsetup repairs an interrupted hotzone first, then resumes. After the repair of
/// the last hotzone (at offset 0) every regular segment is `linear` while the metadata
/// remains; cryptsetup 2.6.1's `--resume-only` would take that plaintext for
/// ciphertext and decrypt it again, so vmcrypt finishes that state.
fn cryptsetup_finish(im: &Image) {
    let (running, hot) = in_progress(&im.hdr);
    if hot {
        ok(Command::new("cryptsetup")
            .args(["repair", "-q", "--key-file"])
            .arg(&im.pw)
            .arg("--header")
            .args([&im.hdr, &im.img]));
        if in_progress(&im.hdr).0 && all_plaintext(&im.hdr) {
            vmcrypt_finish(im);
            return;
        }
    }
    if running && in_progress(&im.hdr).0 {
        ok(&mut cryptsetup(im, &["--resume-only"]));
    }
}

/// Whether every regular (not backup) segment is `linear`.
fn all_plaintext(hdr: &Path) -> bool {
    let j = dump_json(hdr);
    j["segments"]
        .as_object()
        .unwrap()
        .values()
        .filter(|s| !s["flags"].to_string().contains("backup-"))
        .all(|s| s["type"] == "linear")
}

fn vmcrypt_finish(im: &Image) {
    if in_progress(&im.hdr).0 {
        ok(&mut vmcrypt_decrypt(im, &["--resume-only"]));
    }
}

/// The regular segments and their digests, as cryptsetup shows them.
fn segments_and_digests(hdr: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let j = dump_json(hdr);
    let digests = j["digests"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d["segments"].clone())
        .collect();
    (j["segments"].clone(), digests)
}

#[test]
fn whole_runs_leave_the_plaintext_and_the_same_header() {
    for sector in [512u32, 4096] {
        let base = image(sector, u64::from(sector));
        let (a, b) = (base.copy("vm"), base.copy("cs"));
        ok(&mut vmcrypt_decrypt(&a, &["--decrypt"]));
        check(&a, &format!("{sector}: vmcrypt"));
        ok(&mut cryptsetup(&b, &["--decrypt"]));
        check(&b, &format!("{sector}: cryptsetup"));
        assert_eq!(dump_json(&a.hdr), dump_json(&b.hdr), "{sector}");
        let dump = ok(vmcrypt().args(["luks", "dump"]).arg(&a.hdr));
        assert!(
            dump.contains("  0: linear") && !dump.contains("cipher:"),
            "{dump}"
        );
    }
}

/// `--init-only` writes the same metadata in both tools, and each resumes the other's.
#[test]
fn init_only_matches_and_the_other_tool_resumes() {
    let base = image(4096, 3);
    for mode in ["checksum", "journal", "none"] {
        let (a, b) = (base.copy("vm"), base.copy("cs"));
        ok(&mut vmcrypt_decrypt(
            &a,
            &["--decrypt", "--init-only", "--resilience", mode],
        ));
        ok(&mut cryptsetup(
            &b,
            &["--decrypt", "--init-only", "--resilience", mode],
        ));
        let (ja, jb) = (dump_json(&a.hdr), dump_json(&b.hdr));
        assert_eq!(ja["segments"], jb["segments"], "{mode}");
        assert_eq!(ja["config"], jb["config"], "{mode}");
        let area = |j: &serde_json::Value| {
            let ks = j["keyslots"].as_object().unwrap();
            let r = ks.values().find(|k| k["type"] == "reencrypt").unwrap();
            r.clone()
        };
        assert_eq!(area(&ja), area(&jb), "{mode}");
        assert_eq!(
            segments_and_digests(&a.hdr).1.len(),
            segments_and_digests(&b.hdr).1.len()
        );
        ok(&mut cryptsetup(&a, &["--resume-only"]));
        check(&a, &format!("{mode}: vmcrypt init, cryptsetup run"));
        ok(&mut vmcrypt_decrypt(&b, &["--resume-only"]));
        check(&b, &format!("{mode}: cryptsetup init, vmcrypt run"));
    }
}

/// A vmcrypt run paused between hotzones writes the segments cryptsetup writes.
#[test]
fn paused_segments_match_cryptsetup() {
    let base = image(512, 5);
    let a = base.copy("vm");
    ok(&mut vmcrypt_decrypt(
        &a,
        &[
            "--decrypt",
            "--resilience",
            "journal",
            "--hotzone-size",
            "4M",
            "--max-hotzones",
            "2",
        ],
    ));
    let (segs, digests) = segments_and_digests(&a.hdr);
    let from = (DATA - 8 * MIB).to_string();
    assert_eq!(segs["0"]["size"], from.as_str(), "{segs}");
    assert_eq!(segs["1"]["type"], "linear", "{segs}");
    assert_eq!(segs["1"]["offset"], from.as_str(), "{segs}");
    assert_eq!(segs["2"]["flags"][0], "backup-previous", "{segs}");
    assert_eq!(segs["3"]["flags"][0], "backup-final", "{segs}");
    assert!(
        digests.contains(&serde_json::json!(["2", "0"])),
        "{digests:?}"
    );
    ok(&mut cryptsetup(&a, &["--resume-only"]));
    check(&a, "vmcrypt paused, cryptsetup finished");
}

const MODES: [&str; 2] = ["checksum", "journal"];

#[test]
fn cryptsetup_killed_vmcrypt_finishes() {
    let mut rng = Rng(0xdec1);
    let mut hot = 0;
    for sector in [512u32, 4096] {
        let base = image(sector, rng.next());
        for mode in MODES {
            for round in 0..3 {
                let im = base.copy("k");
                let ms = interrupt_after_start(
                    &[&im.img, &im.hdr],
                    &im.hdr,
                    &mut rng,
                    600,
                    "-KILL",
                    &|| {
                        cryptsetup(
                            &im,
                            &["--decrypt", "--resilience", mode, "--hotzone-size", "1M"],
                        )
                    },
                );
                hot += u32::from(in_progress(&im.hdr).1);
                vmcrypt_finish(&im);
                check(
                    &im,
                    &format!("{sector} {mode} round {round}: cryptsetup killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{hot} of 12 kills hit a hotzone in flight");
}

#[test]
fn vmcrypt_killed_cryptsetup_finishes() {
    let mut rng = Rng(0xdec2);
    let mut hot = 0;
    for sector in [512u32, 4096] {
        let base = image(sector, rng.next());
        for mode in MODES {
            for round in 0..4 {
                let im = base.copy("k");
                // Rounds 0 and 1 kill a whole run (start included); rounds 2 and 3 a
                // `--resume-only` run after `--init-only`, so more kills land in a
                // hotzone.
                let resume = round >= 2;
                if resume {
                    let init = ["--decrypt", "--init-only", "--resilience", mode];
                    ok(&mut vmcrypt_decrypt(&im, &init));
                }
                let args: &[&str] = if resume {
                    &["--resume-only", "--hotzone-size", "256K"]
                } else {
                    &["--decrypt", "--resilience", mode, "--hotzone-size", "256K"]
                };
                let max_ms = if resume { 250 } else { 400 };
                let ms = interrupt_mid_run(
                    &[&im.img, &im.hdr],
                    &im.hdr,
                    &mut rng,
                    max_ms,
                    "-KILL",
                    &|| vmcrypt_decrypt(&im, args),
                );
                hot += u32::from(in_progress(&im.hdr).1);
                cryptsetup_finish(&im);
                check(
                    &im,
                    &format!("{sector} {mode} round {round}: vmcrypt killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{hot} of 16 kills hit a hotzone in flight");
}

/// Resilience `none`: stopped between hotzones (SIGTERM for cryptsetup, a hotzone
/// limit for vmcrypt), then finished by the other tool.
#[test]
fn none_stopped_cleanly_other_tool_finishes() {
    for sector in [512u32, 4096] {
        let base = image(sector, 40 + u64::from(sector));
        let im = base.copy("cs");
        interrupt_after_start(
            &[&im.img, &im.hdr],
            &im.hdr,
            &mut Rng(9),
            400,
            "-TERM",
            &|| {
                cryptsetup(
                    &im,
                    &["--decrypt", "--resilience", "none", "--hotzone-size", "1M"],
                )
            },
        );
        vmcrypt_finish(&im);
        check(&im, &format!("{sector} none, cryptsetup stopped"));

        let im = base.copy("vm");
        ok(&mut vmcrypt_decrypt(
            &im,
            &[
                "--decrypt",
                "--resilience",
                "none",
                "--hotzone-size",
                "1M",
                "--max-hotzones",
                "5",
            ],
        ));
        assert!(in_progress(&im.hdr).0);
        cryptsetup_finish(&im);
        check(&im, &format!("{sector} none, vmcrypt stopped"));
    }
}

/// Runs `cmd`, which must fail with `code` and a message containing `want`, and leave
/// `files` as they were.
#[track_caller]
fn refused(mut cmd: Command, code: i32, want: &str, files: &[&Path]) {
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {err}");
    assert!(err.contains(want), "{cmd:?}: {err}");
    for (f, b) in files.iter().zip(&before) {
        assert!(std::fs::read(f).unwrap() == *b, "{cmd:?} wrote {f:?}");
    }
}

#[test]
fn bad_input_is_refused_and_nothing_written() {
    let im = image(4096, 77);
    let bad = im.dir.path().join("bad");
    std::fs::write(&bad, b"wrong").unwrap();
    let files = [im.img.as_path(), im.hdr.as_path()];
    // Wrong passphrase: exit 2.
    let mut c = vmcrypt();
    c.args([
        "luks",
        "reencrypt",
        "--decrypt",
        "--no-progress",
        "--key-file",
    ])
    .arg(&bad)
    .arg("--header")
    .args([&im.hdr, &im.img]);
    refused(c, 2, "passphrase", &files);
    // No --header: a usage error before anything is opened.
    let mut c = vmcrypt();
    c.args([
        "luks",
        "reencrypt",
        "--decrypt",
        "--no-progress",
        "--key-file",
    ])
    .args([&im.pw, &im.hdr]);
    refused(c, 1, "--header", &files);
    // A device with its own header and --header naming an existing file (here the
    // device itself): the header moves into a new file, so this is refused.
    let attached = im.dir.path().join("attached.img");
    std::fs::File::create(&attached)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--key-file"])
        .args([&im.pw, &attached]));
    let mut c = vmcrypt();
    c.args([
        "luks",
        "reencrypt",
        "--decrypt",
        "--no-progress",
        "--key-file",
    ])
    .arg(&im.pw)
    .arg("--header")
    .args([&attached, &attached]);
    refused(c, 1, "already exists", &[&attached]);
    // LUKS1 (detached header): not supported, before a passphrase is asked for.
    let (v1, v1hdr) = (im.dir.path().join("v1.img"), im.dir.path().join("v1.hdr"));
    std::fs::File::create(&v1)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    std::fs::File::create(&v1hdr)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks1", "-q", "--iter-time", "10"])
        .arg("--header")
        .arg(&v1hdr)
        .arg("--key-file")
        .args([&im.pw, &v1]));
    let mut c = vmcrypt();
    c.args([
        "luks",
        "reencrypt",
        "--decrypt",
        "--no-progress",
        "--key-file",
    ])
    .arg(&bad)
    .arg("--header")
    .args([&v1hdr, &v1]);
    refused(c, 4, "LUKS1", &[&v1, &v1hdr]);
    // Resuming where nothing is in progress.
    let mut c = vmcrypt_decrypt(&im, &["--resume-only"]);
    c.stdout(Stdio::null());
    refused(c, 1, "no LUKS2 reencryption", &files);
    // The untouched image still decrypts.
    ok(&mut vmcrypt_decrypt(&im, &["--decrypt"]));
    check(&im, "after the refusals");
}

/// `VMCRYPT_SHA256_KERNEL` naming no kernel: a decryption with checksum resilience is
/// refused before anything is written, when it starts and when it resumes (the
/// decryption engine checks the stored checksum hash when it loads the run); journal
/// and none runs hash nothing and are not refused.
#[test]
fn a_bad_sha256_kernel_name_refuses_only_runs_that_hash() {
    let im = image(4096, 79);
    let files = [im.img.as_path(), im.hdr.as_path()];
    let checksum = ["--decrypt", "--resilience", "checksum"];
    refused_for_bad_sha256_kernel(&mut vmcrypt_decrypt(&im, &checksum), &files);
    ok(&mut vmcrypt_decrypt(
        &im,
        &[&checksum[..], &["--init-only"]].concat(),
    ));
    refused_for_bad_sha256_kernel(&mut vmcrypt_decrypt(&im, &["--resume-only"]), &files);
    ok(&mut vmcrypt_decrypt(&im, &["--resume-only"]));
    check(&im, "checksum, resumed without the variable");
    for mode in ["journal", "none"] {
        let im = image(4096, 80);
        let c = &mut vmcrypt_decrypt(&im, &["--decrypt", "--resilience", mode]);
        ok(with_bad_sha256_kernel(c));
        check(&im, &format!("{mode} with a bad kernel name"));
    }
}
