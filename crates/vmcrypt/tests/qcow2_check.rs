//! `vmcrypt check` on qcow2 against `qemu-img check`: images made and written by QEMU
//! (plain, v2, LUKS, backing, compressed, snapshot, bitmap, extended L2, 1- and 64-bit
//! refcounts) must check the same (exit code, JSON, human text); byte-patched leaks and
//! corruptions must be counted the same; `vmcrypt check -r leaks` must leave an image
//! qemu-img finds clean.
mod common;

use common::*;
use serde_json::Value;

const SECRET: &str = "secret,id=s0,data=x";

/// A deterministic mix of writes, zero writes and discards (offsets in 4 KiB units).
fn io_script(seed: u64, size: u64) -> Vec<String> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let units = size / 4096;
    let mut cmds = Vec::new();
    for i in 0..60 {
        let off = (next() % (units - 64)) * 4096;
        let len = (1 + next() % 40) * 4096;
        cmds.push(match i % 5 {
            3 => format!("write -z {off} {len}"),
            4 => format!("discard {off} {len}"),
            _ => format!("write -P {} {off} {len}", i % 251),
        });
    }
    cmds
}

/// Run qemu-io commands on `img` (image-opts string when `opts`).
fn qemu_io(target: &str, opts: bool, cmds: &[String]) {
    let mut args: Vec<&str> = vec!["--object", SECRET];
    if opts {
        args.push("--image-opts");
    } else {
        args.extend(["-f", "qcow2"]);
    }
    args.push(target);
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    tool("qemu-io", &args).ok();
}

fn create(sc: &Scratch, name: &str, opts: &str, size: &str) -> String {
    let img = sc.p(name);
    let mut args = vec!["create", "-q", "--object", SECRET, "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([img.as_str(), size]);
    qemu_img(&args).ok();
    img
}

/// qemu-img's and our check of `img`: (exit code, JSON) each.
fn both(img: &str) -> ((Option<i32>, Value), (Option<i32>, Value)) {
    both_args(&[img])
}

/// Like [`both`] with extra arguments before the image (`--image-opts`, `--object`).
fn both_args(args: &[&str]) -> ((Option<i32>, Value), (Option<i32>, Value)) {
    let all: Vec<&str> = ["check", "--output=json"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let q = qemu_img(&all);
    let v = vmcrypt(&all);
    let parse = |o: &Out| serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    ((q.code, parse(&q)), (v.code, parse(&v)))
}

/// Both tools agree completely (JSON object and human text) on `img`.
#[track_caller]
fn assert_same_check(img: &str) -> Value {
    let (q, v) = both(img);
    assert_eq!(
        v, q,
        "vmcrypt check (left) vs qemu-img check (right) on {img}"
    );
    let qj = qemu_img(&["check", "--output=json", img]).stdout_str();
    let vj = vmcrypt(&["check", "--output=json", img]).stdout_str();
    assert_eq!(vj, qj, "JSON text (key order)");
    let qh = qemu_img(&["check", img]);
    let vh = vmcrypt(&["check", img]);
    assert_eq!(vh.stdout_str(), qh.stdout_str(), "human output");
    q.1
}

#[test]
fn clean_images_check_like_qemu_img() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let cases = [
        ("plain.qcow2", ""),
        ("v2.qcow2", "compat=0.10"),
        ("c4k.qcow2", "cluster_size=4096"),
        ("rc1.qcow2", "refcount_bits=1"),
        ("rc64.qcow2", "refcount_bits=64"),
        ("xl2.qcow2", "extended_l2=on,cluster_size=64k"),
        ("lazy.qcow2", "lazy_refcounts=on"),
    ];
    for (i, (name, opts)) in cases.iter().enumerate() {
        let img = create(&sc, name, opts, "64M");
        assert_same_check(&img);
        qemu_io(&img, false, &io_script(i as u64 + 1, 64 << 20));
        let j = assert_same_check(&img);
        assert!(
            j["allocated-clusters"].as_u64().unwrap_or(0) > 0,
            "{name}: {j}"
        );
    }
}

#[test]
fn luks_backing_compressed_snapshot_bitmap_images_check_like_qemu_img() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    // Encrypted: no key is needed to check.
    let enc = create(
        &sc,
        "enc.qcow2",
        "encrypt.format=luks,encrypt.key-secret=s0",
        "32M",
    );
    let opts = format!("driver=qcow2,file.filename={enc},encrypt.key-secret=s0");
    qemu_io(&opts, true, &io_script(7, 32 << 20));
    // qemu-img needs the key to open the image; vmcrypt accepts and ignores it.
    let (q, v) = both_args(&["--object", SECRET, "--image-opts", &opts]);
    assert_eq!(v, q, "encrypted image");
    assert!(q.1["allocated-clusters"].as_u64().unwrap_or(0) > 0, "{q:?}");
    vmcrypt(&["check", &enc]).code_is(0);
    // Legacy AES encryption (crypt_method 1): no key needed either.
    let aes = create(
        &sc,
        "aes.qcow2",
        "encrypt.format=aes,encrypt.key-secret=s0",
        "8M",
    );
    let aes_opts = format!("driver=qcow2,file.filename={aes},encrypt.key-secret=s0");
    let (q, v) = both_args(&["--object", SECRET, "--image-opts", &aes_opts]);
    assert_eq!(v, q, "AES image");
    vmcrypt(&["check", &aes]).code_is(0);
    // Backing chain: the overlay's own clusters only.
    let base = create(&sc, "base.qcow2", "", "32M");
    qemu_io(&base, false, &io_script(8, 32 << 20));
    let top = sc.p("top.qcow2");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ])
    .ok();
    qemu_io(&top, false, &io_script(9, 32 << 20));
    assert_same_check(&top);
    // Compressed clusters, then an internal snapshot and writes over shared clusters.
    let raw = sc.p("src.raw");
    std::fs::write(&raw, plaintext(4 << 20, "qcheck")).unwrap();
    let comp = sc.p("comp.qcow2");
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", &raw, &comp]).ok();
    assert_same_check(&comp);
    qemu_img(&["snapshot", "-c", "s1", &comp]).ok();
    qemu_io(&comp, false, &io_script(10, 4 << 20)[..20]);
    qemu_img(&["snapshot", "-c", "s2", &comp]).ok();
    qemu_io(&comp, false, &io_script(11, 4 << 20)[..20]);
    let j = assert_same_check(&comp);
    assert!(j["compressed-clusters"].as_u64().unwrap_or(0) > 0, "{j}");
    // A persistent dirty bitmap with some bits set.
    let bm = create(&sc, "bm.qcow2", "", "32M");
    qemu_img(&["bitmap", "--add", &bm, "b0"]).ok();
    qemu_img(&["bitmap", "--add", &bm, "b1", "-g", "4096"]).ok();
    qemu_io(&bm, false, &io_script(12, 32 << 20)[..10]);
    assert_same_check(&bm);
}

/// Offsets of a qcow2 image's metadata, read from its header.
struct Layout {
    cluster_bits: u32,
    refcount_order: u32,
    l1: u64,
    refblock0: u64,
}

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

fn layout(b: &[u8]) -> Layout {
    let rt = be64(b, 48);
    Layout {
        cluster_bits: u32::from_be_bytes(b[20..24].try_into().unwrap()),
        refcount_order: u32::from_be_bytes(b[96..100].try_into().unwrap()),
        l1: be64(b, 40),
        refblock0: be64(b, rt) & !0x1ff,
    }
}

/// Set the 16-bit refcount of `cluster` (refcount block 0, refcount_bits=16).
fn set_rc16(b: &mut [u8], l: &Layout, cluster: u64, v: u16) {
    assert_eq!(l.refcount_order, 4);
    let at = (l.refblock0 + cluster * 2) as usize;
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn rc16(b: &[u8], l: &Layout, cluster: u64) -> u16 {
    let at = (l.refblock0 + cluster * 2) as usize;
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}

/// A written image to damage.
fn victim(sc: &Scratch) -> Vec<u8> {
    let img = create(sc, "v.qcow2", "", "64M");
    qemu_io(&img, false, &io_script(3, 64 << 20));
    sc.read("v.qcow2")
}

/// Write `bytes` as `name`, check it with both tools; the counts and exit codes agree.
#[track_caller]
fn same_counts(sc: &Scratch, name: &str, bytes: &[u8]) -> Value {
    let img = sc.write(name, bytes);
    let ((qc, q), (vc, v)) = both(&img);
    assert_eq!(vc, qc, "{name}: exit codes (vmcrypt, qemu-img); {v} vs {q}");
    for k in ["leaks", "corruptions", "check-errors", "image-end-offset"] {
        assert_eq!(v[k], q[k], "{name}: {k}; vmcrypt {v} vs qemu-img {q}");
    }
    // The per-problem messages (stderr) are worded and ordered like qemu-img's.
    let qe = qemu_img(&["check", &img]).stderr.replace("qemu-img: ", "");
    let ve = vmcrypt(&["check", &img]).stderr.replace("vmcrypt: ", "");
    assert_eq!(ve, qe, "{name}: stderr");
    q
}

#[test]
fn damaged_images_count_like_qemu_img() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let good = victim(&sc);
    let l = layout(&good);
    let l2 = be64(&good, l.l1) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0, "the script writes guest cluster 0's L2 range");
    let l2_cluster = l2 >> l.cluster_bits;

    // Leak: one too many on the L1 table's cluster and on the header.
    let mut b = good.clone();
    let l1c = l.l1 >> l.cluster_bits;
    let rc = rc16(&b, &l, l1c);
    set_rc16(&mut b, &l, l1c, rc + 1);
    set_rc16(&mut b, &l, 0, 3);
    let q = same_counts(&sc, "leak.qcow2", &b);
    assert_eq!(q["leaks"], 2, "{q}");

    // Corruption: a used L2 table's refcount zeroed.
    let mut b = good.clone();
    set_rc16(&mut b, &l, l2_cluster, 0);
    let q = same_counts(&sc, "l2zero.qcow2", &b);
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");

    // Corruption: an L2 entry pointing far beyond the end of the file.
    let mut b = good.clone();
    let first = (0..1u64 << (l.cluster_bits - 3))
        .find(|i| be64(&b, l2 + i * 8) & 0x00ff_ffff_ffff_fe00 != 0)
        .expect("a mapped cluster");
    let at = (l2 + first * 8) as usize;
    b[at..at + 8].copy_from_slice(&((1u64 << 63) | (1 << 40)).to_be_bytes());
    let q = same_counts(&sc, "beyond.qcow2", &b);
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");

    // Corruption: a misaligned data cluster offset.
    let mut b = good.clone();
    let e = be64(&b, l2 + first * 8);
    b[at..at + 8].copy_from_slice(&(e + 4096).to_be_bytes());
    let q = same_counts(&sc, "misaligned.qcow2", &b);
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");

    // Corruption: OFLAG_COPIED cleared on an L1 entry.
    let mut b = good.clone();
    let e = be64(&b, l.l1) & !(1 << 63);
    b[l.l1 as usize..l.l1 as usize + 8].copy_from_slice(&e.to_be_bytes());
    let q = same_counts(&sc, "oflag.qcow2", &b);
    assert_eq!(q["corruptions"], 1, "{q}");
}

#[test]
fn repair_leaks_leaves_an_image_qemu_img_finds_clean() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let good = victim(&sc);
    let l = layout(&good);
    let mut b = good.clone();
    set_rc16(&mut b, &l, 0, 5);
    let l1c = l.l1 >> l.cluster_bits;
    set_rc16(&mut b, &l, l1c, 2);
    let img = sc.write("leaky.qcow2", &b);
    let theirs = sc.write("leaky-qemu.qcow2", &b);
    let q = qemu_img(&["check", "-r", "leaks", &theirs]).code_is(0);
    let out = vmcrypt(&["check", "-r", "leaks", &img]).code_is(0);
    assert_eq!(out.stdout_str(), q.stdout_str().replace(&theirs, &img));
    assert_eq!(out.stderr, q.stderr, "repair messages");
    assert_eq!(sc.read("leaky.qcow2"), sc.read("leaky-qemu.qcow2"));
    let text = out.stdout_str();
    assert!(
        text.starts_with(
            "The following inconsistencies were found and repaired:\n\n    2 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.\n"
        ),
        "{text}"
    );
    qemu_img(&["check", &img]).code_is(0);
    assert_eq!(
        sc.read("leaky.qcow2"),
        good,
        "repair restores the exact refcounts"
    );

    // OFLAG_COPIED cleared on the first L1 entry and on a data cluster: -r leaks sets
    // them again, exactly like qemu-img.
    let mut b = good.clone();
    let e = be64(&b, l.l1);
    b[l.l1 as usize..l.l1 as usize + 8].copy_from_slice(&(e & !(1 << 63)).to_be_bytes());
    let l2 = e & 0x00ff_ffff_ffff_fe00;
    let i = (0..1u64 << (l.cluster_bits - 3))
        .find(|i| be64(&b, l2 + i * 8) & 0x00ff_ffff_ffff_fe00 != 0)
        .expect("a mapped cluster");
    let at = (l2 + i * 8) as usize;
    let x = be64(&b, l2 + i * 8) & !(1 << 63);
    b[at..at + 8].copy_from_slice(&x.to_be_bytes());
    let img = sc.write("oflag.qcow2", &b);
    let theirs = sc.write("oflag-qemu.qcow2", &b);
    let q = qemu_img(&["check", "-r", "leaks", &theirs]).code_is(0);
    let out = vmcrypt(&["check", "-r", "leaks", &img]).code_is(0);
    assert_eq!(out.stdout_str(), q.stdout_str().replace(&theirs, &img));
    assert_eq!(out.stderr, q.stderr, "OFLAG_COPIED repair messages");
    assert_eq!(sc.read("oflag.qcow2"), good);
    // The same repair with JSON output: qemu-img's object, with leaks-fixed and
    // corruptions-fixed.
    let mut b2 = b.clone();
    set_rc16(&mut b2, &l, 0, 2);
    let img = sc.write("json.qcow2", &b2);
    let theirs = sc.write("json-qemu.qcow2", &b2);
    let q = qemu_img(&["check", "-r", "leaks", "--output=json", &theirs]).code_is(0);
    let v = vmcrypt(&["check", "-r", "leaks", "--output=json", &img]).code_is(0);
    let qj = q.json();
    // Same text, so the same key order too.
    assert_eq!(v.stdout_str(), q.stdout_str().replace(&theirs, &img));
    assert_eq!(qj["leaks-fixed"], 1, "{qj}");
    assert_eq!(qj["corruptions-fixed"], 2, "{qj}");

    // A used cluster with refcount 0 needs a rebuild: -r leaks refuses and writes nothing.
    let mut b = good.clone();
    set_rc16(&mut b, &l, l1c, 0);
    let img = sc.write("zero.qcow2", &b);
    vmcrypt(&["check", "-r", "leaks", &img])
        .failed()
        .stderr_has("rebuild");
    assert_eq!(sc.read("zero.qcow2"), b);
    // -r all sets it back in the existing refcount block.
    vmcrypt(&["check", "-r", "all", &img]).code_is(0);
    qemu_img(&["check", &img]).code_is(0);
}

#[test]
fn refcount_widths_leak_and_repair() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    for (bits, name) in [(1u32, "w1.qcow2"), (64, "w64.qcow2")] {
        let img = create(&sc, name, &format!("refcount_bits={bits}"), "16M");
        qemu_io(&img, false, &io_script(u64::from(bits), 16 << 20)[..20]);
        let mut b = sc.read(name);
        let l = layout(&b);
        assert_eq!(1u32 << l.refcount_order, bits);
        // Give an unused cluster past the image end (but inside the file) a refcount.
        let cs = 1usize << l.cluster_bits;
        let last = b.len() / cs;
        b.resize((last + 1) * cs, 0);
        let rb = l.refblock0 as usize;
        if bits == 1 {
            b[rb + last / 8] |= 1 << (last % 8);
        } else {
            b[rb + last * 8 + 7] = 1;
        }
        let leaky = sc.write(name, &b);
        let q = same_counts(&sc, name, &b);
        assert_eq!(q["leaks"], 1, "{name}: {q}");
        vmcrypt(&["check", "-r", "leaks", &leaky]).code_is(0);
        qemu_img(&["check", &leaky]).code_is(0);
    }
}

/// Random byte flips in the header, L1, refcount table and block, snapshot table and an
/// L2 table of a snapshotted image: every damaged image is counted like qemu-img does
/// (same exit code, counters and messages). Images qemu-img cannot open at all are
/// skipped (their header parsing is not the checker's).
#[test]
fn random_metadata_damage_counts_like_qemu_img() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let img = create(&sc, "f.qcow2", "cluster_size=4096", "16M");
    let w = |c: &str| qemu_io(&img, false, &[c.to_string()]);
    w("write -P 1 0 1M");
    w("write -P 2 5M 300k");
    w("discard 100k 64k");
    w("write -z 200k 8k");
    qemu_img(&["snapshot", "-c", "s1", &img]).ok();
    w("write -P 3 0 200k");
    let good = sc.read("f.qcow2");
    let rt = be64(&good, 48);
    let meta = [
        0,
        be64(&good, 40),
        rt,
        be64(&good, rt) & !0x1ff,
        be64(&good, 64),
        be64(&good, be64(&good, 40)) & 0x00ff_ffff_ffff_fe00,
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let (mut compared, mut damaged) = (0, 0);
    for round in 0..80 {
        let mut b = good.clone();
        for _ in 0..1 + next(3) {
            let base = meta[next(meta.len() as u64) as usize];
            let off = if base == 0 {
                [8, 16, 36, 40, 48, 56, 60, 64, 72, 96][next(10) as usize] + next(8)
            } else {
                base + next(4096)
            };
            b[off as usize] = next(256) as u8;
        }
        let name = format!("f{round}.qcow2");
        let path = sc.write(&name, &b);
        let q = qemu_img(&["check", &path]);
        if q.code == Some(1) && q.stderr.contains("Could not open") {
            continue;
        }
        let v = vmcrypt(&["check", &path]);
        assert_eq!(
            v.code, q.code,
            "{name}: exit code; qemu-img said {}",
            q.stderr
        );
        assert_eq!(v.stdout_str(), q.stdout_str(), "{name}: summary");
        if q.code != Some(1) {
            // (A failed check's reason is worded differently.)
            assert_eq!(v.stderr, q.stderr, "{name}: messages");
        }
        compared += 1;
        damaged += usize::from(q.code != Some(0));
    }
    assert!(
        compared >= 60 && damaged >= 30,
        "{compared} compared, {damaged} damaged"
    );
}

/// An image left dirty (lazy refcounts, never closed cleanly: a refcount too high and
/// one too low) is repaired when vmcrypt opens it for writing, as QEMU does: the write
/// lands, the dirty bit is cleared and `qemu-img check` is clean.
#[test]
fn a_dirty_image_is_repaired_before_writing() {
    require_tool("qemu-io");
    let sc = Scratch::new();
    let img = create(&sc, "d.qcow2", "lazy_refcounts=on", "64M");
    qemu_io(&img, false, &io_script(5, 64 << 20));
    let mut b = sc.read("d.qcow2");
    let l = layout(&b);
    let cs = 1u64 << l.cluster_bits;
    // A leaked cluster, a used L1 cluster counted as free, and the dirty bit.
    let end = (b.len() as u64).div_ceil(cs);
    set_rc16(&mut b, &l, end + 3, 1);
    set_rc16(&mut b, &l, l.l1 / cs, 0);
    b[79] |= 1;
    let img = sc.write("d.qcow2", &b);
    let data = sc.write("one.raw", &[0x6b; 65536]);
    vmcrypt_write_raw(&data, &format!("driver=qcow2,file.filename={img}")).ok();
    let after = sc.read("d.qcow2");
    assert_eq!(after[79] & 1, 0, "dirty bit still set");
    qemu_img(&["check", &img])
        .ok()
        .stdout_has("No errors were found on the image.");
    let out = sc.p("out.raw");
    qemu_img(&["convert", "-O", "raw", "-f", "qcow2", &img, &out]).ok();
    assert_eq!(&sc.read("out.raw")[..65536], &[0x6b; 65536][..]);
}
