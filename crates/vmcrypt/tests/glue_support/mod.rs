//! Shared by the VM glue tests: read the node that `vmcrypt qemu-args` describes
//! through qemu-storage-daemon (the same `--object`/`--blockdev` parsers as
//! qemu-system) and an NBD export of it.
#![allow(dead_code)]

use crate::common::*;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running qemu-storage-daemon, killed when dropped.
pub struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The words of `vmcrypt qemu-args` output, unquoted by bash itself (so the shell quoting
/// is tested too).
pub fn unquote(printed: &str) -> Vec<String> {
    let out = tool(
        "bash",
        &[
            "-c",
            r#"eval "a=($1)"; printf '%s\0' "${a[@]}""#,
            "_",
            printed,
        ],
    )
    .ok();
    out.stdout_str()
        .split_terminator('\0')
        .map(str::to_string)
        .collect()
}

/// Start qemu-storage-daemon with `args` (`--object`/`--blockdev`/`--export` options)
/// and an NBD server on a socket named after `tag`; returns once the socket accepts, with
/// the daemon (killed when dropped) and the socket's path. Fails the test, with the
/// daemon's log, if it exits first.
pub fn start_qsd(sc: &Scratch, args: &[String], tag: &str) -> (Qsd, String) {
    let qsd = require_tool("qemu-storage-daemon");
    let sock = sc.p(&format!("{tag}.sock"));
    let log = sc.p(&format!("{tag}.log"));
    let child = Command::new(qsd)
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={sock}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting qemu-storage-daemon");
    let mut d = Qsd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        if let Ok(Some(st)) = d.0.try_wait() {
            panic!(
                "qemu-storage-daemon {args:?} exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, sock)
}

/// Serve the node the arguments describe with qemu-storage-daemon and read it back with
/// qemu-img; returns the bytes.
pub fn read_through_qsd(sc: &Scratch, args: &[String], tag: &str) -> Vec<u8> {
    // qemu-system spells the options -object/-blockdev; the daemon wants --object/--blockdev.
    let mut long: Vec<String> = args
        .iter()
        .map(|a| match a.as_str() {
            "-object" | "-blockdev" => format!("-{a}"),
            _ => a.clone(),
        })
        .collect();
    long.push("--export".into());
    long.push("type=nbd,id=e0,node-name=disk0,name=disk0".into());
    let (d, sock) = start_qsd(sc, &long, tag);
    let out = sc.p(&format!("{tag}.out"));
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        &format!("nbd+unix:///disk0?socket={sock}"),
        "-O",
        "raw",
        &out,
    ])
    .ok();
    drop(d);
    read(std::path::Path::new(&out))
}

/// `vmcrypt qemu-args` in both output forms, each read back through qemu-storage-daemon.
pub fn check_both_forms(sc: &Scratch, image_args: &[&str], plain: &[u8], what: &str) {
    for output in ["human", "json"] {
        let mut a = vec!["qemu-args", "--output", output];
        a.extend_from_slice(image_args);
        let printed = vmcrypt(&a).ok().stdout_str();
        let words = unquote(&printed);
        assert_eq!(words[0], "-object", "{printed}");
        assert!(words.iter().any(|w| w == "-blockdev"), "{printed}");
        let got = read_through_qsd(sc, &words, output);
        assert_same_bytes(&format!("{what} via --output {output}"), &got, plain);
    }
}
