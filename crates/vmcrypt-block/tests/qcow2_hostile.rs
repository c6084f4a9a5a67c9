//! Hostile qcow2 images against the driver: a real image (made by qemu-img, written by
//! qemu-io, with compressed clusters, an internal snapshot, a bitmap and a backing-less
//! LUKS variant) has its metadata damaged by seeded random byte flips and truncations;
//! opening, reading, writing, zeroing, discarding, growing and flushing must each end
//! in `Ok` or an `Err`, never a panic, and never take unbounded memory or time.
//! `HOSTILE_TRACE=1` prints each round and step (to find a round that hangs).
mod common;
use common::{Rng, run};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::qcow2::{OpenOptions, Qcow2Driver};

const PASS: &[u8] = b"hostile pass";

/// A small written image; `luks` embeds a LUKS header keyed by [`PASS`].
fn seed_image(dir: &std::path::Path, luks: bool) -> Vec<u8> {
    let key = dir.join("key");
    std::fs::write(&key, PASS).unwrap();
    let obj = format!("secret,id=s0,file={}", key.display());
    let src = dir.join("src.raw");
    let mut data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i / 7 % 251) as u8).collect();
    data[1 << 20..(1 << 20) + 300_000].fill(0);
    std::fs::write(&src, &data).unwrap();
    let img = dir.join(if luks { "l.qcow2" } else { "p.qcow2" });
    let (img_s, src_s) = (img.to_str().unwrap(), src.to_str().unwrap());
    if luks {
        let o = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4096";
        run(
            "qemu-img",
            &[
                "convert", "-q", "--object", &obj, "-f", "raw", "-O", "qcow2", "-o", o, src_s,
                img_s,
            ],
        );
    } else {
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=4096",
                src_s,
                img_s,
            ],
        );
        run("qemu-img", &["snapshot", "-c", "s1", img_s]);
        run("qemu-img", &["bitmap", "--add", img_s, "b0"]);
        run(
            "qemu-io",
            &[
                "-c",
                "write -P 0x33 5000 20000",
                "-c",
                "write -z 100000 8192",
                "-f",
                "qcow2",
                img_s,
            ],
        );
    }
    std::fs::read(&img).unwrap()
}

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything a client may do to an open image; errors are fine.
fn exercise(d: &Qcow2Driver) {
    let trace = |s: &str| {
        if std::env::var_os("HOSTILE_TRACE").is_some() {
            eprintln!("  {s}");
        }
    };
    let size = d.size();
    trace(&format!("size {size}"));
    if size == 0 || size > 1 << 30 {
        return;
    }
    let mut buf = vec![0u8; size.min(4 << 20) as usize];
    let _ = d.read_at(&mut buf, 0);
    trace("read");
    let mut at = 0;
    while at < size.min(4 << 20) {
        if d.block_status(at, size - at)
            .map(|e| at += e.length.max(1))
            .is_err()
        {
            break;
        }
    }
    trace("status");
    let _ = d.write_at(
        &[0x5a; 9000],
        4000.min(size - 1).min(size.saturating_sub(9000)),
    );
    trace("write");
    let _ = d.write_zeroes(0, size.min(70_000));
    trace("zero");
    let _ = d.discard(0, size.min(8192));
    trace("discard");
    let _ = d.resize(size + (1 << 20));
    trace("resize");
    let _ = d.flush();
    trace("flush");
}

fn fuzz(seed_bytes: &[u8], pass: Option<&[u8]>, rounds: u64, seed: u64) {
    let mut r = Rng(seed);
    // Damage only the metadata area (and a little beyond): headers, tables, LUKS.
    let meta_end = seed_bytes.len().min(96 * 1024) as u64;
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        let mut img = seed_bytes.to_vec();
        for _ in 0..1 + r.below(6) {
            let at = r.below(meta_end) as usize;
            img[at] ^= 1 << r.below(8);
        }
        if r.below(10) == 0 {
            img.truncate(r.below(img.len() as u64) as usize);
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mem = Arc::new(MemDriver::new(img));
            let opts = OpenOptions {
                passphrase: pass,
                writable: true,
                ..Default::default()
            };
            if let Ok(d) = Qcow2Driver::open(mem, &opts) {
                exercise(&d);
            }
        }));
        assert!(
            result.is_ok(),
            "seed {seed:#x} round {round}: the driver panicked"
        );
        if std::env::var_os("HOSTILE_TRACE").is_some() {
            eprintln!("round {round}: {:?}", started.elapsed());
        }
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < Duration::from_secs(20),
        "a damaged image took {worst:?}"
    );
}

#[test]
fn damaged_plain_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let img = seed_image(dir.path(), false);
    fuzz(&img, None, 1500, 0x5eed_0001);
}

#[test]
fn damaged_luks_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let img = seed_image(dir.path(), true);
    fuzz(&img, Some(PASS), 150, 0x5eed_0002);
}

#[test]
fn damaged_qcow_v1_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v1.qcow");
    let s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow", s, "2M"]);
    run(
        "qemu-io",
        &["-c", "write -P 0x44 3000 70000", "-f", "qcow", s],
    );
    let bytes = std::fs::read(&img).unwrap();
    let mut r = Rng(0x5eed_0003);
    for round in 0..800 {
        let mut b = bytes.clone();
        for _ in 0..1 + r.below(4) {
            let at = r.below(b.len().min(16384) as u64) as usize;
            b[at] ^= 1 << r.below(8);
        }
        let ok = catch_unwind(AssertUnwindSafe(|| {
            let mem = Arc::new(MemDriver::new(b));
            if let Ok(d) =
                vmcrypt_block::drivers::qcow2::QcowDriver::open(mem, &OpenOptions::default())
                && d.size() <= 1 << 30
            {
                let mut buf = vec![0u8; d.size().min(4 << 20) as usize];
                let _ = d.read_at(&mut buf, 0);
                let _ = d.block_status(0, d.size());
            }
        }));
        assert!(ok.is_ok(), "round {round}: the qcow driver panicked");
    }
}

#[test]
fn damaged_extended_l2_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.qcow2");
    let s = img.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=16384",
            s,
            "2M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x21 1000 30000",
            "-c",
            "write -z 65536 4096",
            "-c",
            "write -P 0x22 300000 2048",
            "-f",
            "qcow2",
            s,
        ],
    );
    let bytes = std::fs::read(&img).unwrap();
    fuzz(&bytes, None, 800, 0x5eed_0004);
}
