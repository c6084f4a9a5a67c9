//! Many NBD connections at once against one `vmcrypt serve --persistent` of a LUKS2
//! image with 4096-byte sectors: 16 client threads, each speaking NBD through the small
//! spec-written client below, write disjoint unaligned ranges (neighbours share
//! encryption sectors, so the server's read-modify-write must not lose bytes), read them
//! back, flush, and then read a neighbour's range through their own connection (what
//! NBD_FLAG_CAN_MULTI_CONN promises). After SIGTERM the image is decrypted with
//! `vmcrypt convert` and must hold every client's pattern and nothing else changed.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const DISK: u64 = 4 << 20;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// Byte `pos` of client `client`'s pattern: position-dependent, different per client.
fn pattern(client: usize, pos: u64) -> u8 {
    let x = pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (client as u64 + 1).wrapping_mul(0x0100_0193);
    (x >> 56) as u8 ^ (client as u8).wrapping_mul(37)
}

/// Client `i` owns `[start, end)`: 16 slices of the disk with unaligned edges, separated
/// by small untouched gaps (some of them inside a shared 4096-byte sector).
fn range_of(i: usize) -> (u64, u64) {
    let slice = DISK / CLIENTS as u64;
    let start = i as u64 * slice + (i as u64 * 1237) % 4096 + 1;
    let end = (i as u64 + 1) * slice + ((i as u64 + 1) * 1237) % 4096 - 7;
    (start, end.min(DISK))
}

/// Unaligned pieces covering `[start, end)`: lengths cycle through awkward sizes.
fn pieces(start: u64, end: u64) -> Vec<(u64, u32)> {
    let sizes = [1u32, 513, 4095, 4097, 12345, 65537, 3, 8191, 40000];
    let mut out = Vec::new();
    let mut at = start;
    for &len in sizes.iter().cycle() {
        if at >= end {
            break;
        }
        let len = len.min((end - at) as u32);
        out.push((at, len));
        at += u64::from(len);
    }
    out
}

/// A minimal NBD client from the spec: fixed newstyle, NBD_OPT_GO, simple replies.
struct Client {
    s: UnixStream,
    flags: u16,
    size: u64,
}

impl Client {
    fn connect(sock: &str) -> Client {
        let mut s = UnixStream::connect(sock).expect("connecting to the server");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        // Client flags FIXED_NEWSTYLE | NO_ZEROES, then GO for "" asking for no infos.
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(b"IHAVEOPT");
        msg.extend(7u32.to_be_bytes());
        msg.extend(6u32.to_be_bytes());
        msg.extend([0u8; 6]);
        s.write_all(&msg).unwrap();
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            assert_eq!(
                h[..8],
                0x0003_e889_0455_65a9u64.to_be_bytes(),
                "reply magic"
            );
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; u32::from_be_bytes(h[16..].try_into().unwrap()) as usize];
            s.read_exact(&mut data).unwrap();
            match kind {
                1 => break,
                3 if data[..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                    flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                }
                3 => {}
                _ => panic!("GO failed with reply type {kind:#x}"),
            }
        }
        let size = size.expect("NBD_INFO_EXPORT in the GO reply");
        Client { s, flags, size }
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32) {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend(0u16.to_be_bytes());
        r.extend(kind.to_be_bytes());
        r.extend(cookie.to_be_bytes());
        r.extend(offset.to_be_bytes());
        r.extend(length.to_be_bytes());
        self.s.write_all(&r).unwrap();
    }

    /// One simple reply header: (cookie, error).
    fn reply(&mut self) -> (u64, u32) {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r).unwrap();
        assert_eq!(r[..4], 0x6744_6698u32.to_be_bytes(), "simple reply magic");
        let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
        (u64::from_be_bytes(r[8..].try_into().unwrap()), error)
    }

    /// Send all writes before reading any reply, so they are in flight together.
    fn write_pieces(&mut self, client: usize, pieces: &[(u64, u32)]) {
        for (n, &(off, len)) in pieces.iter().enumerate() {
            self.request(CMD_WRITE, n as u64, off, len);
            let data: Vec<u8> = (off..off + u64::from(len))
                .map(|p| pattern(client, p))
                .collect();
            self.s.write_all(&data).unwrap();
        }
        let mut seen = vec![false; pieces.len()];
        for _ in pieces {
            let (cookie, error) = self.reply();
            assert_eq!(error, 0, "client {client}: write {cookie} failed");
            assert!(
                !std::mem::replace(&mut seen[cookie as usize], true),
                "duplicate reply"
            );
        }
    }

    /// Read `pieces` with all requests in flight; returns the data by piece index.
    fn read_pieces(&mut self, pieces: &[(u64, u32)]) -> Vec<Vec<u8>> {
        for (n, &(off, len)) in pieces.iter().enumerate() {
            self.request(CMD_READ, 1000 + n as u64, off, len);
        }
        let mut got = HashMap::new();
        for _ in pieces {
            let (cookie, error) = self.reply();
            assert_eq!(error, 0, "read {cookie} failed");
            let n = (cookie - 1000) as usize;
            let mut data = vec![0u8; pieces[n].1 as usize];
            self.s.read_exact(&mut data).unwrap();
            assert!(got.insert(n, data).is_none(), "duplicate reply");
        }
        (0..pieces.len()).map(|n| got.remove(&n).unwrap()).collect()
    }

    fn flush(&mut self) {
        self.request(CMD_FLUSH, 77, 0, 0);
        assert_eq!(self.reply(), (77, 0), "flush");
    }

    fn disconnect(mut self) {
        self.request(CMD_DISC, 0, 0, 0);
    }
}

fn expect_pattern(client: usize, what: &str, off: u64, got: &[u8]) {
    let want: Vec<u8> = (off..off + got.len() as u64)
        .map(|p| pattern(client, p))
        .collect();
    assert_same_bytes(&format!("client {client}: {what} at {off}"), got, &want);
}

/// Connect, write client `i`'s pieces, read them back and flush.
fn write_and_check(sock: &str, i: usize) -> Client {
    let mut c = Client::connect(sock);
    assert_eq!(c.size, DISK);
    assert_ne!(
        c.flags & FLAG_CAN_MULTI_CONN,
        0,
        "CAN_MULTI_CONN not advertised"
    );
    let (start, end) = range_of(i);
    let pieces = pieces(start, end);
    c.write_pieces(i, &pieces);
    for (data, &(off, _)) in c.read_pieces(&pieces).iter().zip(&pieces) {
        expect_pattern(i, "read back", off, data);
    }
    c.flush();
    c
}

/// One client's whole job; `barrier` separates writing from cross-reading. A client
/// that fails still reaches the barrier (then fails), so the others cannot hang.
fn run_client(sock: &str, i: usize, barrier: &Barrier) {
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| write_and_check(sock, i)));
    barrier.wait();
    let mut c = first.unwrap_or_else(|p| std::panic::resume_unwind(p));
    // Every client has flushed: its writes must be visible on this connection too.
    let other = (i + 1) % CLIENTS;
    let (os, oe) = range_of(other);
    let whole = c.read_pieces(&[(os, (oe - os) as u32)]);
    expect_pattern(other, "cross-connection read", os, &whole[0]);
    c.disconnect();
}

/// Serve `opts` (secret `s0` from the file `pw`), run the 16 clients, stop the server
/// and return what the image holds afterwards and what it must hold.
fn sixteen_clients(sc: &Scratch, opts: &str, before: Vec<u8>) -> Vec<u8> {
    let secret = sc.secret("s0", "pw");
    let (server, sock) = Served::unix(sc, &["--object", &secret, "--image-opts", opts]);

    let info = tool(
        "nbdinfo",
        &["--json", &format!("nbd+unix:///?socket={sock}")],
    )
    .ok()
    .json();
    let export = &info["exports"][0];
    assert_eq!(export["can_multi_conn"], true, "nbdinfo --json: {info}");
    assert_eq!(export["export-size"], DISK, "nbdinfo --json: {info}");

    let barrier = Barrier::new(CLIENTS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (sock, barrier) = (&sock, &barrier);
                s.spawn(move || run_client(sock, i, barrier))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            if h.join().is_err() {
                panic!("client {i} failed (see its panic above)");
            }
        }
    });
    let log = server.stop();
    assert!(
        log.matches("client connected").count() > CLIENTS,
        "log:\n{log}"
    );
    let mut want = before;
    for i in 0..CLIENTS {
        let (start, end) = range_of(i);
        for p in start..end {
            want[p as usize] = pattern(i, p);
        }
    }
    want
}

#[test]
fn sixteen_connections_write_disjoint_unaligned_ranges_of_a_luks2_4k_image() {
    let t0 = Instant::now();
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let img = sc.p("disk.luks2");
    vmcrypt(&[
        "create",
        "-f",
        "luks2",
        "--object",
        &sc.secret("s0", "pw"),
        "-o",
        "key-secret=s0,pbkdf=pbkdf2,iterations=1000,sector-size=4096",
        &img,
        "4M",
    ])
    .ok();
    vmcrypt(&["info", "--output", "json", &img])
        .ok()
        .stdout_has("\"sector-size\": 4096");
    let before = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "before.raw");
    let want = sixteen_clients(&sc, &luks_opts("s0", &img, None), before);
    let got = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "after.raw");
    assert_same_bytes("decrypted image after 16 clients", &got, &want);
    eprintln!("multi-connection test took {:?}", t0.elapsed());
}

/// The same 16 clients against a qcow2+LUKS overlay with 4 KiB clusters on a raw base:
/// concurrent allocation, copy-on-write from the base and in-place writes; afterwards
/// `qemu-img check` is clean and QEMU reads the expected bytes.
#[test]
fn sixteen_connections_write_a_qcow2_luks_overlay() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let before = plaintext(DISK as usize, "multiconn-base");
    let base = sc.write("base.raw", &before);
    let img = sc.p("top.qcow2");
    let secret = sc.secret("s0", "pw");
    qemu_qcow2_luks_over_raw(&secret, &base, "cluster_size=4096", &img, "4M");
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    let want = sixteen_clients(&sc, &opts, before);
    qemu_img(&["check", "--object", &secret, "--image-opts", &opts])
        .ok()
        .stdout_has("No errors were found on the image.");
    let out = sc.p("after.raw");
    qemu_convert_to_raw(&secret, &opts, &out).ok();
    assert_same_bytes(
        "qcow2 overlay after 16 clients",
        &sc.read("after.raw"),
        &want,
    );
}
