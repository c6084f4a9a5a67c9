//! `-U` (`--force-share`) against a real writer: qemu-storage-daemon holds an image for
//! writing (QEMU's OFD locks), and every read-only vmcrypt command (convert, map,
//! compare, info, check) opens it with `-U` and reads the right bytes, and is refused
//! with the lock error without `-U`. The lock must be skipped on every node of the
//! graph: the encrypted qcow2's own file, a backing file another process writes, and a
//! detached LUKS header. `-U` for a command that writes is refused, as QEMU refuses
//! force-share on a writable image.
mod common;
mod glue_support;

use common::*;
use glue_support::{Qsd, start_qsd};

const MIB: usize = 1 << 20;
const SIZE: usize = 4 * MIB;

/// An encrypted qcow2 (`e.qcow2`, LUKS keyed by `s0`) over a raw base, with 64 KiB
/// written into the overlay by qemu-io. Returns the `--object` argument and the
/// expected plaintext.
fn encrypted_overlay(sc: &Scratch) -> (String, Vec<u8>) {
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    let mut want = plaintext(SIZE, "force-share base");
    let base = sc.write("base.raw", &want);
    qemu_qcow2_luks_over_raw(&secret, &base, "", &sc.p("e.qcow2"), &SIZE.to_string());
    #[rustfmt::skip]
    tool("qemu-io", &[
        "--object", &secret, "--image-opts", &overlay_opts(sc), "-c", "write -P 0x5a 1M 64k",
    ]).ok();
    want[MIB..MIB + 65536].fill(0x5a);
    (secret, want)
}

fn overlay_opts(sc: &Scratch) -> String {
    format!(
        "driver=qcow2,file.driver=file,file.filename={},encrypt.key-secret=s0",
        sc.p("e.qcow2")
    )
}

/// qemu-storage-daemon holding `blockdev` writable as an NBD export.
fn hold_for_writing(sc: &Scratch, secret: &str, blockdev: &str) -> Qsd {
    let args = [
        "--object",
        secret,
        "--blockdev",
        &format!("{blockdev},node-name=held"),
        "--export",
        "type=nbd,id=e0,node-name=held,writable=on",
    ];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    start_qsd(sc, &args, "held").0
}

/// `vmcrypt CMD [-U] --object SECRET --image-opts OPTS TAIL...`.
fn run(cmd: &str, shared: bool, secret: &str, opts: &str, tail: &[&str]) -> Out {
    let mut a = vec![cmd];
    if shared {
        a.push("-U");
    }
    a.extend(["--object", secret, "--image-opts", opts]);
    a.extend_from_slice(tail);
    vmcrypt(&a)
}

/// convert, map, compare and info of `opts` (plus `tail_info` for info) succeed with -U
/// and read `want`; without -U each is refused with the lock named (exit 5; compare's
/// own 2 for a failure). `locked` is the file whose lock is in the way.
fn reads_only_with_force_share(
    sc: &Scratch,
    secret: &str,
    opts: &str,
    want: &[u8],
    locked: &str,
    info_tail: &[&str],
) {
    let out = sc.p("out.raw");
    let lock = "\"write\" lock";
    run("convert", false, secret, opts, &["-O", "raw", &out])
        .code_is(5)
        .stderr_has(lock)
        .stderr_has(locked);
    run("convert", true, secret, opts, &["-O", "raw", &out]).ok();
    assert_same_bytes("convert -U", &sc.read("out.raw"), want);

    run("map", false, secret, opts, &["--output=json"])
        .code_is(5)
        .stderr_has(lock);
    let map = run("map", true, secret, opts, &["--output=json"]).ok();
    let extents = map.json();
    let covered: u64 = extents
        .as_array()
        .expect("map --output=json is an array")
        .iter()
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, SIZE as u64, "{}", map.stdout_str());

    let want_file = sc.write("want.raw", want);
    let cmp = |shared| {
        let mut a = vec!["compare"];
        if shared {
            a.push("-U");
        }
        let first = format!("json:{{\"driver\":\"raw\",\"file\":\"{want_file}\"}}");
        let second = format!("json:{}", keyval_to_json(opts));
        a.extend(["--object", secret, &first, &second]);
        vmcrypt(&a)
    };
    cmp(false).code_is(2).stderr_has(lock);
    cmp(true).ok().stdout_has("Images are identical.");

    run("info", false, secret, opts, info_tail)
        .code_is(5)
        .stderr_has(lock);
    run("info", true, secret, opts, info_tail)
        .ok()
        .stdout_has("file format: ");
}

/// `driver=qcow2,file.filename=F,encrypt.key-secret=s0` (dotted, no commas in values)
/// as the JSON object QEMU's `json:` filenames take.
fn keyval_to_json(opts: &str) -> String {
    let mut root = serde_json::Map::new();
    for kv in opts.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        let mut node = &mut root;
        let mut parts: Vec<&str> = k.split('.').collect();
        let last = parts.pop().unwrap();
        for p in parts {
            node = node
                .entry(p)
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .unwrap();
        }
        node.insert(last.into(), v.into());
    }
    serde_json::Value::Object(root).to_string()
}

#[test]
fn an_encrypted_qcow2_qemu_writes_is_read_with_force_share() {
    let sc = Scratch::new();
    let (secret, want) = encrypted_overlay(&sc);
    let opts = overlay_opts(&sc);
    let held = hold_for_writing(&sc, &secret, &format!("{opts},encrypt.format=luks"));
    reads_only_with_force_share(&sc, &secret, &opts, &want, "e.qcow2", &[]);
    // qemu-img agrees: -U reads the same bytes, no -U is refused.
    let q = sc.p("q.raw");
    #[rustfmt::skip]
    let q_args = |u: bool| {
        let mut a = vec!["convert", "--object", &secret, "--image-opts", &opts, "-O", "raw", &q];
        if u { a.insert(1, "-U"); }
        qemu_img(&a)
    };
    q_args(false).failed().stderr_has("lock");
    q_args(true).ok();
    assert_same_bytes("qemu-img convert -U", &sc.read("q.raw"), &want);

    // check: qemu-img's codes, 1 when the image cannot be checked.
    let img = sc.p("e.qcow2");
    vmcrypt(&["check", &img]).code_is(1).stderr_has("lock");
    vmcrypt(&["check", "-U", &img])
        .ok()
        .stdout_has("No errors were found on the image.");
    // -U is for reading: a command that writes is refused before anything is opened.
    vmcrypt(&["check", "-U", "-r", "leaks", &img])
        .code_is(1)
        .stderr_has("read-only images");
    run("resize", true, &secret, &opts, &["+1M"])
        .code_is(1)
        .stderr_has("read-only images");
    drop(held);
    assert_eq!(
        qemu_img(&["info", "--output=json", &img]).json()["virtual-size"],
        SIZE as u64,
        "the refused resize changed the image"
    );
}

#[test]
fn force_share_reaches_a_backing_file_another_process_writes() {
    let sc = Scratch::new();
    let (secret, want) = encrypted_overlay(&sc);
    let base = sc.p("base.raw");
    let _held = hold_for_writing(
        &sc,
        &secret,
        &format!("driver=raw,file.driver=file,file.filename={base}"),
    );
    let opts = overlay_opts(&sc);
    reads_only_with_force_share(&sc, &secret, &opts, &want, "base.raw", &["--backing-chain"]);
}

#[test]
fn force_share_reaches_a_detached_header() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    vmcrypt_detached_header(&sc, "pw", "hdr.img");
    let payload = sc.p("pay.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &payload, &SIZE.to_string()]).ok();
    let hdr = sc.p("hdr.img");
    let opts = format!(
        "driver=luks,key-secret=s0,header.driver=file,header.filename={hdr},\
         file.driver=qcow2,file.file.driver=file,file.file.filename={payload}"
    );
    let want = plaintext(SIZE, "force-share detached");
    sc.write("data.raw", &want);
    write_into_node(vmcrypt, &sc, "pw", "data.raw", &opts);
    // The daemon holds the payload and the header for writing: -U must reach both.
    let _held = hold_for_writing(&sc, &secret, &opts);
    reads_only_with_force_share(&sc, &secret, &opts, &want, "pay.qcow2", &[]);
}
