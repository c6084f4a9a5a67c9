//! `vmcrypt serve` against the real NBD clients: qemu-img, qemu-io (qemu-utils) and
//! nbdinfo (libnbd-bin). The server runs as a child process; a missing tool fails.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use nbd_support::raw::{CMD_READ, RawClient};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn url(sock: &str) -> String {
    format!("nbd+unix:///?socket={sock}")
}

/// `qemu-img convert -f raw URL out` and the bytes read.
fn nbd_read_all(sc: &Scratch, url: &str, out: &str) -> Vec<u8> {
    qemu_img(&["convert", "-f", "raw", "-O", "raw", url, &sc.p(out)]).ok();
    sc.read(out)
}

fn virtual_size(url: &str) -> u64 {
    let info = qemu_img(&["info", "--output", "json", url]).ok().json();
    info["virtual-size"]
        .as_u64()
        .expect("virtual-size in qemu-img info")
}

/// Encrypt `plain.raw` into `name` with `-O FORMAT -o key-secret=s0,OPTS`.
fn encrypt(sc: &Scratch, format: &str, opts: &str, name: &str) {
    encrypt_raw(
        vmcrypt,
        sc,
        "pw",
        "plain.raw",
        (format, &format!("key-secret=s0,{opts}")),
        name,
    )
    .ok();
}

const SIZE: usize = 2 << 20;

#[test]
fn luks1_export_reads_plaintext_and_writes_land_encrypted() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "nbd-luks1");
    sc.write("plain.raw", &plain);
    encrypt(&sc, "luks", "iterations=1000", "disk.luks");
    let (server, sock) = Served::unix(&sc, &strs(&luks_node_args(&sc, "pw", "disk.luks")));

    assert_eq!(virtual_size(&url(&sock)), SIZE as u64);
    assert_same_bytes(
        "NBD read of LUKS1",
        &nbd_read_all(&sc, &url(&sock), "got.raw"),
        &plain,
    );

    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x55 1234 5000",
            "-c",
            "read -P 0x55 1234 5000",
            "-c",
            "write -z 65536 65536",
            "-c",
            "discard 1048576 65536",
            "-c",
            "flush",
            &url(&sock),
        ],
    )
    .ok();
    let log = server.stop();
    assert!(log.contains("client connected"), "log:\n{log}");

    let mut want = plain.clone();
    want[1234..6234].fill(0x55);
    want[65536..131072].fill(0);
    // TRIM is a documented no-op: the discarded range keeps its data.
    let got = decrypt_luks(vmcrypt, &sc, "pw", &sc.p("disk.luks"), None, "after.raw");
    assert_same_bytes("LUKS1 image after NBD writes", &got, &want);
}

#[test]
fn luks2_4k_sector_export_reads_and_writes_unaligned() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "nbd-luks2");
    sc.write("plain.raw", &plain);
    encrypt(
        &sc,
        "luks2",
        "pbkdf=pbkdf2,iterations=1000,sector-size=4096",
        "disk.luks2",
    );
    let (server, sock) = Served::unix(&sc, &strs(&luks_node_args(&sc, "pw", "disk.luks2")));
    assert_eq!(virtual_size(&url(&sock)), SIZE as u64);
    assert_same_bytes(
        "NBD read of LUKS2",
        &nbd_read_all(&sc, &url(&sock), "got.raw"),
        &plain,
    );
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xa7 4095 3", &url(&sock)],
    )
    .ok();
    server.stop();
    let mut want = plain;
    want[4095..4098].fill(0xa7);
    let got = decrypt_luks(vmcrypt, &sc, "pw", &sc.p("disk.luks2"), None, "after.raw");
    assert_same_bytes("LUKS2 image after NBD write", &got, &want);
}

#[test]
fn nbdinfo_map_reports_the_hole_of_a_sparse_raw_image() {
    let sc = Scratch::new();
    let img = sc.sparse("sparse.raw", 4 << 20);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xee; 65536]).unwrap();
    }
    let (server, sock) = Served::unix(&sc, &["-f", "raw", &img]);
    let map = tool("nbdinfo", &["--map", &url(&sock)]).ok().stdout_str();
    let rows: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let row = |off: &str| {
        rows.iter()
            .find(|r| r[0] == off)
            .unwrap_or_else(|| panic!("no extent at {off} in:\n{map}"))
            .clone()
    };
    assert_eq!(row("0")[1..3], ["1048576", "3"], "map:\n{map}");
    assert_eq!(row("1048576")[2], "0", "map:\n{map}");
    assert!(
        map.contains("hole,zero") && map.contains("data"),
        "map:\n{map}"
    );
    server.stop();
}

#[test]
fn read_only_export_refuses_writes_and_keeps_the_image() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    sc.write("plain.raw", &plaintext(SIZE, "nbd-ro"));
    encrypt(&sc, "luks", "iterations=1000", "disk.luks");
    let before = sha256_file(&sc.path("disk.luks"));
    let mut args = luks_node_args(&sc, "pw", "disk.luks");
    args.push("--read-only".into());
    let (server, sock) = Served::unix(&sc, &strs(&args));
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 4096", &url(&sock)],
    )
    .failed();
    tool(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 0 4096", &url(&sock)],
    )
    .ok();
    // A raw client that writes anyway gets EPERM.
    let mut c = RawClient::open(&sock, "");
    c.write(7, 0, &[0u8; 512]);
    assert_eq!(
        c.reply(),
        Some((7, 1)),
        "EPERM for a write to a read-only export"
    );
    drop(c);
    server.stop();
    assert_eq!(sha256_file(&sc.path("disk.luks")), before);
}

#[test]
fn two_named_exports_and_tcp() {
    let sc = Scratch::new();
    let a = plaintext(1 << 20, "export-a");
    let b = plaintext(1 << 20, "export-b");
    sc.write("a.raw", &a);
    sc.write("b.raw", &b);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let ea = format!("alpha={}", sc.p("a.raw"));
    let eb = format!("beta={}", sc.p("b.raw"));
    let server = Served::start(
        &sc,
        &[
            "--persistent",
            "--bind",
            &bind,
            "-f",
            "raw",
            "--export",
            &ea,
            "--export",
            &eb,
        ],
        || std::net::TcpStream::connect(&bind).is_ok(),
    );
    let ua = format!("nbd://{bind}/alpha");
    let ub = format!("nbd://{bind}/beta");
    assert_same_bytes("export alpha", &nbd_read_all(&sc, &ua, "ga.raw"), &a);
    assert_same_bytes("export beta", &nbd_read_all(&sc, &ub, "gb.raw"), &b);
    let list = tool("nbdinfo", &["--list", &format!("nbd://{bind}")])
        .ok()
        .stdout_str();
    assert!(list.contains("alpha") && list.contains("beta"), "{list}");
    qemu_img(&["info", &format!("nbd://{bind}/gamma")]).failed();
    server.stop();
}

#[test]
fn hostile_clients_do_not_stop_the_server() {
    let sc = Scratch::new();
    let plain = plaintext(1 << 20, "hostile");
    sc.write("d.raw", &plain);
    let (server, sock) = Served::unix(&sc, &["-f", "raw", &sc.p("d.raw")]);
    // Garbage during the handshake.
    let mut g = UnixStream::connect(&sock).unwrap();
    let _ = g.write_all(&[0x5a; 300]);
    let _ = g.read_to_end(&mut Vec::new());
    // An out-of-range read gets EINVAL; a truncated request then ends the connection.
    let mut c = RawClient::open(&sock, "");
    c.request(0, CMD_READ, 1, (1 << 20) - 10, 20);
    assert_eq!(c.reply(), Some((1, 22)));
    c.request(0, 99, 2, 0, 0);
    assert_eq!(c.reply(), Some((2, 22)), "unknown command is EINVAL");
    c.s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0]).unwrap();
    drop(c);
    // Bad request magic after a good handshake.
    let mut c = RawClient::open(&sock, "");
    c.s.write_all(&[0xff; 28]).unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    drop(c);
    // Still serving.
    assert_same_bytes(
        "after hostile clients",
        &nbd_read_all(&sc, &url(&sock), "got.raw"),
        &plain,
    );
    server.stop();
}

#[test]
fn without_persistent_the_server_exits_after_its_client() {
    let sc = Scratch::new();
    sc.write("d.raw", &plaintext(1 << 20, "once"));
    let sock = sc.p("once.sock");
    let pid = sc.p("serve.pid");
    let mut server = Served::start(
        &sc,
        &[
            "--socket",
            &sock,
            "--pid-file",
            &pid,
            "-f",
            "raw",
            &sc.p("d.raw"),
        ],
        || Path::new(&pid).exists(),
    );
    let pid_text = std::fs::read_to_string(&pid).unwrap();
    let child = server.child.as_mut().unwrap();
    assert_eq!(pid_text.trim(), child.id().to_string());
    assert_eq!(virtual_size(&url(&sock)), 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server kept running without --persistent"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(!Path::new(&sock).exists() && !Path::new(&pid).exists());
}
