//! Shared helpers for the live interop tests: a deterministic plaintext generator (the
//! same one as shared/vectors/qemu/gen_plain.py), runners for `vmcrypt`, `qemu-img` and
//! `cryptsetup` that capture stdout/stderr and show them on failure, a `require_tool`
//! check that fails loudly when a tool is missing, [`shared`] (the one way to reach the
//! test data in `shared/` beside the checkout) and a scratch dir. The LUKS command lines
//! several test files run (create, write into, read back, cryptsetup key slots) are in
//! the `luks` submodule, the keyed qcow2 chains' qemu runs in `keyring`; both are
//! re-exported here.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Our binary under test.
pub const VMCRYPT: &str = env!("CARGO_BIN_EXE_vmcrypt");

/// The one definition of where the test data lives, shared with vmcrypt-crypto's tests.
#[path = "../../../vmcrypt-crypto/tests/common/shared_data.rs"]
mod shared_data;

/// `rel` inside the `shared/` folder beside the checkout (`../shared` from the workspace
/// root), as a string for command lines: e.g. `shared("vectors/qemu")` for the QEMU-made
/// vectors (see its README.txt). Fails the test, naming the path, when it is missing.
pub fn shared(rel: &str) -> String {
    let path = shared_data::shared_path(rel);
    path.to_str().expect("a UTF-8 checkout path").to_owned()
}

/// Passphrases used by the tests (written to files, never put on command lines).
pub const PASS: &[u8] = b"interop pass \xc3\xa9 1";
pub const PASS2: &[u8] = b"second-passphrase";
pub const PASS3: &[u8] = b"third passphrase!";
pub const WRONG: &[u8] = b"not the passphrase";

/// Which Debian package provides each external tool.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" | "qemu-io" => "qemu-utils",
        "nbdinfo" => "libnbd-bin",
        "cryptsetup" => "cryptsetup-bin",
        "openssl" => "openssl",
        "virsh" => "libvirt-clients",
        "qemu-x86_64" => "qemu-user (from bookworm-backports)",
        _ => "the package providing it",
    }
}

/// The full path of `tool` on PATH; panics (fails the test) when it is missing.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(tool);
        if cand.is_file() {
            return cand;
        }
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let cand = Path::new(dir).join(tool);
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "{tool} not found: install {} (this interop test needs the real tool and is never skipped)",
        package_of(tool)
    );
}

/// The result of running one external command.
pub struct Out {
    pub cmdline: String,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Everything about the run, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.stdout_str(),
            self.stderr
        )
    }

    /// Panic unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "command failed\n{}", self.describe());
        self
    }

    /// Panic unless the command exited with `code`.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code (wanted {code})\n{}",
            self.describe()
        );
        self
    }

    /// Panic unless the command failed (exited with a non-zero code, not a signal).
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "command should have failed with an exit code\n{}",
            self.describe()
        );
        self
    }

    /// Panic (showing everything) unless stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout_str().contains(needle),
            "expected stdout to contain {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// Panic unless stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr should mention {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// Parse stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

fn run_in(program: &Path, args: &[&str], dir: Option<&Path>, stdin: Option<&[u8]>) -> Out {
    use std::io::Write;
    use std::process::Stdio;
    let cmdline = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin pipe");
        // A child that refuses before reading its input closes the pipe first: that
        // is its answer, judged by its exit code and output, not a test failure.
        match si.write_all(input) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                panic!("writing the stdin of {cmdline}: {e}")
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmdline}: {e}"));
    Out {
        cmdline,
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn shell_quote(a: &str) -> String {
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=,./:+@%".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Run our binary.
pub fn vmcrypt(args: &[&str]) -> Out {
    run_in(Path::new(VMCRYPT), args, None, None)
}

/// Run our binary with `input` on stdin.
pub fn vmcrypt_stdin(args: &[&str], input: &[u8]) -> Out {
    run_in(Path::new(VMCRYPT), args, None, Some(input))
}

/// Run qemu-img (failing the test if it is not installed).
pub fn qemu_img(args: &[&str]) -> Out {
    run_in(&require_tool("qemu-img"), args, None, None)
}

/// Run cryptsetup (failing the test if it is not installed).
pub fn cryptsetup(args: &[&str]) -> Out {
    run_in(&require_tool("cryptsetup"), args, None, None)
}

/// Run any other tool by name (failing the test if it is not installed).
pub fn tool(name: &str, args: &[&str]) -> Out {
    run_in(&require_tool(name), args, None, None)
}

/// Deterministic plaintext, byte-identical to `gen_plain.py SIZE OUT SEED`: sector `s`
/// (512 bytes) is sha256(seed || le64(s)) repeated 16 times, except that sectors whose
/// byte offset lies in [256 KiB, 512 KiB) are all zeros (a hole).
pub fn plaintext(size: usize, seed: &str) -> Vec<u8> {
    assert_eq!(size % 512, 0, "plaintext size must be whole sectors");
    let mut out = Vec::with_capacity(size);
    for s in 0..size / 512 {
        let off = s * 512;
        if (256 * 1024..512 * 1024).contains(&off) {
            out.extend_from_slice(&[0u8; 512]);
        } else {
            let mut h = Sha256::new();
            h.update(seed.as_bytes());
            h.update((s as u64).to_le_bytes());
            let d = h.finalize();
            for _ in 0..16 {
                out.extend_from_slice(&d);
            }
        }
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[track_caller]
pub fn sha256_file(path: &Path) -> String {
    sha256_hex(&read(path))
}

/// Assert two byte strings are equal, reporting the first differing offset instead of
/// dumping megabytes.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: bytes differ (got {} bytes, want {}; first difference at offset {first} = sector {}; got sha256 {}, want sha256 {})",
        got.len(),
        want.len(),
        first / 512,
        sha256_hex(got),
        sha256_hex(want)
    );
}

/// A temporary directory for one test, removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("vmcrypt-interop-")
                .tempdir()
                .expect("creating a temporary directory"),
        }
    }

    /// Absolute path of `name` inside the scratch dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path(name)` as a String (for command lines).
    pub fn p(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("temporary paths are UTF-8")
            .to_string()
    }

    /// Write `bytes` to `name`; returns its path as a String.
    pub fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.path(name), bytes).expect("writing a scratch file");
        self.p(name)
    }

    /// Create an empty (sparse) file of `len` bytes.
    pub fn sparse(&self, name: &str, len: u64) -> String {
        let f = std::fs::File::create(self.path(name)).expect("creating a scratch file");
        f.set_len(len).expect("sizing a scratch file");
        self.p(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        read(&self.path(name))
    }

    /// The `--object` argument for a secret `id` read from key file `file`.
    pub fn secret(&self, id: &str, file: &str) -> String {
        format!("secret,id={id},file={}", self.p(file))
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Run qemu-io (failing the test if it is not installed).
pub fn qemu_io(args: &[&str]) -> Out {
    run_in(&require_tool("qemu-io"), args, None, None)
}

/// A runner of one tool ([`qemu_img`] or [`vmcrypt`]), for helpers that run the same
/// command line through either.
pub type Tool = fn(&[&str]) -> Out;

/// `vmcrypt convert -n -f raw DATA --target-image-opts TARGET`: write the raw file
/// `data` over the start of the node `target` names; the caller checks the outcome.
pub fn vmcrypt_write_raw(data: &str, target: &str) -> Out {
    vmcrypt(&[
        "convert",
        "-n",
        "-f",
        "raw",
        data,
        "--target-image-opts",
        target,
    ])
}

/// `qemu-img convert --object OBJECT --image-opts OPTS -O raw OUT`: read the node `opts`
/// names (keyed or configured by the one `object`) into the raw file at path `out`; the
/// caller checks the outcome.
pub fn qemu_convert_to_raw(object: &str, opts: &str, out: &str) -> Out {
    qemu_img(&[
        "convert",
        "--object",
        object,
        "--image-opts",
        opts,
        "-O",
        "raw",
        out,
    ])
}

/// `qemu-img convert -q -c -f raw -O qcow2 -o OPTS RAW IMG`: a qcow2 image of
/// compressed clusters made by QEMU from the raw file `raw`; panics on failure.
#[track_caller]
pub fn qemu_compressed_qcow2(opts: &str, raw: &str, img: &str) {
    #[rustfmt::skip]
    qemu_img(&["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, raw, img]).ok();
}

/// Borrow owned arguments as the `&str`s the runners take.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

mod keyring;
mod luks;
#[allow(unused_imports)] // not every test binary uses these
pub use {keyring::Keyring, luks::*};

/// The pids of the processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            found.push(pid);
        }
    }
    found
}
