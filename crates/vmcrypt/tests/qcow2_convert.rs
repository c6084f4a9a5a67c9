//! `vmcrypt convert` between raw, luks, luks2 and qcow2 (plain and LUKS) in every
//! direction, from a sparse source (data, a hole, zeros): each result holds the source's
//! bytes (`qemu-img compare` with the keys, or our own reading for LUKS2, which QEMU
//! cannot open), qcow2 targets pass `qemu-img check` and stay sparse (`qemu-img map`
//! shows the hole unallocated), and a two-key chain flattens into one image with a new
//! key (re-keying).
mod common;
use common::*;
use serde_json::Value;

const SIZE: usize = 8 << 20;

/// A target kind: `-O` format, `-o` options and the `--image-opts` to read it.
struct Kind {
    name: &'static str,
    format: &'static str,
    opts: &'static str,
    /// Image options to read it (`{}` is the file name).
    read: &'static str,
    qemu_can_open: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "raw",
        format: "raw",
        opts: "",
        read: "driver=raw,file.filename={}",
        qemu_can_open: true,
    },
    Kind {
        name: "luks",
        format: "luks",
        opts: "key-secret=s1,iter-time=10",
        read: "driver=luks,key-secret=s1,file.filename={}",
        qemu_can_open: true,
    },
    Kind {
        name: "luks2",
        format: "luks2",
        opts: "key-secret=s1,pbkdf=pbkdf2,iterations=1000",
        read: "driver=luks,key-secret=s1,file.filename={}",
        qemu_can_open: false,
    },
    Kind {
        name: "qcow2",
        format: "qcow2",
        opts: "",
        read: "driver=qcow2,file.filename={}",
        qemu_can_open: true,
    },
    Kind {
        name: "qcow2-luks",
        format: "qcow2",
        opts: "encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10",
        read: "driver=qcow2,file.filename={},encrypt.key-secret=s1",
        qemu_can_open: true,
    },
];

/// Source bytes: random data, a 3 MiB hole, a zeroed MiB and more data.
fn source() -> Vec<u8> {
    let mut v = plaintext(SIZE, "convert-matrix");
    v[2 << 20..5 << 20].fill(0);
    v[6 << 20..7 << 20].fill(0);
    v
}

fn objects(sc: &Scratch) -> Vec<String> {
    let k1 = sc.write("k1", PASS);
    let k2 = sc.write("k2", PASS2);
    vec![
        format!("secret,id=s1,file={k1}"),
        format!("secret,id=s2,file={k2}"),
    ]
}

fn with_objects<'a>(objects: &'a [String], head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    let mut a = head.to_vec();
    for o in objects {
        a.extend(["--object", o.as_str()]);
    }
    a.extend_from_slice(tail);
    a
}

/// Write `k`'s image of the source as `file` with vmcrypt convert from a sparse raw.
fn make(objs: &[String], k: &Kind, src: &str, file: &str) {
    let mut tail = vec!["-f", "raw", "-O", k.format];
    if !k.opts.is_empty() {
        tail.extend(["-o", k.opts]);
    }
    tail.extend([src, file]);
    vmcrypt(&with_objects(objs, &["convert", "-q"], &tail)).ok();
}

/// Read an image back with vmcrypt.
fn read_ours(sc: &Scratch, objs: &[String], opts: &str, out: &str) -> Vec<u8> {
    let o = sc.p(out);
    vmcrypt(&with_objects(
        objs,
        &["convert", "-q"],
        &["--image-opts", opts, "-O", "raw", &o],
    ))
    .ok();
    sc.read(out)
}

fn assert_sparse_qcow2(objs: &[String], opts: &str) {
    let map = qemu_img(&with_objects(
        objs,
        &["map", "--output=json"],
        &["--image-opts", opts],
    ))
    .ok()
    .json();
    let hole = map.as_array().unwrap().iter().any(|e: &Value| {
        e["data"] == false
            && e["start"].as_u64().unwrap() <= 2 << 20
            && e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap() >= 5 << 20
    });
    assert!(hole, "the 3 MiB hole was allocated: {map}");
}

#[test]
fn every_direction_keeps_bytes_and_sparseness() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let objs = objects(&sc);
    let src_bytes = source();
    let src = sc.p("src.raw");
    std::fs::write(&src, &src_bytes).unwrap();
    // Punch the hole so the raw source is sparse on disk too.
    qemu_img(&["map", "--output=json", "-f", "raw", &src]).ok();
    for from in KINDS {
        let a = sc.p(&format!("a-{}", from.name));
        make(&objs, from, &src, &a);
        let a_opts = from.read.replace("{}", &a);
        for to in KINDS {
            let b = sc.p(&format!("b-{}-{}", from.name, to.name));
            let mut tail = vec!["--image-opts", a_opts.as_str(), "-O", to.format];
            if !to.opts.is_empty() {
                tail.extend(["-o", to.opts]);
            }
            tail.push(&b);
            vmcrypt(&with_objects(&objs, &["convert", "-q"], &tail)).ok();
            let b_opts = to.read.replace("{}", &b);
            let what = format!("{} -> {}", from.name, to.name);
            let got = read_ours(&sc, &objs, &b_opts, "got.raw");
            assert_same_bytes(&what, &got, &src_bytes);
            if to.qemu_can_open {
                let out = qemu_img(&with_objects(
                    &objs,
                    &["compare"],
                    &[
                        "-f",
                        "raw",
                        "--image-opts",
                        &format!("driver=raw,file.filename={src}"),
                        &b_opts,
                    ],
                ));
                // qemu-img compare refuses mixing -f and --image-opts: compare both as opts.
                let out = if out.code == Some(0) {
                    out
                } else {
                    qemu_img(&with_objects(
                        &objs,
                        &["compare", "--image-opts"],
                        &[&format!("driver=raw,file.filename={src}"), &b_opts],
                    ))
                };
                assert_eq!(out.code, Some(0), "{what}: {}", out.describe());
            }
            if to.format == "qcow2" {
                qemu_img(&with_objects(&objs, &["check"], &["--image-opts", &b_opts]))
                    .ok()
                    .stdout_has("No errors were found on the image.");
                assert_sparse_qcow2(&objs, &b_opts);
            }
        }
    }
}

/// A qcow2+LUKS overlay (key s1) over a qcow2+LUKS base (key s2) flattens into one
/// qcow2+LUKS image under a third key, and into LUKS2.
#[test]
fn flatten_and_rekey_a_chain() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    let sc = Scratch::new();
    let mut objs = objects(&sc);
    let k3 = sc.write("k3", PASS3);
    objs.push(format!("secret,id=s3,file={k3}"));
    let src_bytes = source();
    let src = sc.write("src.raw", &src_bytes);
    let base = sc.p("base.qcow2");
    vmcrypt(&with_objects(
        &objs,
        &["convert", "-q"],
        &[
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s2,encrypt.iter-time=10",
            &src,
            &base,
        ],
    ))
    .ok();
    let top = sc.p("top.qcow2");
    vmcrypt(&with_objects(
        &objs,
        &["create", "-q", "-f", "qcow2"],
        &[
            "-b",
            &base,
            "-F",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10",
            &top,
        ],
    ))
    .ok();
    let chain = format!(
        "driver=qcow2,file.filename={top},encrypt.key-secret=s1,backing.encrypt.key-secret=s2"
    );
    tool(
        "qemu-io",
        &with_objects(
            &objs,
            &[],
            &["-c", "write -P 0x77 1000 3000000", "--image-opts", &chain],
        ),
    )
    .ok();
    let mut want = src_bytes.clone();
    want[1000..3_001_000].fill(0x77);
    let flat = sc.p("flat.qcow2");
    vmcrypt(&with_objects(
        &objs,
        &["convert", "-q"],
        &[
            "--image-opts",
            &chain,
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s3,encrypt.iter-time=10",
            &flat,
        ],
    ))
    .ok();
    let flat_opts = format!("driver=qcow2,file.filename={flat},encrypt.key-secret=s3");
    let info = qemu_img(&with_objects(
        &objs,
        &["info", "--output=json"],
        &["--image-opts", &flat_opts],
    ))
    .ok()
    .json();
    assert!(
        info.get("backing-filename").is_none(),
        "flattened image has a backing file: {info}"
    );
    assert_same_bytes(
        "flattened chain",
        &read_ours(&sc, &objs, &flat_opts, "f.raw"),
        &want,
    );
    qemu_img(&with_objects(
        &objs,
        &["compare", "--image-opts"],
        &[&chain, &flat_opts],
    ))
    .ok();
    // The old keys do not open it.
    let wrong = format!("driver=qcow2,file.filename={flat},encrypt.key-secret=s1");
    vmcrypt(&with_objects(
        &objs,
        &["convert", "-q"],
        &["--image-opts", &wrong, "-O", "raw", &sc.p("x.raw")],
    ))
    .code_is(2);
    let l2 = sc.p("flat.luks2");
    vmcrypt(&with_objects(
        &objs,
        &["convert", "-q"],
        &[
            "--image-opts",
            &chain,
            "-O",
            "luks2",
            "-o",
            "key-secret=s3,pbkdf=pbkdf2,iterations=1000",
            &l2,
        ],
    ))
    .ok();
    let l2_opts = format!("driver=luks,key-secret=s3,file.filename={l2}");
    assert_same_bytes(
        "chain into LUKS2",
        &read_ours(&sc, &objs, &l2_opts, "l2.raw"),
        &want,
    );
}
