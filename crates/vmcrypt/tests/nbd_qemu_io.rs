//! qemu-io's data commands (write, write -z, discard, flush, read) against `vmcrypt
//! serve` of a LUKS1 image, over TCP (`nbd://127.0.0.1:PORT`) and a Unix socket
//! (`nbd+unix`); the image is then decrypted by vmcrypt and by qemu-img, which must both
//! give the expected bytes.
mod common;
mod nbd_support;

use common::*;
use nbd_support::{Served, free_port};
use std::net::TcpStream;

const MIB: usize = 1 << 20;
const SIZE: usize = 4 * MIB;

/// The qemu-io commands, and what they leave in a disk that held `plain`.
fn run_commands(url: &str, plain: &[u8]) -> Vec<u8> {
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            url,
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -z 1M 1M",
            "-c",
            "discard 2M 64k",
            "-c",
            "flush",
            "-c",
            "read -P 0x11 0 1M",
            "-c",
            "read -P 0 1M 1M",
        ],
    )
    .ok()
    .stdout_has("read 1048576/1048576 bytes at offset 1048576");
    let mut want = plain.to_vec();
    want[..MIB].fill(0x11);
    want[MIB..2 * MIB].fill(0);
    // TRIM is advisory and LUKS nodes ignore it (docs/vm-glue.md): 2M+64k keeps its data.
    want
}

fn luks_image(sc: &Scratch, seed: &str) -> (Vec<u8>, Vec<String>) {
    let plain = vmcrypt_luks_disk(sc, SIZE, seed);
    let mut args = vec!["--persistent".to_string()];
    args.extend(luks_node_args(sc, "pw", "disk.luks"));
    (plain, args)
}

fn check_image(sc: &Scratch, want: &[u8], what: &str) {
    let by_vmcrypt = decrypt_luks(vmcrypt, sc, "pw", &sc.p("disk.luks"), None, "v.raw");
    assert_same_bytes(&format!("{what}: vmcrypt convert"), &by_vmcrypt, want);
    let by_qemu = decrypt_luks(qemu_img, sc, "pw", &sc.p("disk.luks"), None, "q.raw");
    assert_eq!(
        sha256_hex(&by_qemu),
        sha256_hex(want),
        "{what}: qemu-img convert"
    );
}

#[test]
fn qemu_io_over_tcp() {
    let sc = Scratch::new();
    let (plain, mut args) = luks_image(&sc, "qio-tcp");
    let bind = format!("127.0.0.1:{}", free_port());
    args.splice(0..0, ["--bind".to_string(), bind.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Served::start(&sc, &argv, || TcpStream::connect(&bind).is_ok());
    let want = run_commands(&format!("nbd://{bind}"), &plain);
    server.stop();
    check_image(&sc, &want, "after qemu-io over TCP");
}

#[test]
fn qemu_io_over_unix() {
    let sc = Scratch::new();
    let (plain, args) = luks_image(&sc, "qio-unix");
    let argv: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let (server, sock) = Served::unix(&sc, &argv);
    let want = run_commands(&format!("nbd+unix:///?socket={sock}"), &plain);
    server.stop();
    check_image(&sc, &want, "after qemu-io over a Unix socket");
}
