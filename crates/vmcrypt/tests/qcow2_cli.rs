//! `vmcrypt convert` reads encrypted qcow2 chains with QEMU's option syntax: vector 8
//! (an overlay with its own LUKS key over a base with another) converts to raw with the
//! sha256 from shared/vectors/qemu/README.txt; a missing backing key names the option.
mod common;
use common::*;

const OVERLAY_SHA: &str = "d68fee1c12270630a07c773fcd8f617e04d15fd751f19fa6b6ab63dcd47f4997";

#[test]
fn convert_encrypted_qcow2_chain_to_raw() {
    let dir = tempfile::tempdir().unwrap();
    let so = dir.path().join("so.key");
    let sb = dir.path().join("sb.key");
    std::fs::write(&so, b"overlay-pass").unwrap();
    std::fs::write(&sb, b"base-pass").unwrap();
    let out = dir.path().join("out.raw");
    let obj_o = format!("secret,id=so,file={}", so.display());
    let obj_b = format!("secret,id=sb,file={}", sb.display());
    let overlay = shared("vectors/qemu/qcow2-luks-overlay.qcow2");
    let opts = format!(
        "driver=qcow2,file.filename={overlay},encrypt.key-secret=so,backing.encrypt.key-secret=sb"
    );
    vmcrypt(&[
        "convert",
        "--object",
        &obj_o,
        "--object",
        &obj_b,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        out.to_str().unwrap(),
    ])
    .ok();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 2 << 20);
    assert_eq!(sha256_hex(&got), OVERLAY_SHA);

    // Without the base's key: the error names the base image and the option.
    let out2 = dir.path().join("out2.raw");
    let opts = format!("driver=qcow2,file.filename={overlay},encrypt.key-secret=so");
    vmcrypt(&[
        "convert",
        "--object",
        &obj_o,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        out2.to_str().unwrap(),
    ])
    .failed()
    .stderr_has("qcow2-luks-base.qcow2' is encrypted")
    .stderr_has("backing.encrypt.key-secret");
}

/// `vmcrypt info` prints qemu-img's qcow2 lines and JSON keys for an encrypted overlay.
#[test]
fn info_matches_qemu_img_for_the_overlay() {
    let img = shared("vectors/qemu/qcow2-luks-overlay.qcow2");
    let img = img.as_str();
    let ours = vmcrypt(&["info", img]).ok().stdout_str();
    let theirs = qemu_img(&["info", img]).ok().stdout_str();
    for key in [
        "virtual size:",
        "cluster_size:",
        "backing file:",
        "backing file format:",
        "encrypted:",
    ] {
        let line = |s: &str| s.lines().find(|l| l.starts_with(key)).map(str::to_string);
        assert_eq!(
            line(&ours),
            line(&theirs),
            "{key}\nours:\n{ours}\nqemu-img:\n{theirs}"
        );
    }
    let ours = vmcrypt(&["info", "--output=json", img]).ok().json();
    let theirs = qemu_img(&["info", "--output=json", img]).ok().json();
    for key in [
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "encrypted",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    assert_eq!(
        ours["format-specific"]["data"]["encrypt"],
        theirs["format-specific"]["data"]["encrypt"]
    );
}

/// `info --backing-chain`: a three-layer chain (encrypted overlay, plain middle, raw
/// base) gives the same JSON array and the same text as qemu-img.
#[test]
fn info_backing_chain_matches_qemu_img() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let key = sc.write("key", PASS);
    let obj = format!("secret,id=s0,file={key}");
    sc.write("base.raw", &plaintext(1 << 20, "chain-base"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &sc.p("mid.qcow2"),
    ])
    .ok();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        &obj,
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        &sc.p("top.qcow2"),
    ])
    .ok();
    let top = sc.p("top.qcow2");
    let ours = vmcrypt(&["info", "--backing-chain", "--output=json", &top])
        .ok()
        .json();
    let theirs = qemu_img(&["info", "--backing-chain", "--output=json", &top])
        .ok()
        .json();
    assert_eq!(ours.as_array().map(Vec::len), Some(3), "{ours}");
    assert_eq!(ours, theirs);
    let ours = vmcrypt(&["info", "--backing-chain", &top])
        .ok()
        .stdout_str();
    let theirs = qemu_img(&["info", "--backing-chain", &top])
        .ok()
        .stdout_str();
    assert_eq!(ours, theirs);
}

/// zstd-compressed clusters (`qemu-img convert -c -o compression_type=zstd`) read back
/// as the source bytes, and a write over them re-allocates (clean `qemu-img check`).
#[test]
fn zstd_compressed_clusters_read_and_rewrite() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let mut src = plaintext(1 << 20, "zstd-src");
    src.extend(b"compressible ".repeat(80_000));
    src.resize(2 << 20, 0x41);
    let raw = sc.write("src.raw", &src);
    let img = sc.p("z.qcow2");
    qemu_compressed_qcow2("compression_type=zstd", &raw, &img);
    qemu_img(&["info", &img])
        .ok()
        .stdout_has("compression type: zstd");
    let out = sc.p("out.raw");
    vmcrypt(&["convert", "-f", "qcow2", "-O", "raw", &img, &out]).ok();
    assert_same_bytes("zstd image", &sc.read("out.raw"), &src);
    vmcrypt_write_raw(
        &sc.write("patch.raw", &[7u8; 4096]),
        &format!("driver=qcow2,file.filename={img}"),
    )
    .ok();
    qemu_img(&["check", &img])
        .ok()
        .stdout_has("No errors were found on the image.");
    let out2 = sc.p("out2.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &img, &out2]).ok();
    let mut want = src.clone();
    want[..4096].fill(7);
    assert_same_bytes(
        "after rewriting a zstd cluster",
        &sc.read("out2.raw"),
        &want,
    );
}

/// A legacy AES image opened for writing refuses the write and names the way off it
/// (convert to LUKS); `resize` grows an encrypted qcow2 without its key, and QEMU sees
/// the new size with a clean check.
#[test]
fn legacy_aes_refuses_writes_and_resize_grows_luks_qcow2() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let aes = sc.p("aes.qcow2");
    std::fs::copy(shared("vectors/qemu/qcow2-legacy-aes.qcow2"), &aes).unwrap();
    let before = sc.read("aes.qcow2");
    let key = sc.write("k", b"x");
    let data = sc.write("d.raw", &[1u8; 512]);
    vmcrypt(&[
        "convert",
        "-n",
        "--object",
        &format!("secret,id=s,file={key}"),
        "-f",
        "raw",
        &data,
        "--target-image-opts",
        &format!("driver=qcow2,file.filename={aes},encrypt.key-secret=s"),
    ])
    .failed()
    .stderr_has("vmcrypt convert -O qcow2 -o encrypt.format=luks");
    assert_eq!(
        sc.read("aes.qcow2"),
        before,
        "a refused write changed the image"
    );

    let pw = sc.write("pw", PASS);
    let obj = format!("secret,id=s0,file={pw}");
    let img = sc.p("l.qcow2");
    vmcrypt(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        &obj,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4096",
        &img,
        "1M",
    ])
    .ok();
    // 1 MiB -> 3 GiB needs a bigger L1 table with 4 KiB clusters (512 entries per L2).
    vmcrypt(&["resize", &img, "3G"])
        .ok()
        .stdout_has("Image resized.");
    let info = qemu_img(&["info", "--output=json", &img]).ok().json();
    assert_eq!(info["virtual-size"], 3u64 << 30);
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    qemu_img(&["check", "--object", &obj, "--image-opts", &opts])
        .ok()
        .stdout_has("No errors were found on the image.");
    tool(
        "qemu-io",
        &[
            "--object",
            &obj,
            "-c",
            "write -P 0x42 3221160000 4096",
            "-c",
            "read -P 0x42 3221160000 4096",
            "--image-opts",
            &opts,
        ],
    )
    .ok();
    vmcrypt(&["resize", &img, "1G"])
        .failed()
        .stderr_has("--shrink");
}

/// A `json:` backing file name is used as it is, never joined to the image's
/// directory: `create` without a size takes the size of that backing file, and `info`
/// reports the same full-backing-filename as qemu-img.
#[test]
fn json_backing_names_are_not_relative_paths() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let base = sc.write("base.raw", &plaintext(3 << 20, "json-backing"));
    let json = format!(r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{base}"}}}}"#);
    let top = sc.p("top.qcow2");
    vmcrypt(&[
        "create", "-q", "-f", "qcow2", "-b", &json, "-F", "raw", &top,
    ])
    .ok();
    let ours = vmcrypt(&["info", "--output=json", &top]).ok().json();
    let theirs = qemu_img(&["info", "--output=json", &top]).ok().json();
    assert_eq!(ours["virtual-size"], 3u64 << 20);
    assert_eq!(
        ours["full-backing-filename"],
        theirs["full-backing-filename"]
    );
    assert_eq!(ours["full-backing-filename"], json.as_str());
}

/// qcow2's run-time options (cache sizes and the write-path options) are accepted or
/// refused as qemu-img does, with qemu-img's message; an accepted set opens the image
/// and reads the same bytes.
#[test]
fn qcow2_runtime_options_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "64M"]).ok();
    let io = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1000000 70000", &img],
    );
    io.ok();
    let sets = [
        ("l2-cache-size=1M", true),
        ("l2-cache-size=1", true),
        ("cache-size=4M", true),
        ("cache-size=1M,refcount-cache-size=256K", true),
        ("cache-size=1M,l2-cache-size=512K", true),
        ("l2-cache-entry-size=4096,cache-clean-interval=30", true),
        (
            "lazy-refcounts=on,pass-discard-request=on,discard-no-unref=off,overlap-check=none",
            true,
        ),
        (
            "cache-size=1M,l2-cache-size=512K,refcount-cache-size=256K",
            false,
        ),
        ("cache-size=1M,l2-cache-size=2M", false),
        ("cache-size=1M,refcount-cache-size=2M", false),
        ("l2-cache-entry-size=131072", false),
        ("l2-cache-entry-size=1000", false),
    ];
    // The image reads 0x5a in [1000000, 1070000), zeros elsewhere.
    let mut want = vec![0u8; 64 << 20];
    want[1_000_000..1_070_000].fill(0x5a);
    for (set, accepted) in sets {
        let opts = format!("driver=qcow2,file.filename={img},{set}");
        let theirs = qemu_img(&["info", "--image-opts", &opts]);
        let ours = vmcrypt(&["info", "--image-opts", &opts]);
        assert_eq!(theirs.code == Some(0), accepted, "{}", theirs.describe());
        assert_eq!(ours.code == Some(0), accepted, "{set}\n{}", ours.describe());
        if accepted {
            let raw = dir.path().join("out.raw").display().to_string();
            vmcrypt(&["convert", "--image-opts", &opts, "-O", "raw", &raw]).ok();
            assert!(
                read(std::path::Path::new(&raw)) == want,
                "{set}: bytes differ"
            );
        } else {
            let why = theirs
                .stderr
                .rsplit("': ")
                .next()
                .unwrap()
                .trim()
                .to_string();
            assert!(
                ours.stderr.contains(&why),
                "{set}: want {why:?}\n{}",
                ours.describe()
            );
        }
    }
    // qcow (version 1) has none of them.
    let v1 = dir.path().join("v1.qcow").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow", &v1, "1M"]).ok();
    let opts = format!("driver=qcow,file.filename={v1},l2-cache-size=1M");
    vmcrypt(&["info", "--image-opts", &opts]).failed();
    qemu_img(&["info", "--image-opts", &opts]).failed();
}
