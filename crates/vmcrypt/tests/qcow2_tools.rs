//! `vmcrypt map`, `vmcrypt compare` and `vmcrypt luks` on qcow2, checked against the real
//! qemu-img / qemu-io 10: images are made and written by QEMU (scattered writes, zero
//! writes, discards, backing chains, compression, LUKS encryption), and our map must
//! equal `qemu-img map` (parsed JSON, and the human table), our compare must agree with
//! `qemu-img compare` (exit code and message), and key slots changed by `vmcrypt luks`
//! on a qcow2 image must be honoured by qemu-io.
mod common;
use common::*;

/// qemu-io commands writing data at scattered offsets, zeroing and discarding.
const WRITES: &[&str] = &[
    "write -P 0x11 65536 65536",
    "write -P 0x22 1000448 8192",
    "write -P 0x33 3145728 131072",
    "write -z 3145728 65536",
    "write -z 2097152 65536",
    "write -P 0x44 4128768 65536",
    "discard 4128768 65536",
    "write -P 0x55 5242880 4096",
];

/// Run qemu-io's `cmds` on an image opened with `open` (options before the image).
fn io(open: &[&str], cmds: &[&str]) {
    let mut args: Vec<&str> = open.to_vec();
    for c in cmds {
        args.extend(["-c", c]);
    }
    qemu_io(&args).ok();
}

/// `map --output=json` of both tools with the same arguments, as parsed JSON; the map
/// must have at least `min_entries` entries.
#[track_caller]
fn same_json_map(min_entries: usize, args: &[&str]) {
    let mut a = vec!["map", "--output=json"];
    a.extend_from_slice(args);
    let ours = vmcrypt(&a).ok();
    let theirs = qemu_img(&a).ok();
    assert_eq!(
        ours.json(),
        theirs.json(),
        "map differs\nours:\n{}\nqemu-img:\n{}",
        ours.describe(),
        theirs.describe()
    );
    assert!(
        theirs
            .json()
            .as_array()
            .is_some_and(|v| v.len() >= min_entries)
    );
}

/// The human map of both tools: same exit code and same stdout.
#[track_caller]
fn same_human_map(args: &[&str]) -> i32 {
    let mut a = vec!["map"];
    a.extend_from_slice(args);
    let ours = vmcrypt(&a);
    let theirs = qemu_img(&a);
    assert_eq!(
        ours.code,
        theirs.code,
        "{}\n{}",
        ours.describe(),
        theirs.describe()
    );
    assert_eq!(
        ours.stdout_str(),
        theirs.stdout_str(),
        "{}\n{}",
        ours.describe(),
        theirs.describe()
    );
    theirs.code.unwrap_or(-1)
}

#[test]
fn map_matches_qemu_img() {
    let sc = Scratch::new();
    sc.write("k", b"map-pass");
    let obj = sc.secret("s0", "k");
    let (raw, q, qe, l, c, base, top) = (
        sc.p("a.raw"),
        sc.p("a.qcow2"),
        sc.p("e.qcow2"),
        sc.p("a.luks"),
        sc.p("c.qcow2"),
        sc.p("base.qcow2"),
        sc.p("top.qcow2"),
    );
    qemu_img(&["create", "-q", "-f", "raw", &raw, "6M"]).ok();
    io(&["-f", "raw", &raw], WRITES);
    qemu_img(&["create", "-q", "-f", "qcow2", &q, "6M"]).ok();
    io(&["-f", "qcow2", &q], WRITES);
    let enc = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "--object", &obj, "-o", enc, &qe, "6M",
    ])
    .ok();
    let qe_opts = format!("driver=qcow2,file.filename={qe},encrypt.key-secret=s0");
    io(&["--object", &obj, "--image-opts", &qe_opts], WRITES);
    let lo = "key-secret=s0,iter-time=10";
    qemu_img(&[
        "create", "-q", "-f", "luks", "--object", &obj, "-o", lo, &l, "6M",
    ])
    .ok();
    let l_opts = format!("driver=luks,file.filename={l},key-secret=s0");
    io(&["--object", &obj, "--image-opts", &l_opts], WRITES);
    qemu_img(&["convert", "-c", "-f", "qcow2", "-O", "qcow2", &q, &c]).ok();
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "4M"]).ok();
    io(&["-f", "qcow2", &base], &WRITES[..4]);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top, "6M",
    ])
    .ok();
    io(
        &["-f", "qcow2", &top],
        &[
            "write -P 0x66 131072 65536",
            "write -z 1000448 4096",
            "discard 65536 65536",
            "write -P 0x77 5242880 65536",
        ],
    );

    same_json_map(5, &["-f", "raw", &raw]);
    same_json_map(5, &["-f", "qcow2", &q]);
    same_json_map(5, &["--object", &obj, "--image-opts", &qe_opts]);
    same_json_map(1, &["--object", &obj, "--image-opts", &l_opts]);
    same_json_map(5, &["-f", "qcow2", &c]);
    same_json_map(5, &["-f", "qcow2", &top]);
    same_json_map(
        5,
        &["--start-offset", "1000000", "--max-length", "3000000", &top],
    );

    assert_eq!(same_human_map(&["-f", "raw", &raw]), 0);
    assert_eq!(same_human_map(&["-f", "qcow2", &q]), 0);
    assert_eq!(same_human_map(&["-f", "qcow2", &top]), 0);
    // Encrypted and compressed data have no place in a file: both refuse the table.
    assert_eq!(same_human_map(&["-f", "qcow2", &c]), 1);
    assert_eq!(
        same_human_map(&["--object", &obj, "--image-opts", &l_opts]),
        1
    );
    assert_eq!(
        same_human_map(&["--object", &obj, "--image-opts", &qe_opts]),
        1
    );
}

/// Both tools' compare: exit code and stdout.
#[track_caller]
fn same_compare(args: &[&str]) -> (i32, String) {
    let mut a = vec!["compare"];
    a.extend_from_slice(args);
    let ours = vmcrypt(&a);
    let theirs = qemu_img(&a);
    assert_eq!(
        ours.code,
        theirs.code,
        "{}\n{}",
        ours.describe(),
        theirs.describe()
    );
    assert_eq!(
        ours.stdout_str(),
        theirs.stdout_str(),
        "{}\n{}",
        ours.describe(),
        theirs.describe()
    );
    (theirs.code.unwrap_or(-1), theirs.stdout_str())
}

#[test]
fn compare_matches_qemu_img() {
    let sc = Scratch::new();
    sc.write("k", b"cmp-pass");
    let obj = sc.secret("s0", "k");
    let (src, raw, enc, other, big) = (
        sc.p("src.qcow2"),
        sc.p("a.raw"),
        sc.p("e.qcow2"),
        sc.p("b.raw"),
        sc.p("big.raw"),
    );
    qemu_img(&["create", "-q", "-f", "qcow2", &src, "6M"]).ok();
    io(&["-f", "qcow2", &src], WRITES);
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &src, &raw]).ok();
    let eo = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    qemu_img(&[
        "convert", "--object", &obj, "-f", "qcow2", "-O", "qcow2", "-o", eo, &src, &enc,
    ])
    .ok();
    let raw_opts = format!("driver=raw,file.filename={raw}");
    let enc_opts = format!("driver=qcow2,file.filename={enc},encrypt.key-secret=s0");
    let (code, out) = same_compare(&["--object", &obj, "--image-opts", &raw_opts, &enc_opts]);
    assert_eq!((code, out.as_str()), (0, "Images are identical.\n"));
    assert_eq!(same_compare(&["-f", "raw", "-F", "qcow2", &raw, &src]).0, 0);

    // One byte changed inside the data, one in a hole: the first is reported.
    std::fs::copy(&raw, &other).unwrap();
    io(
        &["-f", "raw", &other],
        &["write -P 0x99 3200007 1", "write -P 0x98 4500001 1"],
    );
    let (code, out) = same_compare(&["-f", "raw", "-F", "raw", &other, &raw]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!("Content mismatch at offset {}!\n", 3200007 / 512 * 512)
    );
    let (code, _) = same_compare(&["--object", &obj, "--image-opts", &enc_opts, &raw_opts]);
    assert_eq!(code, 0);
    let other_opts = format!("driver=raw,file.filename={other}");
    let (code, out) = same_compare(&["--object", &obj, "--image-opts", &enc_opts, &other_opts]);
    assert_eq!(code, 1, "{out}");

    // Bigger by a zero tail: identical with a warning; strict mode refuses it.
    std::fs::copy(&raw, &big).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let (code, out) = same_compare(&["-f", "raw", "-F", "qcow2", &big, &src]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Warning: Image size mismatch!"), "{out}");
    let (code, out) = same_compare(&["-s", "-f", "raw", "-F", "qcow2", &big, &src]);
    assert_eq!(
        (code, out.as_str()),
        (1, "Strict mode: Image size mismatch!\n")
    );
    // A non-zero byte in the tail is a mismatch.
    io(&["-f", "raw", &big], &["write -P 1 7340033 1"]);
    let (code, out) = same_compare(&["-f", "qcow2", "-F", "raw", &src, &big]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("offset {}!", 7340033 / 512 * 512)),
        "{out}"
    );
    // Strict mode also compares the allocation: compressed clusters differ from plain
    // ones, an image equals itself.
    let comp = sc.p("c.qcow2");
    qemu_img(&["convert", "-c", "-f", "qcow2", "-O", "qcow2", &src, &comp]).ok();
    assert_eq!(
        same_compare(&["-f", "qcow2", "-F", "qcow2", &src, &comp]).0,
        0
    );
    let (code, out) = same_compare(&["-s", "-f", "qcow2", "-F", "qcow2", &src, &comp]);
    assert_eq!(code, 1);
    assert!(out.contains("block status mismatch"), "{out}");
    assert_eq!(
        same_compare(&["-s", "-f", "qcow2", "-F", "qcow2", &src, &src]).0,
        0
    );
    // A missing image is an error (2) for both.
    assert_eq!(
        same_compare(&["-f", "raw", "-F", "raw", &raw, &sc.p("nope")]).0,
        2
    );
}

/// `qemu-img check` on the encrypted qcow2 with the secret `id`: must be clean.
#[track_caller]
fn check_clean(obj: &str, opts: &str) {
    qemu_img(&["check", "--object", obj, "--image-opts", opts])
        .ok()
        .stdout_has("No errors were found on the image.");
}

/// The bytes qemu-io reads at 5 MiB must be the pattern written there.
#[track_caller]
fn qemu_reads(obj: &str, opts: &str) -> Out {
    qemu_io(&[
        "--object",
        obj,
        "--image-opts",
        opts,
        "-c",
        "read -P 0x55 5242880 4096",
    ])
}

#[test]
fn luks_key_slots_inside_qcow2() {
    let sc = Scratch::new();
    let (old, new, newer) = (
        sc.write("old", b"old-pass"),
        sc.write("new", b"new-pass"),
        sc.write("newer", b"newer-pass"),
    );
    let img = sc.p("e.qcow2");
    let o_old = sc.secret("s0", "old");
    let o_new = sc.secret("s1", "new");
    let o_newer = sc.secret("s2", "newer");
    let eo = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "--object", &o_old, "-o", eo, &img, "6M",
    ])
    .ok();
    let opts = |id: &str| format!("driver=qcow2,file.filename={img},encrypt.key-secret={id}");
    io(&["--object", &o_old, "--image-opts", &opts("s0")], WRITES);
    check_clean(&o_old, &opts("s0"));

    let dump = vmcrypt(&["luks", "dump", &img]).ok().stdout_str();
    assert!(dump.contains("Version:       \t1"), "{dump}");
    assert!(dump.contains("Key Slot 0: ENABLED") && dump.contains("Key Slot 1: DISABLED"));
    let uuid = vmcrypt(&["luks", "uuid", &img]).ok().stdout_str();
    assert!(dump.contains(uuid.trim()), "{uuid}");

    let fast = ["--pbkdf-force-iterations", "1000"];
    let mut add = vec!["luks", "add-key", &img, &new, "-d", &old];
    add.extend(fast);
    vmcrypt(&add).ok().stderr_has("Key slot 1 created");
    check_clean(&o_new, &opts("s1"));
    qemu_reads(&o_new, &opts("s1")).ok();
    qemu_reads(&o_old, &opts("s0")).ok();
    vmcrypt(&["luks", "test-key", &img, "-d", &new]).ok();

    vmcrypt(&["luks", "kill-slot", &img, "0", "-d", &new]).ok();
    qemu_reads(&o_old, &opts("s0")).failed();
    vmcrypt(&["luks", "test-key", &img, "-d", &old]).failed();
    check_clean(&o_new, &opts("s1"));
    qemu_reads(&o_new, &opts("s1")).ok();

    let mut change = vec!["luks", "change-key", &img, &newer, "-d", &new];
    change.extend(fast);
    vmcrypt(&change).ok();
    qemu_reads(&o_new, &opts("s1")).failed();
    qemu_reads(&o_newer, &opts("s2")).ok();
    check_clean(&o_newer, &opts("s2"));
    // Every byte still decrypts as QEMU wrote it.
    let mut cmds: Vec<String> = vec!["read -P 0x11 65536 65536".into()];
    cmds.push("read -P 0x33 3211264 65536".into());
    cmds.push("read -P 0 2097152 65536".into());
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    io(&["--object", &o_newer, "--image-opts", &opts("s2")], &cmds);

    // remove-key of the only slot needs batch mode; a backup holds the header region.
    vmcrypt(&["luks", "remove-key", &img, &newer])
        .failed()
        .stderr_has("last key slot");
    let backup = sc.p("hdr.bin");
    vmcrypt(&[
        "luks",
        "header-backup",
        &img,
        "--header-backup-file",
        &backup,
    ])
    .ok();
    assert!(std::fs::read(&backup).unwrap().starts_with(b"LUKS\xba\xbe"));
    check_clean(&o_newer, &opts("s2"));

    // LUKS2-only operations and legacy AES are refused clearly.
    vmcrypt(&["luks", "convert", &img, "--type", "luks2"])
        .failed()
        .stderr_has("LUKS1");
    let aes = sc.p("aes.qcow2");
    let ao = "encrypt.format=aes,encrypt.key-secret=s0";
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "--object", &o_old, "-o", ao, &aes, "1M",
    ])
    .ok();
    vmcrypt(&["luks", "dump", &aes])
        .failed()
        .stderr_has("encrypt.format=luks");
}

/// A 1 TiB qcow2 + LUKS chain (two keys) holding 16 MiB spread over the whole disk:
/// map and compare agree with qemu-img, and convert to a third key reads back the same
/// (qemu-img compare). Walking it a cluster at a time would take minutes (16 million
/// lookups per layer); the walk skips spans that have no L2 table.
#[test]
fn sparse_tib_chain_map_compare_convert() {
    let sc = Scratch::new();
    for (k, v) in [("k0", "base-key"), ("k1", "top-key"), ("k2", "copy-key")] {
        sc.write(k, v.as_bytes());
    }
    let objs = [
        sc.secret("s0", "k0"),
        sc.secret("s1", "k1"),
        sc.secret("s2", "k2"),
    ];
    // `cmd` (empty for qemu-io), the three secrets, then `rest`.
    let args = |cmd: &[&str], rest: &[&str]| -> Vec<String> {
        let o = objs.iter().flat_map(|o| ["--object", o.as_str()]);
        cmd.iter()
            .copied()
            .chain(o)
            .chain(rest.iter().copied())
            .map(String::from)
            .collect()
    };
    let (base, top, out) = (sc.p("base.qcow2"), sc.p("top.qcow2"), sc.p("out.qcow2"));
    let luks = |s: &str| format!("encrypt.format=luks,encrypt.key-secret={s},encrypt.iter-time=10");
    let create = ["create", "-q", "-f", "qcow2"];
    qemu_img(&strs(&args(&create, &["-o", &luks("s0"), &base, "1T"]))).ok();
    qemu_img(&strs(&args(
        &create,
        &["-o", &luks("s1"), "-b", &base, "-F", "qcow2", &top],
    )))
    .ok();
    let chain = format!(
        "driver=qcow2,file.filename={top},encrypt.key-secret=s1,backing.driver=qcow2,\
         backing.file.filename={base},backing.encrypt.key-secret=s0"
    );
    let base_only = format!("driver=qcow2,file.filename={base},encrypt.key-secret=s0");
    let stride = 1u64 << 36; // 64 GiB
    let writes = |first: u64| -> Vec<String> {
        (first..16)
            .step_by(2)
            .map(|i| format!("write -P {} {} 1M", i + 1, i * stride + (i << 20)))
            .collect()
    };
    io(
        &strs(&args(&[], &["--image-opts", &base_only])),
        &strs(&writes(0)),
    );
    io(
        &strs(&args(&[], &["--image-opts", &chain])),
        &strs(&writes(1)),
    );

    same_json_map(16, &strs(&args(&[], &["--image-opts", &chain])));
    let convert = [
        "--image-opts",
        &chain,
        "-O",
        "qcow2",
        "-o",
        &luks("s2"),
        &out,
    ];
    vmcrypt(&strs(&args(&["convert"], &convert))).ok();
    let copy = format!("driver=qcow2,file.filename={out},encrypt.key-secret=s2");
    let compare = args(&[], &["--image-opts", &chain, &copy]);
    let (code, msg) = same_compare(&strs(&compare));
    assert_eq!((code, msg.trim()), (0, "Images are identical."));
    io(
        &strs(&args(&[], &["--image-opts", &copy])),
        &["write -P 99 68719476736 512"],
    );
    let (code, msg) = same_compare(&strs(&compare));
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("68719476736"), "{msg}");
}
