//! Image locking against the real QEMU tools: QEMU's OFD byte-range locks and ours
//! exclude each other the same way two QEMU processes do. While qemu-nbd writes an
//! image, vmcrypt refuses to write or read it (exit 5, naming the lock) unless `-U`;
//! while `vmcrypt serve` writes one, qemu-img and qemu-io refuse it unless `-U`; two
//! readers share.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn qcow2(sc: &Scratch) -> String {
    let img = sc.p("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "8M"]).ok();
    img
}

#[test]
fn a_qemu_writer_locks_vmcrypt_out() {
    require_tool("qemu-nbd");
    let sc = Scratch::new();
    let img = qcow2(&sc);
    let sock = sc.p("q.sock");
    let mut qemu = Command::new("qemu-nbd")
        .args(["--persistent", "-k", &sock, "-f", "qcow2", &img])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = sc.read("disk.qcow2");
    let data = sc.write("d.raw", &[5u8; 4096]);
    let target = format!("driver=qcow2,file.filename={img}");
    let out = vmcrypt_write_raw(&data, &target);
    let out = out.code_is(5).stderr_has("\"write\" lock");
    drop(out);
    vmcrypt(&["info", &img]).code_is(5).stderr_has("lock");
    vmcrypt(&["info", "-U", &img])
        .ok()
        .stdout_has("file format: qcow2");
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    assert_eq!(
        sc.read("disk.qcow2"),
        before,
        "a refused open changed the image"
    );
    // Once qemu-nbd is gone the write goes through.
    vmcrypt_write_raw(&data, &target).ok();
}

#[test]
fn vmcrypt_serve_locks_qemu_out_and_readers_share() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let img = qcow2(&sc);
    let (server, _sock) = Served::unix(&sc, &["-f", "qcow2", &img]);
    qemu_img(&["info", &img])
        .failed()
        .stderr_has("Failed to get shared \"write\" lock");
    tool("qemu-io", &["-c", "write 0 512", "-f", "qcow2", &img])
        .failed()
        .stderr_has("lock");
    qemu_img(&["info", "-U", &img]).ok();
    server.stop();
    qemu_img(&["check", &img]).ok();

    let sock2 = sc.p("ro.sock");
    let ro = Served::start(
        &sc,
        &[
            "--read-only",
            "--persistent",
            "--socket",
            &sock2,
            "-f",
            "qcow2",
            &img,
        ],
        || UnixStream::connect(&sock2).is_ok(),
    );
    qemu_img(&["info", &img])
        .ok()
        .stdout_has("file format: qcow2");
    vmcrypt(&["info", &img]).ok();
    tool("qemu-io", &["-c", "write 0 512", "-f", "qcow2", &img])
        .failed()
        .stderr_has("lock");
    ro.stop();
}

/// Online key rotation: while qemu-nbd serves a LUKS image read-write, `vmcrypt luks
/// add-key` and `kill-slot` work (they take only the header lock), the export keeps
/// serving the same bytes, and the new passphrase opens the image afterwards; a header
/// conversion, which a running user must not see, is refused as busy.
#[test]
fn key_slots_change_while_qemu_serves_the_image() {
    require_tool("qemu-nbd");
    let sc = Scratch::new();
    sc.write("pw", PASS);
    sc.write("pw2", PASS2);
    let plain = plaintext(1 << 20, "online-rotation");
    sc.write("plain.raw", &plain);
    vmcrypt_encrypt(&sc, "pw", "plain.raw", "disk.luks", "");
    let img = sc.p("disk.luks");
    let secret = sc.secret("s0", "pw");
    let sock = sc.p("q.sock");
    let mut qemu = Command::new("qemu-nbd")
        .args([
            "--persistent",
            "-k",
            &sock,
            "--object",
            &secret,
            "--image-opts",
        ])
        .arg(format!("driver=luks,key-secret=s0,file.filename={img}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    vmcrypt(&[
        "luks",
        "add-key",
        &img,
        "--key-file",
        &sc.p("pw"),
        "--new-key-file",
        &sc.p("pw2"),
        "--iter-time",
        "10",
    ])
    .ok();
    vmcrypt(&["luks", "kill-slot", &img, "0", "--key-file", &sc.p("pw2")]).ok();
    vmcrypt(&[
        "luks",
        "convert",
        "--type",
        "luks2",
        &img,
        "--key-file",
        &sc.p("pw2"),
    ])
    .code_is(5)
    .stderr_has("lock");
    let out = sc.p("via-nbd.raw");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &format!("nbd+unix:///?socket={sock}"),
        &out,
    ])
    .ok();
    assert_same_bytes(
        "served during the rotation",
        &sc.read("via-nbd.raw"),
        &plain,
    );
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    let got = decrypt_luks(vmcrypt, &sc, "pw2", &img, None, "after.raw");
    assert_same_bytes("new passphrase", &got, &plain);
    vmcrypt(&["luks", "test-key", &img, "--key-file", &sc.p("pw")]).code_is(2);
}
