//! `vmcrypt serve` under stress that is not about throughput: SIGTERM with writes in
//! flight (acknowledged data must be in the image, exit status 0), clients that die in
//! the middle of a request, the `--shared` client limit, and NBD_CMD_FLAG_FAST_ZERO.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use nbd_support::raw::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const SIZE: usize = 16 * MIB;
/// Pipelined 1 MiB writes in the SIGTERM test.
const WRITES: u64 = 16;

/// A LUKS1 image `disk.luks` holding `plaintext(SIZE)`; returns the plaintext and the
/// serve arguments.
fn luks_image(sc: &Scratch, seed: &str) -> (Vec<u8>, Vec<String>) {
    let plain = vmcrypt_luks_disk(sc, SIZE, seed);
    (plain, luks_node_args(sc, "pw", "disk.luks"))
}

fn decrypted(sc: &Scratch) -> Vec<u8> {
    decrypt_luks(vmcrypt, sc, "pw", &sc.p("disk.luks"), None, "after.raw")
}

#[test]
fn sigterm_lets_in_flight_writes_finish_and_exits_0() {
    let sc = Scratch::new();
    let (plain, args) = luks_image(&sc, "sigterm");
    let (server, sock) = Served::unix(&sc, &strs(&args));
    let idle = RawClient::open(&sock, "");
    let mut c = RawClient::open(&sock, "");
    // 1 MiB writes, pipelined: none waits for its reply.
    let fill = |i: u64| 0x30 + i as u8;
    for i in 0..WRITES {
        c.write(i, i * MIB as u64, &vec![fill(i); MIB]);
    }
    let first = c.reply().expect("a reply before SIGTERM");
    assert_eq!(first.1, 0, "write {} failed", first.0);
    let t0 = Instant::now();
    let log = server.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "an idle client must not hold the shutdown for the grace period"
    );
    let mut acked = vec![first.0];
    while let Some((cookie, err)) = c.reply() {
        assert_eq!(err, 0, "write {cookie} failed");
        acked.push(cookie);
    }
    drop(idle);
    assert!(log.contains("waiting for in-flight requests"), "{log}");
    // Every request the server read (it logs each at debug level) was answered.
    for i in 0..WRITES {
        let read = log.contains(&format!("request cookie={i} kind=1 "));
        assert!(
            !read || acked.contains(&i),
            "write {i} was read by the server but never answered:\n{log}"
        );
    }
    assert!(log.contains("every export flushed"), "{log}");
    let got = decrypted(&sc);
    let mut want = plain.clone();
    for &i in &acked {
        want[i as usize * MIB..(i as usize + 1) * MIB].fill(fill(i));
    }
    // Requests the server had not read when it stopped may or may not have run; only
    // check the ranges it acknowledged, and that nothing else changed.
    for i in 0..WRITES as usize {
        let r = i * MIB..(i + 1) * MIB;
        if acked.contains(&(i as u64)) || got[r.clone()] == plain[r.clone()] {
            assert_same_bytes(&format!("MiB {i} after SIGTERM"), &got[r.clone()], &want[r]);
        } else {
            assert!(
                got[r.clone()].iter().all(|&b| b == fill(i as u64)),
                "MiB {i} was neither acknowledged nor left alone: a torn write"
            );
        }
    }
    eprintln!(
        "{} of {WRITES} writes acknowledged before the socket closed",
        acked.len()
    );
}

#[test]
fn a_client_dying_mid_request_harms_nobody() {
    let sc = Scratch::new();
    let (plain, args) = luks_image(&sc, "torn");
    let (server, sock) = Served::unix(&sc, &strs(&args));
    let mut bystander = RawClient::open(&sock, "");

    // Header of a 1 MiB WRITE at 1 MiB, half the payload, then the socket closes.
    let mut torn = RawClient::open(&sock, "");
    torn.request(0, CMD_WRITE, 1, MIB as u64, MIB as u32);
    torn.s.write_all(&vec![0xee; MIB / 2]).unwrap();
    drop(torn);
    // A truncated request header.
    let mut cut = RawClient::open(&sock, "");
    cut.s
        .write_all(&header(0, CMD_WRITE, 2, 0, 4096)[..11])
        .unwrap();
    drop(cut);

    // The already connected client is still served, reads and writes.
    assert_eq!(
        bystander.read(3, MIB as u64 - 100, 200),
        plain[MIB - 100..MIB + 100]
    );
    bystander.write(4, 6 * MIB as u64, &[0x5c; 4096]);
    assert_eq!(bystander.reply(), Some((4, 0)));
    // A new client too.
    let mut late = RawClient::open(&sock, "");
    assert_eq!(late.read(5, 6 * MIB as u64, 4096), vec![0x5c; 4096]);
    drop(late);
    drop(bystander);
    server.stop();

    let got = decrypted(&sc);
    let mut want = plain;
    want[6 * MIB..6 * MIB + 4096].fill(0x5c);
    assert_same_bytes("outside the torn write", &got[..MIB], &want[..MIB]);
    assert_same_bytes("outside the torn write", &got[2 * MIB..], &want[2 * MIB..]);
    // vmcrypt runs a WRITE only once its whole payload arrived.
    assert_same_bytes(
        "the torn write's range",
        &got[MIB..2 * MIB],
        &want[MIB..2 * MIB],
    );
}

/// Whether the server greets a connected socket within `wait`.
fn greeted(s: &mut UnixStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(n) => n == 1,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("reading the greeting: {e}"),
    }
}

#[test]
fn shared_1_makes_the_second_client_wait_for_the_first() {
    let sc = Scratch::new();
    sc.write("d.raw", &plaintext(MIB, "shared"));
    let (server, sock) = Served::unix(&sc, &["--shared", "1", "-f", "raw", &sc.p("d.raw")]);
    let first = RawClient::open(&sock, "");
    let mut second = UnixStream::connect(&sock).unwrap();
    assert!(
        !greeted(&mut second, Duration::from_millis(700)),
        "--shared 1 served a second client at once"
    );
    drop(first);
    assert!(
        greeted(&mut second, Duration::from_secs(10)),
        "the waiting client was not served after the first left"
    );
    drop(second);
    server.stop();
}

#[test]
fn fast_zero_is_advertised_refused_on_luks_and_done_on_a_hole() {
    let sc = Scratch::new();
    let (plain, args) = luks_image(&sc, "fastzero");
    let (server, sock) = Served::unix(&sc, &strs(&args));
    let mut c = RawClient::open(&sock, "");
    assert_ne!(c.flags & FLAG_SEND_FAST_ZERO, 0, "flags {:#06x}", c.flags);
    assert_ne!(c.flags & FLAG_SEND_WRITE_ZEROES, 0);
    c.request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 7, 4096, 65536);
    assert_eq!(
        c.reply(),
        Some((7, 95)),
        "fast zero on LUKS must be ENOTSUP"
    );
    c.request(CMD_FLAG_FAST_ZERO, CMD_READ, 8, 0, 512);
    assert_eq!(c.reply(), Some((8, 22)), "FAST_ZERO on READ is EINVAL");
    drop(c);
    // qemu-io's no-fallback zero write goes out as FAST_ZERO and fails.
    let url = format!("nbd+unix:///?socket={sock}");
    let out = tool("qemu-io", &["-f", "raw", "-c", "write -z -n 0 64k", &url]);
    let all = format!("{}{}", out.stdout_str(), out.stderr);
    assert!(
        all.contains("Operation not supported"),
        "{}",
        out.describe()
    );
    server.stop();
    assert_same_bytes("LUKS after refused fast zeroes", &decrypted(&sc), &plain);

    // A hole in a sparse raw file already reads as zeros: a fast zero that may leave a
    // hole (-u; without it qemu sends NO_HOLE, which needs allocation) succeeds.
    let sc = Scratch::new();
    sc.sparse("sparse.raw", SIZE as u64);
    let (server, sock) = Served::unix(&sc, &["-f", "raw", &sc.p("sparse.raw")]);
    let url = format!("nbd+unix:///?socket={sock}");
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -z -u -n 0 64k",
            "-c",
            "read -P 0 0 64k",
            &url,
        ],
    )
    .ok()
    .stdout_has("wrote 65536/65536");
    server.stop();
}

/// A qcow2+LUKS overlay served while one client dies mid-WRITE and others write,
/// discard and zero: after SIGTERM `qemu-img check` finds no errors or leaks and QEMU
/// reads the expected bytes.
#[test]
fn a_torn_client_leaves_a_qcow2_image_clean() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "torn-qcow2");
    let base = sc.write("base.raw", &plain);
    let img = sc.p("top.qcow2");
    let secret = sc.secret("s0", "pw");
    qemu_qcow2_luks_over_raw(&secret, &base, "", &img, &SIZE.to_string());
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    let (server, sock) = Served::unix(&sc, &["--object", &secret, "--image-opts", &opts]);
    let mut good = RawClient::open(&sock, "");
    good.write(1, 100_000, &[0x11; 70_000]);
    assert_eq!(good.reply(), Some((1, 0)));
    let mut torn = RawClient::open(&sock, "");
    torn.request(0, CMD_WRITE, 7, 3 * MIB as u64, MIB as u32);
    torn.s.write_all(&vec![0xee; MIB / 3]).unwrap();
    drop(torn);
    good.write(2, 5 * MIB as u64 + 17, &[0x22; 200_000]);
    assert_eq!(good.reply(), Some((2, 0)));
    drop(good);
    server.stop();

    let mut want = plain;
    want[100_000..170_000].fill(0x11);
    want[5 * MIB + 17..5 * MIB + 200_017].fill(0x22);
    let out = qemu_img(&[
        "check",
        "--object",
        &secret,
        "--output=json",
        "--image-opts",
        &opts,
    ]);
    let v = out.json();
    assert!(
        out.code == Some(0) && v.get("leaks").is_none() && v.get("corruptions").is_none(),
        "qemu-img check: {}",
        out.describe()
    );
    let raw = sc.p("after.raw");
    qemu_convert_to_raw(&secret, &opts, &raw).ok();
    assert_same_bytes("qcow2 after a torn client", &sc.read("after.raw"), &want);
}
