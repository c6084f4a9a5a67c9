//! No key bytes where they could leak. The commands that handle a stored secret run
//! against one LUKS image (`secret set-value`, `convert` with `--object
//! secret,store-uuid=...` both ways, `serve` and `luks open` holding the volume key);
//! then the passphrase and the volume key (raw, hex, base64) are searched for in every
//! command's stdout and stderr (the servers log at trace level), the servers'
//! `/proc/PID/cmdline` and `/proc/PID/environ`, and every file left in the store, run,
//! temp and scratch directories, `/dev/shm` and the top of `/tmp`. The servers must be
//! non-dumpable (seen from outside: a non-dumpable process's `/proc/PID` files belong to
//! root even when it runs as another user) and, as root, have memory locked (`VmLck`).
mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The passphrase: only ever on a pipe, never in a file the test writes.
const PASS_LEAK: &[u8] = b"key-leak test passphrase 4b1d93e0";
const UUID: &str = "6c1f3a52-7d0e-4f4b-9a8e-2b5c7d9e0f13";

/// The directories the commands use, and everything they printed.
struct Leak {
    sc: Scratch,
    /// (what, bytes) of every captured output and /proc file.
    seen: Vec<(String, Vec<u8>)>,
}

impl Leak {
    fn new() -> Leak {
        let sc = Scratch::new();
        for d in ["run", "tmp", "logs"] {
            std::fs::create_dir(sc.path(d)).unwrap();
        }
        Leak {
            sc,
            seen: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(VMCRYPT);
        c.args(args)
            .env("VMCRYPT_SECRET_STORE", self.sc.path("store"))
            .env("VMCRYPT_RUN_DIR", self.sc.path("run"))
            .env("TMPDIR", self.sc.path("tmp"))
            .env("VMCRYPT_LOG", "trace")
            .env_remove("VMCRYPT_MASTER_KEY_FILE")
            .env_remove("VMCRYPT_MASTER_KEY_PASSPHRASE_FILE")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("VMCRYPT_MLOCK");
        c
    }

    /// Run vmcrypt with `input` on stdin; its output is kept for the search.
    fn run(&mut self, args: &[&str], input: &[u8]) -> Out {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let what = format!("vmcrypt {}", args.join(" "));
        self.seen
            .push((format!("stdout of {what}"), out.stdout.clone()));
        self.seen
            .push((format!("stderr of {what}"), out.stderr.clone()));
        Out {
            cmdline: what,
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Keep `/proc/PID/cmdline` and `environ` of a running server for the search.
    fn see_proc(&mut self, pid: u32, who: &str) {
        for f in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
            assert!(!bytes.is_empty(), "/proc/{pid}/{f} of {who} is empty");
            self.seen.push((format!("/proc/PID/{f} of {who}"), bytes));
        }
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field));
    line.unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

fn wait_for_socket(sock: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child) {
    tool("kill", &["-TERM", &child.id().to_string()]).ok();
    child.wait().unwrap();
}

/// The volume key, as cryptsetup dumps it (passphrase on its stdin).
fn volume_key(img: &str) -> Vec<u8> {
    use std::io::Write;
    #[rustfmt::skip]
    let mut child = Command::new(require_tool("cryptsetup"))
        .args(["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", "-", img])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(PASS_LEAK).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cryptsetup luksDump --dump-volume-key failed"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let at = text
        .find("MK dump:")
        .expect("MK dump in the luksDump output");
    let key: Vec<u8> = text[at + "MK dump:".len()..]
        .split_whitespace()
        .map_while(|t| {
            (t.len() == 2)
                .then(|| u8::from_str_radix(t, 16).ok())
                .flatten()
        })
        .collect();
    assert_eq!(key.len(), 64, "an aes-xts-plain64 512-bit volume key");
    key
}

/// The byte strings that must appear nowhere: passphrase and volume key, raw, as hex
/// and as base64.
fn needles(vk: &[u8]) -> Vec<(String, Vec<u8>)> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let b64 = |b: &[u8]| vmcrypt_secrets::base64_encode(b).as_bytes().to_vec();
    vec![
        ("the passphrase".into(), PASS_LEAK.to_vec()),
        ("the passphrase in base64".into(), b64(PASS_LEAK)),
        ("the volume key".into(), vk.to_vec()),
        ("the volume key in hex".into(), hex(vk).into_bytes()),
        (
            "the volume key's first half in hex".into(),
            hex(&vk[..32]).into_bytes(),
        ),
        ("the volume key in base64".into(), b64(vk)),
    ]
}

/// Every regular file under `dir` (recursively unless `shallow`) changed since `since`.
fn files_under(dir: &Path, shallow: bool, since: SystemTime, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() && !shallow {
            files_under(&e.path(), false, since, out);
        } else if md.is_file() && md.modified().is_ok_and(|m| m >= since) && md.len() < 1 << 26 {
            out.push(e.path());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_key_bytes_in_argv_environment_logs_or_files_and_servers_are_hardened() {
    let started = SystemTime::now() - Duration::from_secs(2);
    let mut l = Leak::new();
    let xml = format!(
        "<secret ephemeral='no' private='yes'><uuid>{UUID}</uuid>\
         <usage type='volume'><volume>{}</volume></usage></secret>",
        l.sc.p("d.luks")
    );
    let xml_file = l.sc.write("s.xml", xml.as_bytes());
    l.run(&["secret", "define", &xml_file], b"").ok();
    l.run(&["secret", "set-value", UUID, "--plain"], PASS_LEAK)
        .ok();

    let data = plaintext(1 << 20, "key-leak");
    let raw = l.sc.write("data.raw", &data);
    let img = l.sc.p("d.luks");
    let obj = format!("secret,id=s0,store-uuid={UUID}");
    #[rustfmt::skip]
    l.run(&["convert", "--object", &obj, "-f", "raw", "-O", "luks", "-o", "key-secret=s0,iter-time=10", &raw, &img], b"").ok();
    let opts = format!("driver=luks,key-secret=s0,file.filename={img}");
    let back = l.sc.p("back.raw");
    #[rustfmt::skip]
    l.run(&["convert", "--object", &obj, "--image-opts", &opts, "-O", "raw", &back], b"").ok();
    assert_same_bytes("decrypted copy", &read(Path::new(&back)), &data);
    let vk = volume_key(&img);

    // serve, as root: memory locked, the export reads the plaintext.
    let sock = l.sc.path("run/d.sock");
    let sock_s = sock.to_str().unwrap().to_owned();
    #[rustfmt::skip]
    let mut serve = l.command(&["serve", "--persistent", "--socket", &sock_s, "--object", &obj, "--image-opts", &opts])
        .stdout(std::fs::File::create(l.sc.path("logs/serve.out")).unwrap())
        .stderr(std::fs::File::create(l.sc.path("logs/serve.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_socket(&sock, &mut serve);
    let got = l.sc.p("served.raw");
    tool("nbdcopy", &[&format!("nbd+unix:///?socket={sock_s}"), &got]).ok();
    assert_same_bytes("served export", &read(Path::new(&got)), &data);
    assert_ne!(
        status_field(serve.id(), "VmLck:"),
        "0",
        "serve did not lock its memory"
    );
    l.see_proc(serve.id(), "serve");
    stop(serve);

    // luks open: the daemon holding the volume key, passphrase on stdin.
    let run = l.sc.p("run");
    let mut line = PASS_LEAK.to_vec();
    line.push(b'\n');
    l.run(&["luks", "open", &img, "vm0", "--run-dir", &run], &line)
        .ok();
    let st = l
        .run(&["luks", "status", "vm0", "--run-dir", &run], b"")
        .ok();
    let pid: u32 = st
        .stdout_str()
        .lines()
        .find_map(|s| {
            s.trim()
                .strip_prefix("pid:")
                .map(|p| p.trim().parse().unwrap())
        })
        .expect("status names the daemon's pid");
    assert_ne!(
        status_field(pid, "VmLck:"),
        "0",
        "the luks daemon did not lock its memory"
    );
    l.see_proc(pid, "the luks open daemon");
    l.run(&["luks", "close", "vm0", "--run-dir", &run], b"")
        .ok();

    // Non-dumpable, seen from outside: run serve as nobody; its /proc files stay root's.
    let nobody_pid_owner = serve_as_nobody(&l, &obj);
    assert_eq!(nobody_pid_owner, 0, "serve (as nobody) is dumpable");

    let needles = needles(&vk);
    for (what, bytes) in &l.seen {
        for (n, needle) in &needles {
            assert!(!find(bytes, needle), "{n} is in the {what}");
        }
    }
    let mut files = Vec::new();
    files_under(l.sc.path("").as_path(), false, started, &mut files);
    let scratch_files = files.len();
    files_under(Path::new("/dev/shm"), false, started, &mut files);
    files_under(Path::new("/tmp"), true, started, &mut files);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for want in [
        "store/master.key",
        &format!("store/{UUID}.value"),
        "logs/serve.err",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} not searched: {names:?}"
        );
    }
    assert!(scratch_files >= 8, "{names:?}");
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        for (n, needle) in &needles {
            assert!(!find(&bytes, needle), "{n} is in the file {}", f.display());
        }
    }
    let log = std::fs::read_to_string(l.sc.path("logs/serve.err")).unwrap();
    assert!(log.contains("not_dumpable=true"), "serve's log: {log}");
    let tmp_left: Vec<_> = std::fs::read_dir(l.sc.path("tmp")).unwrap().collect();
    assert!(tmp_left.is_empty(), "files left in TMPDIR: {tmp_left:?}");
    let run_left: Vec<_> = std::fs::read_dir(l.sc.path("run")).unwrap().collect();
    assert!(
        run_left.is_empty(),
        "files left in the run directory: {run_left:?}"
    );
}

/// Serve the image as user nobody (from copies of the store and image nobody owns);
/// the owner of its `/proc/PID/status`, which is root when it is non-dumpable. A plain
/// `sleep` as nobody shows the check can tell: its file belongs to nobody.
fn serve_as_nobody(l: &Leak, obj: &str) -> u32 {
    const NOBODY: u32 = 65534;
    let dir = l.sc.path("nobody");
    std::fs::create_dir(&dir).unwrap();
    tool(
        "cp",
        &[
            "-a",
            &l.sc.p("store"),
            &l.sc.p("d.luks"),
            dir.to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::create_dir(dir.join("tmp")).unwrap();
    tool("chown", &["-R", "65534:65534", dir.to_str().unwrap()]).ok();
    tool("chmod", &["0711", &l.sc.p("")]).ok();
    let sock = dir.join("s.sock");
    let opts = format!(
        "driver=luks,key-secret=s0,file.filename={}",
        dir.join("d.luks").display()
    );
    #[rustfmt::skip]
    let mut child = l.command(&["serve", "--persistent", "--socket", sock.to_str().unwrap(), "--object", obj, "--image-opts", &opts])
        .env("VMCRYPT_SECRET_STORE", dir.join("store"))
        .env("TMPDIR", dir.join("tmp"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(l.sc.path("logs/nobody.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_socket(&sock, &mut child);
    let owner = std::fs::metadata(format!("/proc/{}/status", child.id()))
        .unwrap()
        .uid();
    stop(child);
    let mut sleeper = Command::new(require_tool("sleep"))
        .arg("30")
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .unwrap();
    let control = std::fs::metadata(format!("/proc/{}/status", sleeper.id()))
        .unwrap()
        .uid();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert_eq!(
        control, NOBODY,
        "a dumpable process's /proc files should be its user's"
    );
    owner
}
