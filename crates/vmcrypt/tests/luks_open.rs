//! `vmcrypt luks open / close / status` (issue 10 item 9) end to end with the real
//! clients: a named NBD export that qemu-io and qemu-img write and read through
//! `nbd+unix://`, nbdinfo describes, and whose writes qemu-img then finds encrypted on
//! disk; cryptsetup's exit codes (status 0 active / 4 inactive, close 4 for an unknown
//! name); a wrong passphrase fails `open` itself and leaves no daemon; a second open of
//! a name is refused; a daemon killed with SIGKILL is seen as gone and cleaned up; the
//! passphrase never appears in the daemon's argv or environment.
//!
//! Every test uses its own run directory (`--run-dir`), never /run.
mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// A scratch dir with key file `pw`, a run dir `run` and a 40 MiB LUKS2 device
/// `disk.img` formatted by vmcrypt (fast KDF): 24 MiB of data at 16 MiB.
struct Setup {
    sc: Scratch,
    names: std::cell::RefCell<Vec<String>>,
}

impl Setup {
    fn new(format_args: &[&str]) -> Setup {
        let sc = Scratch::new();
        sc.write("pw", PASS);
        sc.write("bad", WRONG);
        let dev = sc.sparse("disk.img", 40 * MIB);
        let pw = sc.p("pw");
        let mut args = vec!["luks", "format", "-q", "--pbkdf-force-iterations", "1000"];
        args.extend_from_slice(&["--key-file", &pw]);
        args.extend_from_slice(format_args);
        args.push(&dev);
        vmcrypt(&args).ok();
        Setup {
            sc,
            names: Default::default(),
        }
    }

    fn run_dir(&self) -> String {
        self.sc.p("run")
    }

    fn dev(&self) -> String {
        self.sc.p("disk.img")
    }

    fn socket(&self, name: &str) -> String {
        format!("{}/{name}.sock", self.run_dir())
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///?socket={}", self.socket(name))
    }

    /// `vmcrypt luks open DEV NAME --run-dir RUN --key-file KEY EXTRA...`.
    fn open(&self, name: &str, key: &str, extra: &[&str]) -> Out {
        self.names.borrow_mut().push(name.into());
        let (dev, run, key) = (self.dev(), self.run_dir(), self.sc.p(key));
        let mut args = vec!["luks", "open", &dev, name, "--run-dir", &run];
        args.extend_from_slice(&["--key-file", &key]);
        args.extend_from_slice(extra);
        vmcrypt(&args)
    }

    fn status(&self, name: &str) -> Out {
        vmcrypt(&["luks", "status", name, "--run-dir", &self.run_dir()])
    }

    fn close(&self, name: &str) -> Out {
        vmcrypt(&["luks", "close", name, "--run-dir", &self.run_dir()])
    }

    /// The daemon's pid as `status` reports it.
    fn pid(&self, name: &str) -> String {
        let out = self.status(name).ok().stdout_str();
        let line = out.lines().find(|l| l.trim_start().starts_with("pid:"));
        line.expect("status names the pid")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    /// Files left in the run directory.
    fn run_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.run_dir()) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Processes whose command line names this test's run directory.
    fn daemons(&self) -> Vec<String> {
        processes_mentioning(&self.run_dir())
    }
}

impl Drop for Setup {
    /// No daemon outlives its test, whatever happened.
    fn drop(&mut self) {
        for n in self.names.borrow().iter() {
            let _ = vmcrypt(&["luks", "close", n, "--run-dir", &self.run_dir(), "--force"]);
        }
    }
}

#[test]
fn open_serve_close_with_qemu_and_nbdinfo() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    s.status("vm0").code_is(4).stdout_has("vm0 is inactive.");
    s.open("vm0", "pw", &[]).ok();
    let st = s.status("vm0").ok();
    for want in [
        "vm0 is active.",
        "type:    LUKS2",
        "cipher:  aes-xts-plain64",
        "keysize: 512 bits",
        &format!("device:  {}", s.dev()),
        "sector size:  4096",
        "offset:  32768 sectors",
        "size:    49152 sectors",
        "mode:    read/write",
        &format!("socket:  {}", s.socket("vm0")),
    ] {
        assert!(
            st.stdout_str().contains(want),
            "status lacks {want:?}\n{}",
            st.describe()
        );
    }
    let mode = std::fs::metadata(s.socket("vm0")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "the socket must be owner-only"
    );
    let info = tool("nbdinfo", &["--json", &s.uri("vm0")]).ok().json();
    assert_eq!(info["exports"][0]["export-size"], 24 * MIB, "{info}");
    // Write through the export with qemu-io, read it back with qemu-img.
    let plain = plaintext(24 << 20, "through nbd");
    let raw = s.sc.write("plain.raw", &plain);
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        &raw,
        &s.uri("vm0"),
    ])
    .ok();
    qemu_io(&["-f", "raw", "-c", "write -P 0x5a 1M 64k", &s.uri("vm0")]).ok();
    qemu_io(&["-f", "raw", "-c", "read -P 0x5a 1M 64k", &s.uri("vm0")])
        .ok()
        .stdout_has("read 65536/65536");
    let mut want = plain.clone();
    want[MIB as usize..MIB as usize + 65536].fill(0x5a);
    let back = s.sc.p("back.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &s.uri("vm0"), &back]).ok();
    assert_same_bytes(
        "read back through the export",
        &s.sc.read("back.raw"),
        &want,
    );
    s.close("vm0").ok();
    assert!(s.run_files().is_empty(), "left behind: {:?}", s.run_files());
    assert!(s.daemons().is_empty(), "daemon still running");
    s.status("vm0").code_is(4);
    // On disk the data is encrypted under the volume's key: vmcrypt's LUKS driver
    // (no daemon) decrypts the same bytes, and cryptsetup still takes the passphrase.
    let direct = decrypt_luks(vmcrypt, &s.sc, "pw", &s.dev(), None, "direct.raw");
    assert_same_bytes("decrypted from disk after close", &direct, &want);
    cs_test_pass(&s.sc, "pw", &s.dev(), &[]).ok();
}

#[test]
fn luks1_detached_header_read_only() {
    // A LUKS1 header in its own file; the device holds only data (qemu-img writes it).
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let dev = sc.sparse("disk.img", 4 * MIB);
    let hdr = sc.p("disk.hdr");
    let pw = sc.p("pw");
    vmcrypt(&[
        "luks",
        "format",
        "-q",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        &pw,
        "--header",
        &hdr,
        &dev,
    ])
    .ok();
    let plain = plaintext(4 << 20, "detached");
    sc.write("plain.raw", &plain);
    write_into_luks(qemu_img, &sc, "pw", "plain.raw", &dev, Some(&hdr));
    let run = sc.p("run");
    let open = [
        "luks",
        "open",
        &dev,
        "ro",
        "--run-dir",
        &run,
        "--key-file",
        &pw,
        "--header",
        &hdr,
        "--readonly",
    ];
    vmcrypt(&open).ok();
    let guard = CloseOnDrop(run.clone(), "ro");
    let st = vmcrypt(&["luks", "status", "ro", "--run-dir", &run]).ok();
    for want in [
        "type:    LUKS1",
        "mode:    readonly",
        "offset:  0 sectors",
        &format!("header:  {hdr}"),
    ] {
        assert!(
            st.stdout_str().contains(want),
            "status lacks {want:?}\n{}",
            st.describe()
        );
    }
    let uri = format!("nbd+unix:///?socket={run}/ro.sock");
    let back = sc.p("back.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, &back]).ok();
    assert_same_bytes("read-only export", &sc.read("back.raw"), &plain);
    qemu_io(&["-f", "raw", "-c", "write 0 4k", &uri]).failed();
    drop(guard);
    vmcrypt(&["luks", "status", "ro", "--run-dir", &run]).code_is(4);
}

/// Closes a name when dropped (for tests without a [`Setup`]).
struct CloseOnDrop(String, &'static str);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = vmcrypt(&["luks", "close", self.1, "--run-dir", &self.0]);
    }
}

#[test]
fn wrong_key_fails_open_and_leaves_no_daemon() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    s.open("vm0", "bad", &[])
        .code_is(2)
        .stderr_has("no key available with this passphrase");
    assert!(s.run_files().is_empty(), "left behind: {:?}", s.run_files());
    assert!(
        s.daemons().is_empty(),
        "a daemon survived: {:?}",
        s.daemons()
    );
    s.status("vm0").code_is(4);
    // A missing device is an error of `open` too.
    let run = s.run_dir();
    vmcrypt(&[
        "luks",
        "open",
        "/nonexistent/disk",
        "x",
        "--run-dir",
        &run,
        "--key-file",
        &s.sc.p("pw"),
    ])
    .code_is(3);
    assert!(s.daemons().is_empty());
}

#[test]
fn second_open_of_a_name_is_refused() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    s.open("vm0", "pw", &[]).ok();
    let pid = s.pid("vm0");
    s.open("vm0", "pw", &[])
        .code_is(5)
        .stderr_has("already exists");
    // The same device under another name is refused by its image lock.
    s.open("vm1", "pw", &[]).code_is(5).stderr_has("lock");
    assert_eq!(s.pid("vm0"), pid, "the first daemon must be untouched");
    assert_eq!(s.daemons(), vec![pid]);
    s.close("vm0").ok();
    s.close("vm0").code_is(4).stderr_has("not active");
}

/// A qemu-io client that holds an NBD connection to `name` for `ms` milliseconds.
fn hold_connection(s: &Setup, name: &str, ms: u32) -> std::process::Child {
    let child = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k", "-c", &format!("sleep {ms}")])
        .arg(s.uri(name))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io is installed");
    let sock = s.socket(name);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !connected(&sock) {
        assert!(std::time::Instant::now() < end, "qemu-io never connected");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Whether the kernel lists an accepted connection on `sock` (state 03).
fn connected(sock: &str) -> bool {
    let t = std::fs::read_to_string("/proc/net/unix").unwrap();
    t.lines()
        .any(|l| l.ends_with(sock) && l.split_whitespace().nth(5) == Some("03"))
}

/// `close` refuses while a client is connected (exit 5, as cryptsetup's "still in
/// use"), leaving the export serving; it closes once the client has gone, and
/// `--force` closes under a connected client.
#[test]
fn close_refuses_while_a_client_is_connected() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    s.open("vm0", "pw", &[]).ok();
    let mut client = hold_connection(&s, "vm0", 5000);
    s.close("vm0")
        .code_is(5)
        .stderr_has("still in use: 1 client(s)");
    s.status("vm0").ok();
    assert!(
        client.wait().unwrap().success(),
        "the client was not cut off"
    );
    s.close("vm0").ok();

    s.open("vm0", "pw", &[]).ok();
    let mut client = hold_connection(&s, "vm0", 20_000);
    let run = s.run_dir();
    vmcrypt(&["luks", "close", "vm0", "--run-dir", &run, "--force"]).ok();
    s.status("vm0").code_is(4);
    let _ = client.wait();
}

#[test]
fn a_killed_daemon_is_detected_and_cleaned_up() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    s.open("vm0", "pw", &[]).ok();
    tool("kill", &["-9", &s.pid("vm0")]).ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.status("vm0").code_is(4).stderr_has("died");
    // open takes the name over from the dead daemon.
    s.open("vm0", "pw", &[]).ok();
    qemu_io(&["-f", "raw", "-c", "read 0 4k", &s.uri("vm0")]).ok();
    tool("kill", &["-9", &s.pid("vm0")]).ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // close cleans up after it.
    s.close("vm0").ok().stderr_has("had died");
    assert!(s.run_files().is_empty(), "left behind: {:?}", s.run_files());
    s.close("vm0").code_is(4);
}

#[test]
fn passphrase_is_not_in_the_daemons_argv_or_environment() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    let (dev, run) = (s.dev(), s.run_dir());
    s.names.borrow_mut().push("vm0".into());
    // Prompted (stdin is not a terminal: one line), so it never is in a file either.
    let mut line = PASS.to_vec();
    line.push(b'\n');
    vmcrypt_stdin(&["luks", "open", &dev, "vm0", "--run-dir", &run], &line).ok();
    let pid = s.pid("vm0");
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(!bytes.is_empty(), "/proc/{pid}/{what} is empty");
        assert!(
            !bytes.windows(PASS.len()).any(|w| w == PASS),
            "the passphrase is in the daemon's {what}"
        );
    }
    s.close("vm0").ok();
}

#[test]
fn test_passphrase_opens_nothing() {
    let s = Setup::new(&["--pbkdf", "pbkdf2"]);
    let (dev, run) = (s.dev(), s.run_dir());
    let pw = s.sc.p("pw");
    for (key, code) in [(s.sc.p("pw"), 0), (s.sc.p("bad"), 2)] {
        let args = [
            "luks",
            "open",
            "--test-passphrase",
            &dev,
            "--key-file",
            &key,
        ];
        vmcrypt(&[&args[..], &["--run-dir", &run]].concat()).code_is(code);
    }
    assert!(s.run_files().is_empty() && s.daemons().is_empty());
    vmcrypt(&[
        "luks",
        "open",
        &dev,
        "../x",
        "--key-file",
        &pw,
        "--run-dir",
        &run,
    ])
    .code_is(1)
    .stderr_has("invalid device name");
}
