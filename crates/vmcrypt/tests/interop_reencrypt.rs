//! `vmcrypt luks reencrypt` against `cryptsetup reencrypt --force-offline-reencrypt`:
//! each tool is interrupted at random points (kill -9 for checksum and journal
//! resilience, a clean stop for `none`, which cannot survive a kill inside a hotzone
//! in either tool) and the other one finishes the run. Every time the data decrypts
//! to the original plaintext (compared by SHA-256), and `cryptsetup luksDump` shows
//! a new volume key digest and no requirement left. 512- and 4096-byte sectors.
mod reencrypt_support;

use reencrypt_support::{
    Rng, digest_of, dump_json, in_progress, interrupt_mid_run, ok, refused_for_bad_sha256_kernel,
    sha256, vmcrypt,
};
use std::path::PathBuf;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;
const DATA: u64 = 24 * MIB;

struct Image {
    dir: tempfile::TempDir,
    img: PathBuf,
    pw: PathBuf,
    sha: String,
    digest: String,
}

/// A cryptsetup LUKS2 image with `sector`-byte sectors and DATA bytes of random data.
fn image(sector: u32, seed: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let (img, pw, plain) = (
        dir.path().join("d.img"),
        dir.path().join("pw"),
        dir.path().join("plain"),
    );
    std::fs::write(&pw, b"secret").unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 * MIB + DATA)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--sector-size"])
        .arg(sector.to_string())
        .arg("--key-file")
        .args([&pw, &img]));
    let mut rng = Rng(seed);
    let data: Vec<u8> = (0..DATA).map(|_| rng.next() as u8).collect();
    std::fs::write(&plain, &data).unwrap();
    let secret = format!("secret,id=s0,file={}", pw.display());
    let target = format!("driver=luks,key-secret=s0,file.filename={}", img.display());
    ok(vmcrypt()
        .args([
            "convert",
            "-q",
            "-n",
            "-f",
            "raw",
            "--target-image-opts",
            "--object",
        ])
        .args([&secret, plain.to_str().unwrap(), &target]));
    let sha = sha256(&plain);
    let digest = digest_of(&img);
    Image {
        dir,
        img,
        pw,
        sha,
        digest,
    }
}

/// The image's plaintext hash, its header clean and its volume key new.
#[track_caller]
fn check(im: &Image, what: &str) {
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&im.img));
    assert!(!dump.contains("Requirements"), "{what}: {dump}");
    assert!(!dump.contains("reencrypt"), "{what}: {dump}");
    assert_ne!(
        digest_of(&im.img),
        im.digest,
        "{what}: volume key not changed"
    );
    let out = im.dir.path().join("out");
    let secret = format!("secret,id=s0,file={}", im.pw.display());
    let src = format!(
        "driver=luks,key-secret=s0,file.filename={}",
        im.img.display()
    );
    ok(vmcrypt()
        .args([
            "convert",
            "-q",
            "-O",
            "raw",
            "--object",
            &secret,
            "--image-opts",
        ])
        .args([&src, out.to_str().unwrap()]));
    assert_eq!(sha256(&out), im.sha, "{what}: plaintext differs");
}

fn cryptsetup_reencrypt(im: &Image, extra: &[&str]) -> Command {
    let mut c = Command::new("cryptsetup");
    c.args(["reencrypt", "--force-offline-reencrypt", "-q", "--key-file"])
        .arg(&im.pw)
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
        .args(extra)
        .arg(&im.img)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn vmcrypt_reencrypt(im: &Image, extra: &[&str]) -> Command {
    let mut c = vmcrypt();
    c.args(["luks", "reencrypt", "--no-progress", "--key-file"])
        .arg(&im.pw)
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
        .args(extra)
        .arg(&im.img);
    c
}

/// cryptsetup asks for `repair` when a hotzone was interrupted, then resumes.
fn cryptsetup_finish(im: &Image) {
    let (running, hot) = in_progress(&im.img);
    if hot {
        ok(Command::new("cryptsetup")
            .args(["repair", "-q", "--key-file"])
            .args([&im.pw, &im.img]));
    }
    if running && in_progress(&im.img).0 {
        ok(&mut cryptsetup_reencrypt(im, &["--resume-only"]));
    }
}

fn vmcrypt_finish(im: &Image) {
    if in_progress(&im.img).0 {
        ok(&mut vmcrypt_reencrypt(im, &["--resume-only"]));
    }
}

const MODES: [&str; 2] = ["checksum", "journal"];

#[test]
fn cryptsetup_killed_vmcrypt_finishes() {
    let mut rng = Rng(0x5eed);
    let mut interrupted = 0;
    for sector in [512u32, 4096] {
        for mode in MODES {
            for round in 0..3 {
                let im = image(sector, rng.next());
                let ms = interrupt_mid_run(&[&im.img], &im.img, &mut rng, 400, "-KILL", &|| {
                    cryptsetup_reencrypt(&im, &["--resilience", mode, "--hotzone-size", "1M"])
                });
                interrupted += u32::from(in_progress(&im.img).1);
                vmcrypt_finish(&im);
                check(
                    &im,
                    &format!("{sector} {mode} round {round} killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{interrupted} of 12 kills hit a hotzone in flight");
}

#[test]
fn vmcrypt_killed_cryptsetup_finishes() {
    let mut rng = Rng(0xfeed);
    let mut interrupted = 0;
    for sector in [512u32, 4096] {
        for mode in MODES {
            for round in 0..3 {
                let im = image(sector, rng.next());
                let ms = interrupt_mid_run(&[&im.img], &im.img, &mut rng, 300, "-KILL", &|| {
                    vmcrypt_reencrypt(&im, &["--resilience", mode, "--hotzone-size", "256K"])
                });
                interrupted += u32::from(in_progress(&im.img).1);
                cryptsetup_finish(&im);
                check(
                    &im,
                    &format!("{sector} {mode} round {round} killed at {ms} ms"),
                );
            }
        }
    }
    eprintln!("{interrupted} of 12 kills hit a hotzone in flight");
}

/// Resilience `none`: stopped between hotzones (SIGTERM for cryptsetup, a hotzone
/// limit for vmcrypt), then finished by the other tool.
#[test]
fn none_stopped_cleanly_other_tool_finishes() {
    for sector in [512u32, 4096] {
        let im = image(sector, 11);
        interrupt_mid_run(&[&im.img], &im.img, &mut Rng(7), 150, "-TERM", &|| {
            cryptsetup_reencrypt(&im, &["--resilience", "none", "--hotzone-size", "1M"])
        });
        vmcrypt_finish(&im);
        check(&im, &format!("{sector} none, cryptsetup stopped"));

        let im = image(sector, 12);
        ok(&mut vmcrypt_reencrypt(
            &im,
            &[
                "--resilience",
                "none",
                "--hotzone-size",
                "1M",
                "--max-hotzones",
                "5",
            ],
        ));
        assert!(in_progress(&im.img).0);
        cryptsetup_finish(&im);
        check(&im, &format!("{sector} none, vmcrypt stopped"));
    }
}

/// Whole runs in one tool, with a new sector size and cipher key size: cryptsetup
/// reads the result, and a wrong passphrase changes nothing.
#[test]
fn whole_run_with_new_geometry_and_wrong_key_refused() {
    let im = image(512, 21);
    let before = std::fs::read(&im.img).unwrap();
    let bad = im.dir.path().join("bad");
    std::fs::write(&bad, b"wrong").unwrap();
    let out = vmcrypt()
        .args(["luks", "reencrypt", "--no-progress", "--key-file"])
        .args([&bad, &im.img])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        std::fs::read(&im.img).unwrap() == before,
        "a refused run wrote"
    );
    ok(&mut vmcrypt_reencrypt(
        &im,
        &["--sector-size", "4096", "--key-size", "256"],
    ));
    check(&im, "new sector size");
    let j = dump_json(&im.img);
    assert_eq!(j["segments"]["0"]["sector_size"], 4096);
    let ks = j["keyslots"].as_object().unwrap();
    assert_eq!(ks.len(), 1, "{ks:?}");
    assert_eq!(ks.values().next().unwrap()["key_size"], 32);
}

/// `VMCRYPT_SHA256_KERNEL` naming no kernel is refused before any write; each kernel
/// this CPU runs, forced by name, computes `checksum` hotzones that leave an image
/// cryptsetup reads back (a kernel the CPU lacks is refused, and printed as not run).
#[test]
fn each_sha256_kernel_reencrypts_and_a_bad_name_is_refused() {
    use vmcrypt_crypto::sha256_kernel::{KERNEL_ENV, Sha256Kernel};
    let im = image(512, 23);
    let before = std::fs::read(&im.img).unwrap();
    let out = vmcrypt_reencrypt(&im, &["--resilience", "checksum"])
        .env(KERNEL_ENV, "avx1024")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("VMCRYPT_SHA256_KERNEL=avx1024: unknown SHA-256 kernel"),
        "{err}"
    );
    assert!(
        std::fs::read(&im.img).unwrap() == before,
        "a refused run wrote"
    );
    // A LUKS1 image is converted to LUKS2 first: refused before that write.
    let v1 = im.dir.path().join("v1.img");
    std::fs::File::create(&v1)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks1", "-q", "--iter-time", "10"])
        .arg("--key-file")
        .args([&im.pw, &v1]));
    let mut c = vmcrypt();
    c.args(["luks", "reencrypt", "--no-progress", "--key-file"])
        .arg(&im.pw)
        .arg(&v1);
    refused_for_bad_sha256_kernel(&mut c, &[&v1]);
    for k in Sha256Kernel::ALL {
        let mut c = vmcrypt_reencrypt(&im, &["--resilience", "checksum"]);
        c.env(KERNEL_ENV, k.name());
        if k.available() {
            ok(&mut c);
            check(&im, k.name());
        } else {
            println!("sha256 kernel {k}: NOT RUN (this CPU lacks it)");
            let out = c.output().unwrap();
            assert!(!out.status.success(), "{k}: {out:?}");
        }
    }
}

/// LUKS1: re-keyed through LUKS2 and back; paused half way it is a LUKS2 image that
/// cryptsetup reads and `--resume-only` finishes, conversion back included.
#[test]
fn luks1_is_rekeyed_through_luks2_and_back() {
    let im = image(512, 31);
    // Replace the LUKS2 test image by a LUKS1 one (payload at 2 MiB) holding the same
    // plaintext.
    std::fs::File::create(&im.img)
        .unwrap()
        .set_len(2 * MIB + DATA)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks1", "-q", "--iter-time", "10"])
        .arg("--key-file")
        .args([&im.pw, &im.img]));
    let plain = im.dir.path().join("plain");
    let secret = format!("secret,id=s0,file={}", im.pw.display());
    let target = format!(
        "driver=luks,key-secret=s0,file.filename={}",
        im.img.display()
    );
    ok(vmcrypt()
        .args([
            "convert",
            "-q",
            "-n",
            "-f",
            "raw",
            "--target-image-opts",
            "--object",
        ])
        .args([&secret, plain.to_str().unwrap(), &target]));
    let v1_digest = || {
        let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&im.img));
        assert!(dump.contains("Version:       \t1"), "{dump}");
        dump.lines()
            .skip_while(|l| !l.starts_with("MK digest"))
            .take(2)
            .collect::<Vec<_>>()
            .join("")
    };
    let before = v1_digest();
    let untouched = std::fs::read(&im.img).unwrap();
    let out = vmcrypt_reencrypt(&im, &["--cipher", "rot13-xts-plain64"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        std::fs::read(&im.img).unwrap() == untouched,
        "a refused LUKS1 re-key wrote"
    );
    ok(&mut vmcrypt_reencrypt(
        &im,
        &["--hotzone-size", "1M", "--max-hotzones", "3"],
    ));
    let (running, _) = in_progress(&im.img);
    assert!(running, "paused LUKS1 re-key is not a LUKS2 reencryption");
    let j = dump_json(&im.img);
    assert!(
        j["tokens"].to_string().contains("vmcrypt-luks1-rekey"),
        "{j}"
    );
    ok(&mut vmcrypt_reencrypt(&im, &["--resume-only"]));
    assert_ne!(v1_digest(), before, "the LUKS1 volume key did not change");
    let out = im.dir.path().join("out");
    let src = format!(
        "driver=luks,key-secret=s0,file.filename={}",
        im.img.display()
    );
    ok(vmcrypt()
        .args([
            "convert",
            "-q",
            "-O",
            "raw",
            "--object",
            &secret,
            "--image-opts",
        ])
        .args([&src, out.to_str().unwrap()]));
    assert_eq!(sha256(&out), im.sha, "LUKS1 plaintext differs");
    ok(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .args([&im.pw, &im.img]));
}

/// Data that is not whole sectors of the new size (or whole checksum blocks) is refused
/// before anything is written, as cryptsetup refuses it: a started run could not be
/// loaded again.
#[test]
fn misaligned_data_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let (img, pw) = (dir.path().join("d.img"), dir.path().join("pw"));
    std::fs::write(&pw, b"secret").unwrap();
    // 16 MiB of header plus 1 MiB and three 512-byte sectors of data.
    std::fs::File::create(&img)
        .unwrap()
        .set_len(17 * MIB + 3 * 512)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--sector-size", "512"])
        .arg("--key-file")
        .args([&pw, &img]));
    let before = std::fs::read(&img).unwrap();
    for extra in [
        &["--sector-size", "4096", "--resilience", "journal"][..],
        &["--resilience", "checksum"][..],
    ] {
        let out = vmcrypt()
            .args(["luks", "reencrypt", "--no-progress", "--key-file"])
            .args([&pw, &img])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted: {out:?}");
        assert!(err.contains("not a multiple of"), "{extra:?}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{extra:?} wrote");
    }
    // The same image re-keys with its own sector size and journal resilience.
    ok(vmcrypt()
        .args([
            "luks",
            "reencrypt",
            "--no-progress",
            "--resilience",
            "journal",
        ])
        .arg("--key-file")
        .args([&pw, &img]));
}
