//! The qcow2 write engine against the real QEMU tools.
//!
//! * A seeded random sequence of writes (unaligned, partial clusters over a backing
//!   file), zero writes and discards goes into a vmcrypt-opened qcow2 image (plain,
//!   LUKS, v2, 512-byte clusters, 1- and 64-bit refcounts, over a raw or encrypted
//!   base) and into a plain byte model; afterwards `qemu-img check` finds no errors or
//!   leaks, and `qemu-img convert`, `qemu-io` and vmcrypt all read the model's bytes.
//! * The reverse: qemu-io writes, vmcrypt reads the model's bytes.
//! * Fault injection: a workload is stopped after every possible number of writes; the
//!   image left behind has no corruptions per `qemu-img check` (leaks are allowed) and
//!   still opens.
mod common;
use common::*;
use serde_json::Value;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::qcow2::{OpenOptions, Qcow2Driver};
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::secrets::SecretStore;
use vmcrypt_block::spec::NodeSpec;

const MIB: u64 = 1 << 20;

/// xorshift64*: a fixed-seed generator so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Zero { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
}

/// A random op sequence over a disk of `size` bytes.
fn ops(seed: u64, size: u64, n: usize) -> Vec<Op> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let len = match r.below(4) {
                0 => 1 + r.below(4096),
                1 => 512 * (1 + r.below(16)),
                2 => 65536 * (1 + r.below(4)),
                _ => 1 + r.below(300_000),
            };
            let off = r.below(size - len.min(size - 1));
            let len = len.min(size - off);
            match r.below(10) {
                0 => Op::Zero { off, len },
                1 => Op::Discard { off, len },
                _ => Op::Write {
                    off,
                    len,
                    byte: 1 + r.below(255) as u8,
                },
            }
        })
        .collect()
}

/// Apply an op to the model. Discard is advisory: the model keeps what the image
/// reads afterwards (`after`).
fn apply_model(model: &mut [u8], op: Op) {
    match op {
        Op::Write { off, len, byte } => model[off as usize..(off + len) as usize].fill(byte),
        Op::Zero { off, len } => model[off as usize..(off + len) as usize].fill(0),
        Op::Discard { .. } => {}
    }
}

fn apply_driver(d: &dyn BlockDriver, model: &mut [u8], op: Op) {
    match op {
        Op::Write { off, len, byte } => d.write_at(&vec![byte; len as usize], off).unwrap(),
        Op::Zero { off, len } => d.write_zeroes(off, len).unwrap(),
        Op::Discard { off, len } => {
            d.discard(off, len).unwrap();
            // Discard may zero whole clusters; take what the image now reads.
            let mut got = vec![0u8; len as usize];
            d.read_at(&mut got, off).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&got);
        }
    }
    apply_model(model, op);
}

fn spec(opts: &str) -> NodeSpec {
    NodeSpec::from_options(&vmcrypt_block::opts::parse_keyval(opts, None).unwrap()).unwrap()
}

fn store_of(objects: &[String]) -> SecretStore {
    let mut s = SecretStore::new();
    for o in objects {
        s.add_object(o).unwrap();
    }
    s
}

fn open_rw(store: &SecretStore, opts: &str) -> Arc<dyn BlockDriver> {
    open_node(store, opts, false)
}

fn open_node(store: &SecretStore, opts: &str, read_only: bool) -> Arc<dyn BlockDriver> {
    let ctx = OpenContext {
        secrets: store,
        read_only,
        metadata_only: false,
        limits: Default::default(),
        writable_backing: false,
        force_share: false,
    };
    graph::open(&spec(opts), &ctx).unwrap()
}

fn qemu_check_clean(image_opts: &str, objects: &[String]) {
    let mut args: Vec<&str> = vec!["check"];
    for o in objects {
        args.extend(["--object", o]);
    }
    args.extend(["--output=json", "--image-opts", image_opts]);
    let out = qemu_img(&args);
    let v = out.json();
    assert_eq!(out.code, Some(0), "qemu-img check: {}", out.describe());
    assert!(v.get("leaks").is_none(), "leaks: {v}");
    assert!(v.get("corruptions").is_none(), "corruptions: {v}");
}

/// Read the whole disk with `qemu-img convert` (same options as ours).
fn qemu_read(sc: &Scratch, objects: &[String], image_opts: &str, name: &str) -> Vec<u8> {
    let out = sc.p(name);
    let mut args: Vec<&str> = vec!["convert"];
    for o in objects {
        args.extend(["--object", o]);
    }
    args.extend(["--image-opts", image_opts, "-O", "raw", &out]);
    qemu_img(&args).ok();
    sc.read(name)
}

/// Compare windows of the disk as `qemu-io read -v` prints them.
fn qemu_io_windows(objects: &[String], image_opts: &str, model: &[u8], seed: u64) {
    let mut r = Rng(seed);
    let mut cmds = Vec::new();
    let mut wins = Vec::new();
    for _ in 0..6 {
        let off = r.below(model.len() as u64 - 512) & !15;
        wins.push(off);
        cmds.push(format!("read -v {off} 512"));
    }
    let mut args: Vec<String> = vec!["--image-opts".into()];
    for o in objects {
        args.extend(["--object".into(), o.clone()]);
    }
    for c in &cmds {
        args.extend(["-c".into(), c.clone()]);
    }
    args.push(image_opts.into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("qemu-io", &a).ok();
    let text = out.stdout_str();
    let mut dumped = std::collections::HashMap::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let bytes: Vec<u8> = rest
            .split_whitespace()
            .take(16)
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        dumped.insert(addr, bytes);
    }
    for off in wins {
        for line in (off..off + 512).step_by(16) {
            let got = dumped
                .get(&line)
                .unwrap_or_else(|| panic!("no dump line {line:#x}"));
            assert_eq!(
                got[..],
                model[line as usize..line as usize + 16],
                "qemu-io reads different bytes at {line:#x}"
            );
        }
    }
}

struct Case {
    name: &'static str,
    create: &'static str,
    luks: bool,
    backing: Option<&'static str>,
}

fn run_model_case(case: &Case, seed: u64) {
    let sc = Scratch::new();
    let size = 6 * MIB + 4096 + 1536;
    let key = sc.write("key", PASS);
    let bkey = sc.write("bkey", PASS2);
    let objects = vec![
        format!("secret,id=s0,file={key}"),
        format!("secret,id=sb,file={bkey}"),
    ];
    let mut model = vec![0u8; size as usize];
    let img = sc.p("img.qcow2");
    let mut create: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
    for o in &objects {
        create.extend(["--object".into(), o.clone()]);
    }
    let mut o = case.create.to_string();
    if case.luks {
        o.push_str(",encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10");
    }
    if let Some(bfmt) = case.backing {
        let base = sc.p("base.img");
        model = plaintext(size as usize, "qcow2-base");
        std::fs::write(&base, &model).unwrap();
        if bfmt == "qcow2-luks" {
            qemu_img(&[
                "convert",
                "-q",
                "--object",
                &objects[1],
                "-O",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sb,encrypt.iter-time=10",
                &base,
                &sc.p("base.qcow2"),
            ])
            .ok();
            create.extend(["-b".into(), sc.p("base.qcow2"), "-F".into(), "qcow2".into()]);
        } else {
            create.extend(["-b".into(), base, "-F".into(), "raw".into()]);
        }
    }
    create.extend(["-o".into(), o, img.clone(), size.to_string()]);
    let a: Vec<&str> = create.iter().map(String::as_str).collect();
    qemu_img(&a).ok();

    let mut image_opts = format!("driver=qcow2,file.filename={img}");
    if case.luks {
        image_opts.push_str(",encrypt.key-secret=s0");
    }
    if case.backing == Some("qcow2-luks") {
        image_opts.push_str(",backing.encrypt.key-secret=sb");
    }
    let store = store_of(&objects);
    {
        let d = open_rw(&store, &image_opts);
        for op in ops(seed, size, 120) {
            apply_driver(d.as_ref(), &mut model, op);
        }
        d.flush().unwrap();
        let mut all = vec![0u8; size as usize];
        d.read_at(&mut all, 0).unwrap();
        assert_same_bytes(
            &format!("{}: vmcrypt before close", case.name),
            &all,
            &model,
        );
    }
    qemu_check_clean(&image_opts, &objects);
    let got = qemu_read(&sc, &objects, &image_opts, "out.raw");
    assert_same_bytes(&format!("{}: qemu-img convert", case.name), &got, &model);
    qemu_io_windows(&objects, &image_opts, &model, seed ^ 0x55);
    // Reopen with vmcrypt: the metadata on disk is what we read.
    let d = open_node(&store, &image_opts, true);
    let mut all = vec![0u8; size as usize];
    d.read_at(&mut all, 0).unwrap();
    assert_same_bytes(
        &format!("{}: vmcrypt after reopen", case.name),
        &all,
        &model,
    );
}

#[test]
fn random_writes_match_a_model_plain_and_luks() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    let cases = [
        Case {
            name: "plain 64k",
            create: "cluster_size=65536",
            luks: false,
            backing: None,
        },
        Case {
            name: "luks 64k",
            create: "cluster_size=65536",
            luks: true,
            backing: None,
        },
        Case {
            name: "v2 4k",
            create: "compat=0.10,cluster_size=4096",
            luks: false,
            backing: None,
        },
        Case {
            name: "512-byte clusters, 1-bit refcounts",
            create: "cluster_size=512,refcount_bits=1",
            luks: true,
            backing: None,
        },
        Case {
            name: "64-bit refcounts",
            create: "refcount_bits=64,cluster_size=16384",
            luks: false,
            backing: None,
        },
        Case {
            name: "extended L2, 64k",
            create: "extended_l2=on,cluster_size=65536",
            luks: false,
            backing: None,
        },
        Case {
            name: "extended L2, 32k, luks",
            create: "extended_l2=on,cluster_size=32768",
            luks: true,
            backing: None,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_model_case(c, 0x9e37_79b9 + i as u64);
    }
}

#[test]
fn random_writes_over_backing_files() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    let cases = [
        Case {
            name: "luks over raw (Nova)",
            create: "cluster_size=65536",
            luks: true,
            backing: Some("raw"),
        },
        Case {
            name: "plain over raw, v2",
            create: "compat=0.10",
            luks: false,
            backing: Some("raw"),
        },
        Case {
            name: "luks over luks, 4k clusters",
            create: "cluster_size=4096",
            luks: true,
            backing: Some("qcow2-luks"),
        },
        Case {
            name: "extended L2 64k, luks over raw",
            create: "extended_l2=on,cluster_size=65536",
            luks: true,
            backing: Some("raw"),
        },
        Case {
            name: "extended L2 32k over raw",
            create: "extended_l2=on,cluster_size=32768",
            luks: false,
            backing: Some("raw"),
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_model_case(c, 0x1234_5678 + i as u64);
    }
}

/// qemu-io writes, vmcrypt reads.
#[test]
fn qemu_io_writes_read_back_through_vmcrypt() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let size = 4 * MIB;
    let key = sc.write("key", PASS);
    let obj = format!("secret,id=s0,file={key}");
    let base = sc.write("base.raw", &plaintext(size as usize, "qemu-io-base"));
    let img = sc.p("img.qcow2");
    qemu_qcow2_luks_over_raw(&obj, &base, "cluster_size=4096", &img, &size.to_string());
    let mut model = sc.read("base.raw");
    let mut args: Vec<String> = vec!["--object".into(), obj.clone(), "--image-opts".into()];
    for op in ops(77, size, 60) {
        let c = match op {
            Op::Write { off, len, byte } => format!("write -P {byte} {off} {len}"),
            Op::Zero { off, len } => format!("write -z {off} {len}"),
            // qemu's discard granularity differs; keep discards whole-cluster here.
            Op::Discard { off, len } => {
                let (o, l) = (off / 4096 * 4096, len / 4096 * 4096);
                if l == 0 {
                    continue;
                }
                model[o as usize..(o + l) as usize].fill(0);
                format!("discard {o} {l}")
            }
        };
        apply_model(&mut model, op);
        args.extend(["-c".into(), c]);
    }
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    args.push(opts.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("qemu-io", &a).ok();
    let store = store_of(std::slice::from_ref(&obj));
    let d = open_node(&store, &opts, true);
    let mut all = vec![0u8; size as usize];
    d.read_at(&mut all, 0).unwrap();
    assert_same_bytes("vmcrypt reading qemu-io's writes", &all, &model);
}

/// The workload the fault-injection test interrupts: allocating and in-place writes,
/// copy-on-write over partial clusters, zeroing, discard, growth past the L1 table and
/// several flushes, on 512-byte clusters so refcount blocks and the refcount table
/// have to grow too.
fn faulty_workload(d: &Qcow2Driver) -> vmcrypt_error::Result<()> {
    let size = d.size();
    let mut r = Rng(4242);
    for round in 0..4 {
        for _ in 0..12 {
            let off = r.below(size - 70_000);
            let len = 1 + r.below(70_000);
            d.write_at(&vec![round as u8 + 1; len as usize], off)?;
        }
        let off = r.below(size - 9000);
        d.write_zeroes(off, 9000)?;
        d.discard(r.below(size - 5000), 5000)?;
        d.flush()?;
    }
    d.resize(size * 4)?;
    d.write_at(&[7u8; 3000], size * 3 + 100)?;
    d.flush()
}

fn open_mem(file: Arc<dyn BlockDriver>, pass: Option<&[u8]>) -> vmcrypt_error::Result<Qcow2Driver> {
    let opts = OpenOptions {
        passphrase: pass,
        writable: true,
        ..Default::default()
    };
    Qcow2Driver::open(file, &opts)
}

#[test]
fn interrupted_writes_leave_no_corruption() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let key = sc.write("key", PASS);
    let obj = format!("secret,id=s0,file={key}");
    for (luks, base) in [
        (false, "cluster_size=512"),
        (true, "cluster_size=512"),
        (true, "cluster_size=16384,extended_l2=on"),
    ] {
        let img = sc.p("fresh.qcow2");
        let mut o = format!("{base},lazy_refcounts=off");
        if luks {
            o.push_str(",encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10");
        }
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "--object", &obj, "-o", &o, &img, "1M",
        ])
        .ok();
        let fresh = std::fs::read(&img).unwrap();
        let pass = luks.then_some(PASS);
        // Count the writes of a complete run.
        let total = {
            let mem = Arc::new(MemDriver::new(fresh.clone()));
            let faulty = Arc::new(FaultyDriver::new(mem.clone(), usize::MAX));
            let d = open_mem(faulty.clone(), pass).unwrap();
            faulty_workload(&d).unwrap();
            drop(d);
            faulty.writes_done()
        };
        assert!(total > 50, "workload too small: {total} writes");
        let step = (total / 150).max(1);
        for budget in (0..total).step_by(step) {
            let mem = Arc::new(MemDriver::new(fresh.clone()));
            let faulty: Arc<dyn BlockDriver> = Arc::new(FaultyDriver::new(mem.clone(), budget));
            let d = open_mem(faulty, pass).unwrap();
            assert!(
                faulty_workload(&d).is_err(),
                "budget {budget} of {total} did not stop it"
            );
            drop(d);
            let path = sc.p("crashed.qcow2");
            std::fs::write(&path, mem.snapshot()).unwrap();
            let mut opts = format!("driver=qcow2,file.filename={path}");
            if luks {
                opts.push_str(",encrypt.key-secret=s0");
            }
            let out = qemu_img(&[
                "check",
                "--object",
                &obj,
                "--output=json",
                "--image-opts",
                &opts,
            ]);
            let v = out.json();
            assert!(
                v.get("corruptions").is_none() && matches!(out.code, Some(0 | 3)),
                "{base} luks={luks} budget {budget}/{total}: {}",
                out.describe()
            );
            // It still opens and reads.
            let mem2: Arc<dyn BlockDriver> = Arc::new(MemDriver::new(mem.snapshot()));
            let d = open_mem(mem2, pass).unwrap();
            let mut buf = vec![0u8; d.size() as usize];
            d.read_at(&mut buf, 0).unwrap();
        }
    }
}

/// Writes over an image with an internal snapshot and compressed clusters: shared and
/// compressed clusters are copied, never overwritten, so the snapshot still reads its
/// old contents and `qemu-img check` stays clean.
#[test]
fn snapshots_and_compressed_clusters_survive_writes() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let size = 3 * MIB;
    let old = plaintext(size as usize, "snapshot-old");
    let src = sc.write("src.raw", &old);
    let img = sc.p("img.qcow2");
    qemu_compressed_qcow2("cluster_size=4096", &src, &img);
    qemu_img(&["snapshot", "-c", "before", &img]).ok();
    let mut model = old.clone();
    let store = SecretStore::new();
    let opts = format!("driver=qcow2,file.filename={img}");
    {
        let d = open_rw(&store, &opts);
        for op in ops(99, size, 80) {
            apply_driver(d.as_ref(), &mut model, op);
        }
        d.flush().unwrap();
    }
    qemu_check_clean(&opts, &[]);
    let now = qemu_read(&sc, &[], &opts, "now.raw");
    assert_same_bytes("active layer after writes", &now, &model);
    let snap = sc.p("snap.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-l",
        "snapshot.name=before",
        "-O",
        "raw",
        &img,
        &snap,
    ])
    .ok();
    assert_same_bytes("internal snapshot", &sc.read("snap.raw"), &old);
}

/// Eight threads write unaligned data into neighbouring ranges whose edges share
/// clusters and 512-byte sectors, on an encrypted image over a backing file: no write
/// may lose another's bytes (copy-on-write and read-modify-write are serialized).
#[test]
fn concurrent_writers_share_clusters_safely() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let key = sc.write("key", PASS);
    let obj = format!("secret,id=s0,file={key}");
    const REGION: u64 = 300_001;
    let size = (8 * REGION).div_ceil(512) * 512 + 1024;
    let base = plaintext(size as usize, "threads-base");
    let base_path = sc.write("base.raw", &base);
    let img = sc.p("img.qcow2");
    qemu_qcow2_luks_over_raw(
        &obj,
        &base_path,
        "cluster_size=4096",
        &img,
        &size.to_string(),
    );
    let store = store_of(std::slice::from_ref(&obj));
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    let d = open_rw(&store, &opts);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let d = d.clone();
                let start = t * REGION;
                let mut part = base[start as usize..(start + REGION) as usize].to_vec();
                s.spawn(move || {
                    let mut r = Rng(1000 + t);
                    for i in 0..600u64 {
                        // Mostly short writes at the edges, where neighbours collide.
                        let len = 1 + r.below(if i % 8 == 0 { 9000 } else { 700 });
                        let off = match r.below(3) {
                            0 => r.below(REGION - len),
                            1 => r.below(2048),
                            _ => REGION - len - r.below(2048),
                        };
                        let byte = (t * 31 + i) as u8 | 1;
                        d.write_at(&vec![byte; len as usize], start + off).unwrap();
                        part[off as usize..(off + len) as usize].fill(byte);
                    }
                    part
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    d.flush().unwrap();
    drop(d);
    let mut model = parts.concat();
    model.extend_from_slice(&base[model.len()..]);
    qemu_check_clean(&opts, std::slice::from_ref(&obj));
    let got = qemu_read(&sc, std::slice::from_ref(&obj), &opts, "out.raw");
    assert_same_bytes("after concurrent writers", &got, &model);
}

/// Persistent bitmaps are not maintained by vmcrypt: the first write flags them
/// "in-use" (QEMU then treats them as inconsistent) instead of leaving stale bits, the
/// image stays free of leaks, and QEMU can still remove them.
#[test]
fn writes_flag_persistent_bitmaps_in_use() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let img = sc.p("bm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "16M"]).ok();
    qemu_img(&["bitmap", "--add", &img, "b0"]).ok();
    qemu_img(&["bitmap", "--add", &img, "backup-2026"]).ok();
    let flags = |info: &Value| -> Vec<Value> {
        info["format-specific"]["data"]["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["flags"].clone())
            .collect()
    };
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert!(
        flags(&info)
            .iter()
            .all(|f| !f.to_string().contains("in-use")),
        "{info}"
    );
    {
        let d = open_rw(
            &SecretStore::new(),
            &format!("driver=qcow2,file.filename={img}"),
        );
        d.write_at(&[9u8; 70_000], 12_345).unwrap();
        d.flush().unwrap();
    }
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    let f = flags(&info);
    assert_eq!(f.len(), 2, "{info}");
    assert!(f.iter().all(|f| f.to_string().contains("in-use")), "{info}");
    qemu_check_clean(&format!("driver=qcow2,file.filename={img}"), &[]);
    qemu_img(&["bitmap", "--remove", &img, "b0"]).ok();
    qemu_check_clean(&format!("driver=qcow2,file.filename={img}"), &[]);
}

/// A hostile image whose L2 entry (marked COPIED) points at metadata: the L1 table,
/// the refcount table or its own L2 table. A write there is refused as corrupt
/// (exit 4), and, as QEMU's overlap checks do, only the corrupt bit changes in the file.
#[test]
fn hostile_l2_entries_never_overwrite_metadata() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let img = sc.p("h.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "4M"]).ok();
    tool(
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", "-f", "qcow2", &img],
    )
    .ok();
    let good = sc.read("h.qcow2");
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be64(&good, 40) as usize;
    let l2 = (be64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let reftable = be64(&good, 48);
    let data = sc.write("d.raw", &[0x22; 4096]);
    // (Offset 0, the header, means "unallocated" in an L2 entry.)
    for (what, target) in [
        ("L1 table", l1 as u64),
        ("refcount table", reftable),
        ("its own L2 table", l2 as u64),
    ] {
        let mut bad = good.clone();
        let entry = (1u64 << 63) | target;
        bad[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
        let path = sc.write("bad.qcow2", &bad);
        vmcrypt_write_raw(&data, &format!("driver=qcow2,file.filename={path}"))
            .code_is(4)
            .stderr_has("would overwrite metadata");
        let after = sc.read("bad.qcow2");
        assert_eq!(be64(&after, 72) & 2, 2, "{what}: corrupt bit not set");
        let mut expect = bad.clone();
        expect[72..80].copy_from_slice(&after[72..80]);
        assert!(
            after == expect,
            "{what}: the refused write changed more than the corrupt bit"
        );
    }
}

/// How the image of [`extended_l2_allocation_matches_qemu`] starts.
#[derive(Clone, Copy)]
enum Start {
    Empty,
    /// Over a raw backing file.
    Backed,
    /// All clusters compressed.
    Compressed,
    /// With an internal snapshot sharing some clusters.
    Snapshot,
}

/// `qemu-img map --output=json` of an image without host offsets, adjacent runs of
/// the same kind merged (host layouts differ between the two writers).
fn map_kinds(path: &str) -> Vec<(u64, u64, Value)> {
    let out = qemu_img(&["map", "--output=json", path]).ok();
    let mut runs: Vec<(u64, u64, Value)> = Vec::new();
    for mut e in out.json().as_array().unwrap().iter().cloned() {
        let o = e.as_object_mut().unwrap();
        let start = o.remove("start").unwrap().as_u64().unwrap();
        let len = o.remove("length").unwrap().as_u64().unwrap();
        o.remove("offset");
        match runs.last_mut() {
            Some(r) if r.2 == e && r.0 + r.1 == start => r.1 += len,
            _ => runs.push((start, len, e)),
        }
    }
    runs
}

/// The same writes, zero writes (`write -z -u`) and discards applied by qemu-io to
/// one copy of an image with extended L2 entries and by vmcrypt to another leave the
/// same allocation map (subcluster granularity) and the same bytes; the image starts
/// empty, over a backing file, compressed or sharing clusters with a snapshot.
#[test]
fn extended_l2_allocation_matches_qemu() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    for (i, (create, start)) in [
        ("extended_l2=on,cluster_size=65536", Start::Empty),
        ("extended_l2=on,cluster_size=32768", Start::Backed),
        ("extended_l2=on,cluster_size=16384", Start::Empty),
        ("extended_l2=on,cluster_size=65536", Start::Compressed),
        ("extended_l2=on,cluster_size=32768", Start::Snapshot),
    ]
    .into_iter()
    .enumerate()
    {
        let sc = Scratch::new();
        let size = 3 * MIB + 4096 + 1536;
        let (a, b) = (sc.p("qemu.qcow2"), sc.p("vmcrypt.qcow2"));
        let sz = size.to_string();
        let data = sc.write("data.raw", &plaintext(size as usize, "xl2-data"));
        match start {
            Start::Empty | Start::Snapshot => {
                qemu_img(&["create", "-q", "-f", "qcow2", "-o", create, &a, &sz]).ok();
            }
            Start::Backed => {
                qemu_img(&[
                    "create", "-q", "-f", "qcow2", "-o", create, "-b", &data, "-F", "raw", &a, &sz,
                ])
                .ok();
            }
            Start::Compressed => {
                let o = ["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o"];
                qemu_img(&[&o[..], &[create, &data, &a]].concat()).ok();
            }
        }
        if let Start::Snapshot = start {
            // Clusters shared with an internal snapshot (no COPIED flag), with holes.
            let c = [
                "-c",
                "write -P 9 0 100000",
                "-c",
                "write -P 8 1048576 70000",
            ];
            tool("qemu-io", &[&c[..], &[a.as_str()]].concat()).ok();
            qemu_img(&["snapshot", "-c", "s1", &a]).ok();
        }
        std::fs::copy(&a, &b).unwrap();
        let mut cmds: Vec<String> = Vec::new();
        let ops = ops(0xabc + i as u64, size, 80);
        for op in &ops {
            let c = match *op {
                Op::Write { off, len, byte } => format!("write -P {byte} {off} {len}"),
                Op::Zero { off, len } => format!("write -z -u {off} {len}"),
                Op::Discard { off, len } => format!("discard {off} {len}"),
            };
            cmds.extend(["-c".into(), c]);
        }
        let mut qa: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qa.push(&a);
        tool("qemu-io", &qa).ok();
        {
            let store = SecretStore::new();
            let d = open_rw(&store, &format!("driver=qcow2,file.filename={b}"));
            let mut model = vec![0u8; size as usize];
            for op in ops {
                apply_driver(d.as_ref(), &mut model, op);
            }
            d.flush().unwrap();
        }
        qemu_check_clean(&format!("driver=qcow2,file.filename={b}"), &[]);
        let (ma, mb) = (map_kinds(&a), map_kinds(&b));
        if ma != mb {
            let first = ma.iter().zip(&mb).find(|(x, y)| x != y);
            panic!(
                "{create}: qemu-img map differs ({} vs {} runs), first difference: {first:?}",
                ma.len(),
                mb.len()
            );
        }
        let ra = qemu_read(
            &sc,
            &[],
            &format!("driver=qcow2,file.filename={a}"),
            "a.raw",
        );
        let rb = qemu_read(
            &sc,
            &[],
            &format!("driver=qcow2,file.filename={b}"),
            "b.raw",
        );
        assert_same_bytes(&format!("{create}: qemu-io vs vmcrypt bytes"), &rb, &ra);
    }
}

/// `commit` of an overlay with extended L2 entries into its raw base: the base gets the
/// overlay's bytes, the overlay is emptied (every entry and bitmap cleared, its clusters
/// freed) and `qemu-img check` finds no leaks.
#[test]
fn extended_l2_overlay_commits_and_empties() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let size = 2 * MIB + 512;
    let mut model = plaintext(size as usize, "xl2-commit-base");
    let base = sc.write("base.raw", &model);
    let img = sc.p("top.qcow2");
    let sz = size.to_string();
    let o = "extended_l2=on,cluster_size=32768";
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-o", o, "-b", &base, "-F", "raw", &img, &sz,
    ])
    .ok();
    let opts = format!("driver=qcow2,file.filename={img}");
    let store = SecretStore::new();
    {
        let ctx = OpenContext {
            secrets: &store,
            read_only: false,
            metadata_only: false,
            limits: Default::default(),
            writable_backing: true,
            force_share: false,
        };
        let d = graph::open(&spec(&opts), &ctx).unwrap();
        for op in ops(0x5eed, size, 60) {
            apply_driver(d.as_ref(), &mut model, op);
        }
        d.flush().unwrap();
        d.as_commit()
            .unwrap()
            .commit(false, &mut |_, _| {})
            .unwrap();
    }
    qemu_check_clean(&opts, &[]);
    assert_same_bytes("committed base", &sc.read("base.raw"), &model);
    let map = qemu_img(&["map", "--output=json", &img]).ok().json();
    for e in map.as_array().unwrap() {
        assert_eq!(e["depth"], 1, "the emptied overlay still holds {e}");
    }
    let got = qemu_read(&sc, &[], &opts, "top.raw");
    assert_same_bytes("emptied overlay reads the base", &got, &model);
}
