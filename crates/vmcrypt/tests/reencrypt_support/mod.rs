//! What the reencryption tests (`interop_reencrypt.rs`, `online_reencrypt.rs`,
//! `interop_decrypt*.rs`, ...) share:
//! running vmcrypt and the real tools, a reproducible random source, stopping a run at
//! a random point, and reading the reencryption state of an image through
//! `cryptsetup luksDump`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// xorshift: reproducible random delays and data without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn vmcrypt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmcrypt"))
}

/// Runs `cmd`, fails the test unless it exits 0; its stdout and stderr, in that order.
#[track_caller]
fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (cryptsetup-bin, qemu-utils needed): {e}"));
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cmd:?} failed: {so}{se}");
    (so, se)
}

/// Runs `cmd`, which must succeed; its stdout.
#[track_caller]
pub fn ok(cmd: &mut Command) -> String {
    run(cmd).0
}

/// Runs `cmd`, which must succeed; its stdout followed by its stderr.
#[track_caller]
pub fn ok_both(cmd: &mut Command) -> String {
    let (so, se) = run(cmd);
    so + &se
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `cryptsetup luksDump --dump-json-metadata IMG`, parsed.
pub fn dump_json(img: &Path) -> serde_json::Value {
    let text = ok(Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(img));
    serde_json::from_str(&text).unwrap()
}

/// The digest value of the data segment's (segment 0's) volume key.
pub fn digest_of(img: &Path) -> String {
    let j = dump_json(img);
    let d = j["digests"].as_object().unwrap();
    d.values()
        .find(|d| d["segments"].as_array().unwrap().iter().any(|s| s == "0"))
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .unwrap()
}

/// Whether a mandatory requirement (a reencryption in progress) is set, and whether
/// a segment is flagged `in-reencryption` (a hotzone was interrupted). A header that
/// does not exist or does not load yet (a new header file being written) is not in
/// progress.
pub fn in_progress(img: &Path) -> (bool, bool) {
    let out = Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(img)
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return (false, false);
    };
    let running = j["config"]["requirements"]["mandatory"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    let hot = j["segments"].as_object().unwrap().values().any(|s| {
        s["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "in-reencryption"))
    });
    (running, hot)
}

/// Start `cmd`, stop it after `ms` with `signal` (it may have finished already).
pub fn interrupt(mut cmd: Command, ms: u64, signal: &str) {
    let child = cmd.spawn().expect("cannot start the reencryption");
    stop_after(child, ms, signal);
}

/// Stop `child` after `ms` with `signal` (it may have finished already) and reap it.
fn stop_after(mut child: Child, ms: u64, signal: &str) {
    std::thread::sleep(Duration::from_millis(ms));
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Run `cmd()` and stop it with `signal` after a random delay below `max_ms`, on fresh
/// copies of `files` each time, until a run is caught in the middle (`header` shows a
/// reencryption in progress: not before its start, not after its end). Returns the
/// delay that did.
#[track_caller]
pub fn interrupt_mid_run(
    files: &[&Path],
    header: &Path,
    rng: &mut Rng,
    max_ms: u64,
    signal: &str,
    cmd: &dyn Fn() -> Command,
) -> u64 {
    until_caught_mid_run(files, header, &mut || {
        let ms = 1 + rng.next() % max_ms;
        interrupt(cmd(), ms, signal);
        ms
    })
}

/// Like [`interrupt_mid_run`] for a tool whose start-up time varies (cryptsetup's
/// PBKDF benchmark on a loaded machine): the random delay below `max_ms` counts from
/// the moment `header` first shows the reencryption in progress.
#[track_caller]
pub fn interrupt_after_start(
    files: &[&Path],
    header: &Path,
    rng: &mut Rng,
    max_ms: u64,
    signal: &str,
    cmd: &dyn Fn() -> Command,
) -> u64 {
    until_caught_mid_run(files, header, &mut || {
        let ms = rng.next() % max_ms;
        let mut child = cmd().spawn().expect("cannot start the reencryption");
        let started = std::time::Instant::now();
        while !in_progress(header).0 && started.elapsed() < Duration::from_secs(60) {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        stop_after(child, ms, signal);
        ms
    })
}

/// On fresh copies of `files` each time, run `attempt` (start a run and stop it; it
/// returns its delay) until `header` shows a reencryption in progress; that delay.
#[track_caller]
fn until_caught_mid_run(files: &[&Path], header: &Path, attempt: &mut dyn FnMut() -> u64) -> u64 {
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for _ in 0..40 {
        for (f, o) in files.iter().zip(&originals) {
            std::fs::write(f, o).unwrap();
        }
        let ms = attempt();
        if in_progress(header).0 {
            return ms;
        }
    }
    panic!("no run was interrupted in the middle within 40 tries");
}

/// The volume key (hex) `cryptsetup luksDump --dump-volume-key` shows for `img`.
pub fn cryptsetup_volume_key(img: &Path, pw: &Path) -> String {
    let text = ok(Command::new("cryptsetup")
        .args([
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
        ])
        .args([pw, img]));
    let start = text.find("MK dump:").expect("a volume key dump");
    text[start + 8..]
        .split_whitespace()
        .take_while(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

/// Decrypt `samples` sectors of `img`'s data segment (the first, the last and random
/// ones; `aes-xts-plain64`) with the volume key cryptsetup reveals and OpenSSL's
/// AES-XTS, one data unit per sector (tweak: `iv_tweak` + offset / 512), and compare
/// each with `want`, the plaintext: a check through neither vmcrypt's header code nor
/// its ciphers. Returns how many sectors were checked.
#[track_caller]
pub fn check_with_cryptsetup_key(
    img: &Path,
    pw: &Path,
    want: &[u8],
    rng: &mut Rng,
    samples: usize,
) -> usize {
    let j = dump_json(img);
    let seg = &j["segments"]["0"];
    assert_eq!(seg["encryption"], "aes-xts-plain64", "{seg}");
    let num = |v: &serde_json::Value| -> u64 {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap()
    };
    let (offset, ss, tweak) = (
        num(&seg["offset"]),
        num(&seg["sector_size"]),
        num(&seg["iv_tweak"]),
    );
    let key = hex::decode(cryptsetup_volume_key(img, pw)).unwrap();
    let cipher = match key.len() {
        32 => openssl::symm::Cipher::aes_128_xts(),
        64 => openssl::symm::Cipher::aes_256_xts(),
        n => panic!("a {n}-byte XTS key"),
    };
    let file = std::fs::read(img).unwrap();
    let sectors = want.len() as u64 / ss;
    let picks = [0, sectors - 1]
        .into_iter()
        .chain((2..samples).map(|_| rng.next() % sectors));
    let mut n = 0;
    for k in picks {
        let at = (k * ss) as usize;
        let from = offset as usize + at;
        let mut iv = (tweak + k * ss / 512).to_le_bytes().to_vec();
        iv.resize(16, 0);
        let got = openssl::symm::decrypt(cipher, &key, Some(&iv), &file[from..from + ss as usize])
            .unwrap();
        assert!(
            got == want[at..at + ss as usize],
            "sector {k} ({ss} bytes) does not decrypt to the plaintext with cryptsetup's key"
        );
        n += 1;
    }
    n
}

/// `cryptsetup reencrypt --force-offline-reencrypt` of `img` with the detached header
/// `hdr`, quiet.
pub fn cryptsetup_detached(pw: &Path, hdr: &Path, img: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("cryptsetup");
    c.args(["reencrypt", "--force-offline-reencrypt", "-q", "--key-file"])
        .arg(pw)
        .arg("--header")
        .arg(hdr)
        .args(extra)
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// `vmcrypt luks reencrypt` of `img` with the detached header `hdr`.
pub fn vmcrypt_detached(pw: &Path, hdr: &Path, img: &Path, extra: &[&str]) -> Command {
    let mut c = vmcrypt();
    c.args(["luks", "reencrypt", "--no-progress", "--key-file"])
        .arg(pw)
        .arg("--header")
        .arg(hdr)
        .args(extra)
        .arg(img);
    c
}

/// The header a finished decryption leaves: one `linear` segment from 0, no key
/// slots, digests or tokens, no requirement.
#[track_caller]
pub fn assert_decrypted_header(hdr: &Path, what: &str) {
    let j = dump_json(hdr);
    assert_eq!(
        j["segments"],
        serde_json::json!({"0": {"type": "linear", "offset": "0", "size": "dynamic"}}),
        "{what}: {j}"
    );
    for k in ["keyslots", "digests", "tokens"] {
        assert_eq!(j[k], serde_json::json!({}), "{what}: {k} left: {j}");
    }
    assert!(j["config"].get("requirements").is_none(), "{what}: {j}");
}

/// `cmd` with `VMCRYPT_SHA256_KERNEL` naming no kernel.
pub fn with_bad_sha256_kernel(cmd: &mut Command) -> &mut Command {
    cmd.env(vmcrypt_crypto::sha256_kernel::KERNEL_ENV, "avx1024")
}

/// Runs `cmd` with a bad `VMCRYPT_SHA256_KERNEL` ([`with_bad_sha256_kernel`]): it must
/// fail with a usage error naming the variable and leave each of `files` as it was
/// (absent ones absent).
#[track_caller]
pub fn refused_for_bad_sha256_kernel(cmd: &mut Command, files: &[&Path]) {
    let before: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
    let out = with_bad_sha256_kernel(cmd).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
    assert!(
        err.contains("VMCRYPT_SHA256_KERNEL=avx1024: unknown SHA-256 kernel"),
        "{cmd:?}: {err}"
    );
    for (f, b) in files.iter().zip(&before) {
        assert!(std::fs::read(f).ok() == *b, "{cmd:?} wrote {f:?}");
    }
}
