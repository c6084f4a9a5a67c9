//! Process hardening: `vmcrypt serve` (which holds volume keys for its whole life)
//! locks its memory so keys never reach swap and makes itself non-dumpable, as its log
//! says; `VMCRYPT_MLOCK=0` turns the locking off. The test runs as root in CI, where
//! memory locking is always allowed.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use std::os::unix::net::UnixStream;

fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("VmLck in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn serve_locks_its_memory_and_is_not_dumpable() {
    assert!(
        rustix_is_root(),
        "this test needs root (CI runs as root) to be allowed to lock memory"
    );
    let sc = Scratch::new();
    let img = sc.write("z.raw", &[0u8; 65536]);
    let (server, _sock) = Served::unix(&sc, &["-f", "raw", &img]);
    let pid = server.child.as_ref().unwrap().id();
    assert!(locked_kib(pid) > 0, "serve did not lock its memory");
    let log = server.stop();
    assert!(
        log.contains("memory_locked=true") && log.contains("not_dumpable=true"),
        "log:\n{log}"
    );

    // Opted out: nothing is locked.
    let sock = sc.p("off.sock");
    let mut child = std::process::Command::new(VMCRYPT)
        .args([
            "serve",
            "--persistent",
            "--socket",
            &sock,
            "-f",
            "raw",
            &img,
        ])
        .env("VMCRYPT_MLOCK", "0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kib = locked_kib(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(kib, 0, "VMCRYPT_MLOCK=0 still locked memory");
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}
