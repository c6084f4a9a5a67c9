//! `vmcrypt serve` of an encrypted rbd image through the node's asynchronous path (no
//! thread waiting per request): many pipelined requests of mixed sizes, whole-sector
//! and not (those run the blocking way), come back with the right data, in vmcrypt
//! and in librbd afterwards; a client that disconnects with requests in flight leaves
//! the server serving, and it still stops cleanly. Needs the one-node test cluster
//! (`shared/ceph/start-ceph.sh`, started on demand); a missing Ceph fails the test.
#[path = "../../vmcrypt-block/tests/support/ceph.rs"]
mod ceph;
mod common;
mod nbd_support;

use ceph::{TestImage, librbd};
use common::*;
use nbd_support::Served;
use nbd_support::raw::{CMD_FLUSH, CMD_READ, CMD_WRITE, RawClient, header};
use std::collections::HashMap;
use std::io::{Read, Write};

const PASS: &[u8] = b"async pass";
const KIB: u64 = 1024;

/// Pipelined requests and their replies, checked against a model of the image.
struct Session {
    c: RawClient,
    next: u64,
    /// Cookie -> (offset, length) of each READ in flight.
    reads: HashMap<u64, (u64, u32)>,
    writes: usize,
}

impl Session {
    fn new(c: RawClient) -> Session {
        Session {
            c,
            next: 1,
            reads: HashMap::new(),
            writes: 0,
        }
    }

    fn cookie(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn write(&mut self, model: &mut [u8], offset: u64, data: &[u8]) {
        model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        let cookie = self.cookie();
        self.c.write(cookie, offset, data);
        self.writes += 1;
    }

    fn read(&mut self, offset: u64, len: u32) {
        let cookie = self.cookie();
        self.c.request(0, CMD_READ, cookie, offset, len);
        self.reads.insert(cookie, (offset, len));
    }

    /// Collect every outstanding reply (in whatever order) and check READ data.
    fn finish(&mut self, model: &[u8]) {
        let mut left = self.writes + self.reads.len();
        while left > 0 {
            let (cookie, err) = self.c.reply().expect("a reply before EOF");
            assert_eq!(err, 0, "request {cookie} failed");
            if let Some((off, len)) = self.reads.remove(&cookie) {
                let mut got = vec![0u8; len as usize];
                self.c.s.read_exact(&mut got).unwrap();
                let want = &model[off as usize..off as usize + len as usize];
                assert_same_bytes(&format!("READ of {len} at {off}"), &got, want);
            }
            left -= 1;
        }
        self.writes = 0;
    }
}

/// Offsets `i * step` mixed up (a fixed permutation), so requests hit objects out of order.
fn scattered(n: u64, step: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| (i * 37 % n) * step)
}

#[test]
fn many_requests_in_flight_through_the_async_path() {
    let sc = Scratch::new();
    let img = TestImage::new("async");
    let pw = sc.write("pw", PASS);
    let secret = format!("secret,id=s0,file={pw}");
    let o = "encrypt.format=luks2,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.pbkdf-memory=32768";
    vmcrypt(&[
        "create",
        "--object",
        &secret,
        "-f",
        "rbd",
        "-o",
        o,
        &img.filename(),
        "24M",
    ])
    .ok();
    let opts = img.opts("encrypt.format=luks2,encrypt.key-secret=s0");
    let (server, sock) = Served::unix(
        &sc,
        &["--shared", "4", "--object", &secret, "--image-opts", &opts],
    );

    let mut s = Session::new(RawClient::open(&sock, ""));
    let size = s.c.size;
    let mut model = vec![0u8; size as usize];
    let data = plaintext(size as usize, "async");
    // First pass: every object is new to the server (its length unknown), so most of
    // these run the blocking way and teach it the lengths; some unaligned ones too.
    for off in scattered(size / (64 * KIB), 64 * KIB) {
        s.write(
            &mut model,
            off,
            &data[off as usize..(off + 64 * KIB) as usize],
        );
    }
    s.finish(&model);
    for off in [1000u64, 5 * 4096 + 17, size - 3000] {
        s.write(
            &mut model,
            off,
            &[0xa5; 1500][..(1500).min((size - off) as usize)],
        );
    }
    s.finish(&model);
    // Second pass, all asynchronous now: 4 KiB writes and reads of other blocks in
    // flight together, a few large ones, then a FLUSH.
    let other = plaintext(size as usize, "second pass");
    for (i, off) in scattered(size / (4 * KIB), 4 * KIB).enumerate() {
        if i % 2 == 0 {
            s.write(
                &mut model,
                off,
                &other[off as usize..(off + 4 * KIB) as usize],
            );
        } else {
            s.read(off, 4096);
        }
        if i % 256 == 255 {
            s.finish(&model);
        }
    }
    s.finish(&model);
    for off in scattered(size / (1 << 20), 1 << 20).take(6) {
        s.write(
            &mut model,
            off,
            &data[off as usize..(off + (1 << 20)) as usize],
        );
    }
    s.finish(&model);
    let cookie = s.cookie();
    s.c.request(0, CMD_FLUSH, cookie, 0, 0);
    assert_eq!(s.c.reply(), Some((cookie, 0)), "FLUSH");
    for off in scattered(size / (256 * KIB), 256 * KIB) {
        s.read(off, 256 * 1024);
    }
    s.finish(&model);
    drop(s);

    // A client that leaves with requests in flight: rewrites of what is there (so the
    // image is the same whether or not they ran) and reads, sent from a thread while
    // the socket is shut down under it.
    let gone = RawClient::open(&sock, "");
    let mut w = gone.s.try_clone().unwrap();
    let reqs: Vec<u8> = scattered(size / (64 * KIB), 64 * KIB)
        .enumerate()
        .flat_map(|(i, off)| {
            let keep = &model[off as usize..(off + 64 * KIB) as usize];
            let mut r = header(0, CMD_WRITE, 2 * i as u64, off, 65536);
            r.extend_from_slice(keep);
            r.extend(header(0, CMD_READ, 2 * i as u64 + 1, off, 65536));
            r
        })
        .collect();
    let sender = std::thread::spawn(move || {
        // Fails once the socket is shut down: that is the point.
        let _ = w.write_all(&reqs);
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    gone.s.shutdown(std::net::Shutdown::Both).unwrap();
    sender.join().unwrap();
    drop(gone);
    // The server still serves.
    let mut after = Session::new(RawClient::open(&sock, ""));
    for off in scattered(size / (1 << 20), 1 << 20) {
        after.read(off, 1 << 20);
    }
    after.finish(&model);
    drop(after);
    let log = server.stop();
    let ran_async: u64 = log
        .lines()
        .filter_map(|l| l.split("asynchronous=").nth(1))
        .filter_map(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        ran_async > 4000,
        "requests run asynchronously: {ran_async}\n{log}"
    );
    let back = librbd(&["read", &img.name, "luks2", &pw, "0", "-1"]);
    assert_same_bytes("librbd reads what came over NBD", &back, &model);
}
