//! `vmcrypt create -f qcow2` and `vmcrypt rebase -u` against the real QEMU tools: for a
//! matrix of options our image equals qemu-img's (byte for byte where nothing is random,
//! field for field otherwise), passes `qemu-img check`, takes a qemu-io write, stays
//! clean, and our reader returns what qemu-io wrote. `rebase -u` writes the same first
//! cluster as `qemu-img rebase -u`.
mod common;
use common::*;
use serde_json::Value;

const PASS: &str = "secret,id=s0,data=qcow2-create-pass";

/// One row of the matrix: `-o` options (empty for none), size, and whether a qcow2
/// base image is used as backing file (`-b base.qcow2 -F qcow2`).
struct Case {
    opts: &'static str,
    size: &'static str,
    backing: bool,
}

const CASES: &[Case] = &[
    Case {
        opts: "",
        size: "64M",
        backing: false,
    },
    Case {
        opts: "compat=0.10",
        size: "64M",
        backing: false,
    },
    Case {
        opts: "compat=0.10",
        size: "",
        backing: true,
    },
    Case {
        opts: "cluster_size=512",
        size: "1G",
        backing: false,
    },
    Case {
        opts: "cluster_size=512,refcount_bits=1,compression_type=zstd",
        size: "64M",
        backing: false,
    },
    Case {
        opts: "cluster_size=2M,refcount_bits=64",
        size: "3G",
        backing: false,
    },
    Case {
        opts: "lazy_refcounts=on,refcount_bits=16",
        size: "64M",
        backing: true,
    },
    Case {
        opts: "extended_l2=on,cluster_size=128k",
        size: "64M",
        backing: false,
    },
    Case {
        opts: "compat=1.1,cluster_size=4096,refcount_bits=8",
        size: "64M",
        backing: true,
    },
    Case {
        opts: "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        size: "64M",
        backing: false,
    },
    Case {
        opts: "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1",
        size: "64M",
        backing: true,
    },
    Case {
        opts: "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=twofish-256,cluster_size=512",
        size: "256M",
        backing: false,
    },
    Case {
        opts: "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=2M,compat=0.10",
        size: "64M",
        backing: false,
    },
];

fn encrypted(c: &Case) -> bool {
    c.opts.contains("encrypt.format=luks")
}

/// `create` arguments shared by both tools.
fn create_args<'a>(c: &'a Case, file: &'a str) -> Vec<&'a str> {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    if encrypted(c) {
        a.extend(["--object", PASS]);
    }
    if c.backing {
        a.extend(["-b", "base.qcow2", "-F", "qcow2"]);
    }
    if !c.opts.is_empty() {
        a.extend(["-o", c.opts]);
    }
    a.push(file);
    if !c.size.is_empty() {
        a.push(c.size);
    }
    a
}

/// Arguments opening `file` (with the key when encrypted) for qemu-img/qemu-io/vmcrypt.
fn open_args(c: &Case, file: &str) -> Vec<String> {
    if encrypted(c) {
        vec![
            "--object".into(),
            PASS.into(),
            "--image-opts".into(),
            format!("driver=qcow2,file.filename={file},encrypt.key-secret=s0"),
        ]
    } else {
        vec!["-f".into(), "qcow2".into(), file.into()]
    }
}

fn check_clean(c: &Case, file: &str, when: &str) {
    let mut a = vec!["check".to_string()];
    a.extend(open_args(c, file));
    let out = qemu_img(&strs(&a));
    assert_eq!(out.code, Some(0), "{when}: {}", out.describe());
    assert!(
        out.stdout_str().contains("No errors were found"),
        "{when}: {}",
        out.describe()
    );
}

fn info_json(c: &Case, file: &str) -> Value {
    let mut a = vec!["info".to_string(), "--output=json".into()];
    a.extend(open_args(c, file));
    qemu_img(&strs(&a)).ok().json()
}

/// The parts of qemu-img info that must agree (random LUKS fields removed).
fn comparable(mut v: Value) -> Value {
    let m = v.as_object_mut().unwrap();
    for k in [
        "filename",
        "actual-size",
        "children",
        "dirty-flag",
        "full-backing-filename",
    ] {
        m.remove(k);
    }
    if let Some(enc) = v.pointer_mut("/format-specific/data/encrypt") {
        let e = enc.as_object_mut().unwrap();
        for k in ["uuid", "master-key-iters"] {
            e.remove(k);
        }
        if let Some(Value::Array(slots)) = e.get_mut("slots") {
            for s in slots {
                s.as_object_mut().unwrap().remove("iters");
            }
        }
    }
    v
}

fn cluster_size(c: &Case) -> usize {
    c.opts
        .split(',')
        .find_map(|kv| kv.strip_prefix("cluster_size="))
        .map_or(65536, |s| match s {
            "2M" => 2 << 20,
            "128k" => 128 << 10,
            n => n.parse().unwrap(),
        })
}

fn run_case(c: &Case) {
    let sc = Scratch::new();
    if c.backing {
        qemu_img(&["create", "-q", "-f", "qcow2", &sc.p("base.qcow2"), "32M"]).ok();
    }
    let ours = sc.p("ours.qcow2");
    let theirs = sc.p("theirs.qcow2");
    let what = format!(
        "case -o '{}' size '{}' backing {}",
        c.opts, c.size, c.backing
    );
    vmcrypt(&create_args(c, &ours)).ok();
    qemu_img(&create_args(c, &theirs)).ok();

    let (a, b) = (sc.read("ours.qcow2"), sc.read("theirs.qcow2"));
    assert_eq!(a.len(), b.len(), "{what}: file sizes");
    let cs = cluster_size(c);
    assert_same_bytes(&format!("{what}: cluster 0"), &a[..cs], &b[..cs]);
    if !encrypted(c) {
        // Nothing random: the whole image is QEMU's, byte for byte.
        assert_same_bytes(&format!("{what}: whole image"), &a, &b);
    }
    assert_eq!(
        comparable(info_json(c, &ours)),
        comparable(info_json(c, &theirs)),
        "{what}: qemu-img info"
    );
    check_clean(c, &ours, &format!("{what}: fresh"));

    // qemu-io writes a pattern and reads it back through QEMU's driver.
    let mut io = vec![];
    if encrypted(c) {
        io.extend(["--object".to_string(), PASS.into(), "--image-opts".into()]);
        io.push(format!(
            "driver=qcow2,file.filename={ours},encrypt.key-secret=s0"
        ));
    } else {
        io.extend(["-f".to_string(), "qcow2".into(), ours.clone()]);
    }
    io.extend([
        "-c".into(),
        "write -P 0x5a 0 64k".into(),
        "-c".into(),
        "read -P 0x5a 0 64k".into(),
    ]);
    let out = tool("qemu-io", &strs(&io)).ok();
    assert!(
        !out.stdout_str().contains("Pattern verification failed"),
        "{what}: {}",
        out.describe()
    );
    check_clean(c, &ours, &format!("{what}: after qemu-io"));

    // Our reader sees qemu-io's data.
    let raw = sc.p("out.raw");
    let mut conv = vec!["convert".to_string()];
    conv.extend(open_args(c, &ours));
    conv.extend(["-O".into(), "raw".into(), raw.clone()]);
    vmcrypt(&strs(&conv)).ok();
    let f = std::fs::File::open(&raw).unwrap();
    let mut head = vec![0u8; 128 << 10];
    std::io::Read::read_exact(&mut &f, &mut head).unwrap();
    assert!(head[..64 << 10].iter().all(|&x| x == 0x5a), "{what}: data");
    assert!(
        head[64 << 10..].iter().all(|&x| x == 0),
        "{what}: beyond the data"
    );
}

#[test]
fn created_images_match_qemu_img() {
    require_tool("qemu-io");
    for c in CASES {
        run_case(c);
    }
}

#[test]
fn size_defaults_to_backing_size_unless_unsafe() {
    let sc = Scratch::new();
    qemu_img(&["create", "-q", "-f", "raw", &sc.p("b.raw"), "5M"]).ok();
    let img = sc.p("o.qcow2");
    vmcrypt(&[
        "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw", &img,
    ])
    .ok();
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert_eq!(info["virtual-size"], 5 << 20);
    assert_eq!(info["backing-filename"], "b.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    // -u: the backing file is not opened, so a missing one is fine with a size ...
    let img2 = sc.p("o2.qcow2");
    vmcrypt(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "nope.raw", "-F", "raw", &img2, "1M",
    ])
    .ok();
    let info = qemu_img(&["info", "-U", "--output=json", "--backing-chain", &img2]);
    assert!(info.stdout_str().contains("nope.raw") || info.stderr.contains("nope.raw"));
    // ... and without a size it is an error.
    vmcrypt(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nope.raw",
        "-F",
        "raw",
        &sc.p("o3.qcow2"),
    ])
    .failed()
    .stderr_has("size");
    // Without -F: refused like qemu-img 10.
    vmcrypt(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b.raw",
        &sc.p("o4.qcow2"),
    ])
    .failed()
    .stderr_has("backing format");
}

#[test]
fn refused_options_name_the_problem() {
    let sc = Scratch::new();
    let f = sc.p("x.qcow2");
    vmcrypt(&[
        "create",
        "-f",
        "qcow2",
        "--object",
        PASS,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        &f,
        "1M",
    ])
    .failed()
    .stderr_has("encrypt.format=luks");
    vmcrypt(&["create", "-f", "qcow2", "-o", "data_file=d.raw", &f, "1M"])
        .failed()
        .stderr_has("data_file");
    vmcrypt(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=full",
        &f,
        "1M",
    ])
    .failed()
    .stderr_has("preallocation");
    vmcrypt(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,lazy_refcounts=on",
        &f,
        "1M",
    ])
    .failed()
    .stderr_has("compat=1.1");
    vmcrypt(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks",
        &f,
        "1M",
    ])
    .failed()
    .stderr_has("encrypt.key-secret");
    vmcrypt(&["create", "-f", "qcow2", "-o", "help"])
        .ok()
        .stdout_has("encrypt.cipher-alg")
        .stdout_has("refcount_bits");
}

/// Rebase `name` with both tools (from identical copies) and compare cluster 0.
fn rebase_both(sc: &Scratch, name: &str, args: &[&str], cs: usize) {
    let ours = sc.p(&format!("{name}.ours"));
    let theirs = sc.p(&format!("{name}.theirs"));
    std::fs::copy(sc.path(name), &ours).unwrap();
    std::fs::copy(sc.path(name), &theirs).unwrap();
    let mut a = vec!["rebase", "-u"];
    a.extend(args);
    // Ours needs no key (metadata only); QEMU opens encrypted images with theirs.
    vmcrypt(&[a.as_slice(), &[ours.as_str()]].concat()).ok();
    let spec = format!("driver=qcow2,file.filename={theirs},encrypt.key-secret=s0");
    let target: Vec<&str> = if name.starts_with("enc") {
        vec!["--object", PASS, "--image-opts", &spec]
    } else {
        vec![&theirs]
    };
    qemu_img(&[a.as_slice(), &target].concat()).ok();
    let (x, y) = (
        sc.read(&format!("{name}.ours")),
        sc.read(&format!("{name}.theirs")),
    );
    assert_same_bytes(
        &format!("rebase {args:?} of {name}: cluster 0"),
        &x[..cs],
        &y[..cs],
    );
    assert_eq!(x.len(), y.len());
    let spec = format!("driver=qcow2,file.filename={ours},encrypt.key-secret=s0");
    let out = if name.starts_with("enc") {
        qemu_img(&["check", "--object", PASS, "--image-opts", &spec])
    } else {
        qemu_img(&["check", &ours])
    };
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

#[test]
fn rebase_unsafe_matches_qemu_img() {
    let sc = Scratch::new();
    qemu_img(&["create", "-q", "-f", "qcow2", &sc.p("base.qcow2"), "8M"]).ok();
    qemu_img(&["create", "-q", "-f", "raw", &sc.p("other.raw"), "8M"]).ok();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &sc.p("ov.qcow2"),
    ])
    .ok();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        &sc.p("v2.qcow2"),
        "8M",
    ])
    .ok();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        PASS,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        &sc.p("enc.qcow2"),
        "8M",
    ])
    .ok();
    rebase_both(&sc, "ov.qcow2", &["-b", "other.raw", "-F", "raw"], 65536);
    rebase_both(&sc, "ov.qcow2", &["-b", ""], 65536);
    rebase_both(&sc, "v2.qcow2", &["-b", "base.qcow2", "-F", "qcow2"], 65536);
    rebase_both(&sc, "enc.qcow2", &["-b", "other.raw", "-F", "raw"], 65536);

    // qemu-img info sees the new backing file.
    let img = sc.p("ov.qcow2");
    vmcrypt(&["rebase", "-u", "-b", "other.raw", "-F", "raw", &img]).ok();
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert_eq!(info["backing-filename"], "other.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    vmcrypt(&["rebase", "-u", "-b", "", &img]).ok();
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert!(info.get("backing-filename").is_none(), "{info}");

    // A safe rebase (nothing to copy without a backing file) names the new backing file
    // (tests/qcow2_rebase.rs tests it against qemu-img); a name that does not fit in
    // cluster 0 is refused and the image is left as it was.
    vmcrypt(&["rebase", "-b", "other.raw", "-F", "raw", &img]).ok();
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert_eq!(info["backing-filename"], "other.raw");
    let small = sc.p("small.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &small,
        "1M",
    ])
    .ok();
    let before = sc.read("small.qcow2");
    let long = "x".repeat(400);
    vmcrypt(&["rebase", "-u", "-b", &long, "-F", "raw", &small])
        .failed()
        .stderr_has("first cluster");
    assert_eq!(sc.read("small.qcow2"), before);
}

/// `convert -O qcow2` creates the target with this module and fills it through the
/// qcow2 write engine; QEMU sees the same bytes and a clean image (plain and LUKS).
#[test]
fn convert_to_qcow2_plain_and_luks() {
    let sc = Scratch::new();
    let src = sc.write("src.raw", &plaintext(3 << 20, "qcow2-create"));
    let plain = sc.p("plain.qcow2");
    vmcrypt(&["convert", "-f", "raw", "-O", "qcow2", &src, &plain]).ok();
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &src, &plain])
        .ok()
        .stdout_has("Images are identical");
    qemu_img(&["check", &plain]).ok();
    let enc = sc.p("enc.qcow2");
    vmcrypt(&[
        "convert",
        "--object",
        PASS,
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        &src,
        &enc,
    ])
    .ok();
    let spec = format!("driver=qcow2,file.filename={enc},encrypt.key-secret=s0");
    let raw_spec = format!("driver=raw,file.filename={src}");
    qemu_img(&[
        "compare",
        "--object",
        PASS,
        "--image-opts",
        &raw_spec,
        &spec,
    ])
    .ok()
    .stdout_has("Images are identical");
    qemu_img(&["check", "--object", PASS, "--image-opts", &spec]).ok();
}
