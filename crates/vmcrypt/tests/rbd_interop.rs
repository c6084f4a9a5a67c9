//! Live interop with Ceph RBD and librbd itself (python3-rbd) on a one-node cluster on
//! 127.0.0.1 (`shared/ceph/start-ceph.sh`, started by the first test that needs it):
//!
//! * images formatted by librbd (`rbd_encryption_format`, LUKS1 and LUKS2, the real KDF:
//!   one per version) are read and written by vmcrypt, and what librbd reads of them
//!   afterwards is byte for byte what vmcrypt wrote, holes included;
//! * images vmcrypt formats (`rbd encryption format`, `create -f rbd -o encrypt.*`, cheap
//!   KDF) load in librbd with the same plaintext both ways;
//! * the plain rbd node: pseudo-filenames, --image-opts, sparse copies, allocation map,
//!   snapshots (read-only), resize; and the refusals (wrong key, wrong format, no key).
//!
//! A missing Ceph or python3-rbd fails these tests; they are never skipped.
#[path = "../../vmcrypt-block/tests/support/ceph.rs"]
mod ceph;
mod common;

use ceph::{TestImage, librbd, rbd_cli};
use common::*;

const MIB: usize = 1 << 20;

/// `--object secret` for the passphrase file `pw`.
fn secret(pw: &str) -> String {
    format!("secret,id=s0,file={pw}")
}

/// Read the whole encrypted image through vmcrypt into a file and return its bytes.
fn vmcrypt_read(sc: &Scratch, img: &TestImage, pw: &str, format: &str, out: &str) -> Vec<u8> {
    let opts = img.opts(&format!("encrypt.format={format},encrypt.key-secret=s0"));
    let out = sc.p(out);
    vmcrypt(&[
        "convert",
        "--object",
        &secret(pw),
        "--image-opts",
        &opts,
        "-O",
        "raw",
        &out,
    ])
    .ok();
    read(std::path::Path::new(&out))
}

/// Write the raw file `src` over the whole encrypted image through vmcrypt.
fn vmcrypt_write(img: &TestImage, pw: &str, format: &str, src: &str) {
    let opts = img.opts(&format!("encrypt.format={format},encrypt.key-secret=s0"));
    vmcrypt(&[
        "convert",
        "-n",
        "--object",
        &secret(pw),
        "-f",
        "raw",
        src,
        "--target-image-opts",
        &opts,
    ])
    .ok();
}

/// A new image of `size` formatted by `vmcrypt rbd encryption format` with a cheap KDF.
fn format_cheap(img: &TestImage, size: &str, version: &str, passfile: &str) {
    assert!(
        rbd_cli(&["create", "--size", size, &img.path()])
            .status
            .success()
    );
    let conf = ceph::ceph_conf();
    vmcrypt(&[
        "rbd",
        "encryption",
        "format",
        "--conf",
        conf,
        "--iter-time",
        "10",
        "--pbkdf-memory",
        "32768",
        &img.path(),
        version,
        passfile,
    ])
    .ok();
}

/// `vmcrypt create -f rbd -o OPTS` of the image (the passphrase secret is s0 in `pw`).
fn create_encrypted(img: &TestImage, pw: &str, opts: &str, size: &str) {
    vmcrypt(&[
        "create",
        "--object",
        &secret(pw),
        "-f",
        "rbd",
        "-o",
        opts,
        &img.filename(),
        size,
    ])
    .ok();
}

fn librbd_read(img: &TestImage, fmt: &str, pw: &str) -> Vec<u8> {
    librbd(&["read", &img.name, fmt, pw, "0", "-1"])
}

/// librbd formats (real KDF), librbd writes part of an object, vmcrypt reads the image
/// exactly as librbd does (never-written objects as zeros, the unwritten start of a
/// written object as librbd decrypts it); then vmcrypt writes the whole image and
/// librbd reads back exactly that.
fn librbd_formatted(version: &str, qemu_format: &str) {
    let sc = Scratch::new();
    let img = TestImage::new(&format!("lib-{version}"));
    let pw = sc.write("pw", PASS);
    librbd(&["create", &img.name, &(48 * MIB).to_string()]);
    librbd(&["format", &img.name, version, &pw]);
    let p1 = plaintext(MIB, "p1");
    let p1f = sc.write("p1", &p1);
    let at = 5 * MIB + 8192;
    librbd(&["write", &img.name, version, &pw, &at.to_string(), &p1f]);

    let got = vmcrypt_read(&sc, &img, &pw, qemu_format, "out1");
    let lib = librbd_read(&img, version, &pw);
    assert_same_bytes("vmcrypt's read vs librbd's read", &got, &lib);
    assert_same_bytes("librbd's write seen by vmcrypt", &got[at..at + MIB], &p1);
    assert!(
        got[12 * MIB..16 * MIB].iter().all(|&b| b == 0),
        "a never-written object must read as zeros"
    );

    let plain = plaintext(got.len(), &format!("vm-{version}"));
    let src = sc.write("plain", &plain);
    vmcrypt_write(&img, &pw, qemu_format, &src);
    assert_same_bytes(
        "librbd reads vmcrypt's write",
        &librbd_read(&img, version, &pw),
        &plain,
    );
}

#[test]
fn librbd_luks1_image_read_and_written_by_vmcrypt() {
    librbd_formatted("luks1", "luks");
}

#[test]
fn librbd_luks2_image_read_and_written_by_vmcrypt() {
    librbd_formatted("luks2", "luks2");
}

/// vmcrypt formats (cheap KDF), writes, librbd loads and reads the same; librbd writes,
/// vmcrypt reads the same.
fn vmcrypt_formatted(img: &TestImage, sc: &Scratch, pw: &str, version: &str, qf: &str) {
    let size = librbd_read(img, version, pw).len();
    let mut plain = plaintext(size, &format!("vmf-{version}"));
    let src = sc.write("plain", &plain);
    vmcrypt_write(img, pw, qf, &src);
    assert_same_bytes(
        "librbd reads vmcrypt's data",
        &librbd_read(img, version, pw),
        &plain,
    );
    let p2 = plaintext(64 * 1024, "p2");
    let p2f = sc.write("p2", &p2);
    let at = 3 * MIB + 4096;
    librbd(&["write", &img.name, version, pw, &at.to_string(), &p2f]);
    plain[at..at + p2.len()].copy_from_slice(&p2);
    let got = vmcrypt_read(sc, img, pw, "luks-any", "back");
    assert_same_bytes("vmcrypt reads librbd's write", &got, &plain);
}

#[test]
fn vmcrypt_rbd_encryption_format_loads_in_librbd() {
    for (version, qf, offset) in [("luks1", "luks", 4 * MIB), ("luks2", "luks2", 16 * MIB)] {
        let sc = Scratch::new();
        let img = TestImage::new(&format!("vmf-{version}"));
        // A trailing newline in the passphrase file is dropped, as by `rbd`.
        let pwnl = sc.write("pwnl", b"vm pass\n");
        let pw = sc.write("pw", b"vm pass");
        format_cheap(&img, "40M", version, &pwnl);
        let info = vmcrypt(&["info", "--output=json", "--image-opts", &img.opts("")]).ok();
        assert_eq!(info.json()["virtual-size"], 40 * MIB, "raw size unchanged");
        let size = librbd_read(&img, version, &pw).len();
        assert_eq!(size, 40 * MIB - offset, "data offset of {version}");
        vmcrypt_formatted(&img, &sc, &pw, version, qf);
    }
}

#[test]
fn create_and_convert_to_encrypted_rbd() {
    let sc = Scratch::new();
    let img = TestImage::new("create");
    let pw = sc.write("pw", PASS);
    let o = "encrypt.format=luks2,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.pbkdf-memory=32768,encrypt.cipher-alg=aes-128";
    create_encrypted(&img, &pw, o, "24M");
    // The usable size is the size asked for, as QEMU's rbd driver makes it.
    assert_eq!(librbd_read(&img, "luks2", &pw).len(), 24 * MIB);
    vmcrypt_formatted(&img, &sc, &pw, "luks2", "luks2");

    // convert -O rbd from a file: the target is created, encrypted, sparse.
    let img2 = TestImage::new("convert");
    let mut plain = vec![0u8; 12 * MIB];
    plain[..MIB].copy_from_slice(&plaintext(MIB, "c"));
    let src = sc.write("src", &plain);
    let o = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    vmcrypt(&[
        "convert",
        "--object",
        &secret(&pw),
        "-f",
        "raw",
        &src,
        "-O",
        "rbd",
        "-o",
        o,
        &img2.filename(),
    ])
    .ok();
    assert_same_bytes(
        "librbd reads the converted image",
        &librbd_read(&img2, "luks1", &pw),
        &plain,
    );
    // Sparse: the header object and the one data object exist, nothing after them (the
    // bare rbd node: without -f its LUKS header would be probed as a luks node).
    let map = vmcrypt(&["map", "--output=json", "-f", "rbd", &img2.filename()])
        .ok()
        .json();
    assert_eq!(map[0]["data"], true, "{map}");
    assert_eq!(map[0]["length"], 8 * MIB, "{map}");
    assert_eq!(map[1]["data"], false, "{map}");
}

#[test]
fn plain_rbd_node() {
    let sc = Scratch::new();
    let img = TestImage::new("plain");
    vmcrypt(&["create", "-f", "raw", &img.filename(), "16M"]).ok();
    let mut plain = vec![0u8; 16 * MIB];
    plain[..MIB].copy_from_slice(&plaintext(MIB, "plain"));
    let src = sc.write("src", &plain[..4 * MIB]);
    vmcrypt(&[
        "convert",
        "-n",
        "-f",
        "raw",
        &src,
        "--target-image-opts",
        &img.opts(""),
    ])
    .ok();
    assert_same_bytes(
        "librbd reads vmcrypt's write",
        &librbd_read(&img, "none", "-"),
        &plain,
    );

    // Allocation: only the first object exists.
    let map = vmcrypt(&["map", "--output=json", &img.filename()])
        .ok()
        .json();
    let first = &map[0];
    assert_eq!(
        (first["start"].as_u64(), first["length"].as_u64()),
        (Some(0), Some(4 * MIB as u64))
    );
    assert_eq!(first["data"], true);
    assert_eq!(map[1]["data"], false, "{map}");

    // A sparse copy back.
    let out = sc.p("out");
    vmcrypt(&["convert", "-O", "raw", &img.filename(), &out]).ok();
    assert_same_bytes("copied back", &read(std::path::Path::new(&out)), &plain);

    // Snapshots open read-only and keep their data.
    assert!(
        rbd_cli(&["snap", "create", &format!("{}@s1", img.path())])
            .status
            .success()
    );
    let zeros = sc.write("zeros", &vec![0u8; MIB]);
    vmcrypt(&[
        "convert",
        "-n",
        "-f",
        "raw",
        &zeros,
        "--target-image-opts",
        &img.opts(""),
    ])
    .ok();
    let snap = format!("rbd:rbd/{}@s1:conf={}", img.name, ceph::ceph_conf());
    let out2 = sc.p("snap");
    vmcrypt(&["convert", "-O", "raw", &snap, &out2]).ok();
    assert_same_bytes("snapshot data", &read(std::path::Path::new(&out2)), &plain);
    vmcrypt(&["convert", "-n", "-f", "raw", &zeros, &snap])
        .failed()
        .stderr_has("read-only");

    // Resize.
    vmcrypt(&["resize", &img.filename(), "32M"]).ok();
    let info = vmcrypt(&["info", "--output=json", &img.filename()])
        .ok()
        .json();
    assert_eq!(info["virtual-size"], 32 * MIB);
}

#[test]
fn refusals_name_the_problem() {
    let sc = Scratch::new();
    let img = TestImage::new("refuse");
    let pw = sc.write("pw", PASS);
    let wrong = sc.write("wrong", WRONG);
    format_cheap(&img, "24M", "luks1", &pw);
    let out = sc.p("o");
    // Wrong passphrase: exit code 2.
    let opts = img.opts("encrypt.format=luks,encrypt.key-secret=s0");
    vmcrypt(&[
        "convert",
        "--object",
        &secret(&wrong),
        "--image-opts",
        &opts,
        "-O",
        "raw",
        &out,
    ])
    .code_is(2);
    // Wrong version.
    let opts2 = img.opts("encrypt.format=luks2,encrypt.key-secret=s0");
    vmcrypt(&[
        "convert",
        "--object",
        &secret(&pw),
        "--image-opts",
        &opts2,
        "-O",
        "raw",
        &out,
    ])
    .failed()
    .stderr_has("holds a LUKS1 header");
    // No key.
    vmcrypt(&[
        "convert",
        "--image-opts",
        &img.opts("encrypt.format=luks"),
        "-O",
        "raw",
        &out,
    ])
    .failed()
    .stderr_has("encrypt.key-secret");
    // No such image, bad syntax, unknown option.
    vmcrypt(&[
        "info",
        &format!("rbd:rbd/nope-{}:conf={}", img.name, ceph::ceph_conf()),
    ])
    .failed()
    .stderr_has("nope-");
    vmcrypt(&["info", "rbd:justapool"])
        .failed()
        .stderr_has("rbd:POOL");
    vmcrypt(&["info", "--image-opts", &img.opts("bogus=1")])
        .failed()
        .stderr_has("bogus");
    vmcrypt(&["rbd", "encryption", "format", &img.path(), "luks3", &pw])
        .failed()
        .stderr_has("luks1 or luks2");
    assert!(
        !std::path::Path::new(&out).exists(),
        "nothing may be written on refusal"
    );
}

#[test]
fn clone_with_own_key_then_flatten_from_the_cli() {
    let sc = Scratch::new();
    let (gold, child) = (TestImage::new("cli-gold"), TestImage::new("cli-clone"));
    let (gpw, cpw) = (sc.write("gpw", b"gold"), sc.write("cpw", b"child"));
    format_cheap(&gold, "24M", "luks1", &gpw);
    let conf = ceph::ceph_conf();
    let plain = plaintext(20 * MIB, "gold");
    let src = sc.write("plain", &plain);
    let gobj = format!("secret,id=g,file={gpw}");
    let cobj = format!("secret,id=c,file={cpw}");
    vmcrypt(&[
        "convert",
        "-n",
        "--object",
        &gobj,
        "-f",
        "raw",
        &src,
        "--target-image-opts",
        &gold.opts("encrypt.format=luks,encrypt.key-secret=g"),
    ])
    .ok();
    vmcrypt(&[
        "rbd",
        "clone",
        "--conf",
        conf,
        "--iter-time",
        "10",
        &format!("{}@base", gold.path()),
        &child.path(),
        "luks1",
        &cpw,
    ])
    .ok();
    let copts = child.opts(
        "encrypt.format=luks,encrypt.key-secret=c,encrypt.parent.format=luks,encrypt.parent.key-secret=g",
    );
    let out = sc.p("clone.raw");
    vmcrypt(&[
        "convert",
        "--object",
        &gobj,
        "--object",
        &cobj,
        "--image-opts",
        &copts,
        "-O",
        "raw",
        &out,
    ])
    .ok();
    assert_same_bytes(
        "the clone reads its parent",
        &read(std::path::Path::new(&out)),
        &plain,
    );
    vmcrypt(&[
        "rbd", "flatten", "--object", &gobj, "--object", &cobj, &copts,
    ])
    .ok();
    assert_same_bytes(
        "librbd reads the flattened clone with its own key",
        &librbd_read(&child, "luks1", &cpw),
        &plain,
    );
}

#[test]
fn serve_exports_an_encrypted_rbd_image_with_multi_conn() {
    let sc = Scratch::new();
    let img = TestImage::new("serve");
    let pw = sc.write("pw", PASS);
    let o = "encrypt.format=luks2,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.pbkdf-memory=32768";
    create_encrypted(&img, &pw, o, "8M");
    let plain = plaintext(8 * MIB, "served");
    let src = sc.write("plain", &plain);
    let sock = sc.p("nbd.sock");
    let mut server = std::process::Command::new(VMCRYPT)
        .args([
            "serve",
            "-t",
            "--shared",
            "4",
            "--object",
            &secret(&pw),
            "--image-opts",
            &img.opts("encrypt.format=luks2,encrypt.key-secret=s0"),
            "-k",
            &sock,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting vmcrypt serve");
    for _ in 0..100 {
        if std::path::Path::new(&sock).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let uri = format!("nbd+unix:///?socket={sock}");
    tool("nbdcopy", &["--connections=4", &src, &uri]).ok();
    let back = sc.p("back");
    tool("nbdcopy", &["--connections=4", &uri, &back]).ok();
    let _ = std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status();
    let _ = server.wait();
    assert_same_bytes(
        "served and read back",
        &read(std::path::Path::new(&back)),
        &plain,
    );
    assert_same_bytes(
        "librbd reads what came over NBD",
        &librbd_read(&img, "luks2", &pw),
        &plain,
    );
}

/// Whether librbd (python3-rbd) loads the image's encryption with passphrase `pw`
/// (anything but a refused passphrase fails the test).
fn librbd_loads(img: &TestImage, fmt: &str, pw: &str) -> bool {
    let out = librbd(&["load", &img.name, fmt, pw]);
    match String::from_utf8_lossy(&out).trim() {
        "loaded" => true,
        "refused" => false,
        other => panic!("librbd load: {other}"),
    }
}

/// `vmcrypt luks add-key / change-key / kill-slot / remove-key / dump` on the LUKS header
/// at raw offset 0 of an rbd image (LUKS1 and LUKS2): librbd then loads the image with
/// the new passphrases, refuses the removed ones, and reads the same plaintext.
#[test]
fn luks_key_commands_on_rbd_images() {
    for (version, fmt) in [("luks1", "luks"), ("luks2", "luks2")] {
        let sc = Scratch::new();
        let img = TestImage::new(&format!("keys-{version}"));
        let pw = sc.write("pw", PASS);
        let (pw2, pw3, pw4) = (
            sc.write("pw2", b"second pass"),
            sc.write("pw3", b"third pass"),
            sc.write("pw4", b"fourth pass"),
        );
        format_cheap(&img, "24M", version, &pw);
        let plain = plaintext(2 * MIB, version);
        let src = sc.write("plain", &plain);
        vmcrypt_write(&img, &pw, fmt, &src);
        let want = vmcrypt_read(&sc, &img, &pw, fmt, "before");
        let dev = img.filename();
        let cheap = ["--iter-time", "10", "--pbkdf-memory", "32768"];
        let luks = |args: &[&str]| {
            let mut a = vec!["luks"];
            a.extend_from_slice(args);
            a.extend_from_slice(&cheap);
            vmcrypt(&a)
        };
        luks(&["add-key", "-q", "--key-file", &pw, &dev, &pw2]).ok();
        vmcrypt(&["luks", "dump", &dev])
            .ok()
            .stdout_has(if version == "luks1" {
                "Key Slot 1: ENABLED"
            } else {
                "  1: luks2"
            });
        assert!(
            librbd_loads(&img, version, &pw2),
            "{version}: new passphrase"
        );
        vmcrypt(&["luks", "kill-slot", "-q", "--key-file", &pw2, &dev, "0"]).ok();
        assert!(
            !librbd_loads(&img, version, &pw),
            "{version}: killed passphrase"
        );
        luks(&["change-key", "-q", "--key-file", &pw2, &dev, &pw3]).ok();
        assert!(
            !librbd_loads(&img, version, &pw2),
            "{version}: changed passphrase"
        );
        luks(&["add-key", "-q", "--key-file", &pw3, &dev, &pw4]).ok();
        vmcrypt(&["luks", "remove-key", "-q", &dev, &pw4]).ok();
        assert!(
            !librbd_loads(&img, version, &pw4),
            "{version}: removed passphrase"
        );
        let lib = librbd(&[
            "read",
            &img.name,
            version,
            &pw3,
            "0",
            &want.len().to_string(),
        ]);
        assert_same_bytes("librbd after the key changes", &lib, &want);
        assert_same_bytes(
            "vmcrypt after the key changes",
            &vmcrypt_read(&sc, &img, &pw3, fmt, "after"),
            &want,
        );
        // The wrong passphrase changes nothing.
        luks(&["add-key", "-q", "--key-file", &pw, &dev, &pw4]).code_is(2);
    }
}

/// An `rbd:` filename without `-f` is probed as QEMU probes it: a LUKS header makes a
/// luks node over the rbd image, qcow2 a qcow2 node, anything else raw; with `encrypt.*`
/// on the rbd node (librbd's encryption) it is served raw, decrypted.
#[test]
fn rbd_filenames_are_probed() {
    let sc = Scratch::new();
    let pw = sc.write("pw", PASS);
    let (q, l) = (sc.p("f.qcow2"), sc.p("f.luks"));
    qemu_img(&["create", "-q", "-f", "qcow2", &q, "8M"]).ok();
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x5a 1M 64k", &q]).ok();
    qemu_img(&[
        "create",
        "-q",
        "--object",
        &secret(&pw),
        "-f",
        "luks",
        "-o",
        "key-secret=s0,iter-time=10",
        &l,
        "8M",
    ])
    .ok();
    let raw = sc.write("f.raw", &plaintext(MIB, "probe"));
    let format_of = |img: &TestImage| {
        vmcrypt(&["info", "--output=json", &img.filename()])
            .ok()
            .json()["format"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut images = Vec::new();
    for (file, want) in [(&q, "qcow2"), (&l, "luks"), (&raw, "raw")] {
        let img = TestImage::new(&format!("probe-{want}"));
        assert!(
            rbd_cli(&["import", "--no-progress", file, &img.path()])
                .status
                .success()
        );
        assert_eq!(format_of(&img), want, "{file}");
        images.push(img);
    }
    // The qcow2 one reads as qemu-img reads the file.
    let (a, b) = (sc.p("a"), sc.p("b"));
    vmcrypt(&["convert", "-O", "raw", &images[0].filename(), &a]).ok();
    qemu_img(&["convert", "-O", "raw", &q, &b]).ok();
    assert_same_bytes(
        "probed qcow2 over rbd",
        &read(std::path::Path::new(&a)),
        &read(std::path::Path::new(&b)),
    );
    // -f rbd keeps the bare rbd node; librbd's encryption is never probed as luks.
    let info = vmcrypt(&["info", "--output=json", "-f", "rbd", &images[0].filename()])
        .ok()
        .json();
    assert_eq!(info["format"], "rbd");
    let enc = TestImage::new("probe-enc");
    format_cheap(&enc, "24M", "luks1", &pw);
    let json = format!(
        r#"json:{{"file":{{"driver":"rbd","pool":"rbd","image":"{}","conf":"{}","encrypt":{{"format":"luks","key-secret":"s0"}}}}}}"#,
        enc.name,
        ceph::ceph_conf()
    );
    let info = vmcrypt(&["info", "--output=json", "--object", &secret(&pw), &json])
        .ok()
        .json();
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 20 * MIB);
    assert_eq!(
        format_of(&enc),
        "luks",
        "the raw image still shows its LUKS header"
    );
}

/// The librbd helper started in the background with `args`, once it has printed its
/// first line (which must be `ready`); closing its stdin lets it finish.
fn librbd_background(args: &[&str], ready: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg(ceph::librbd_py())
        .args(args)
        .env("CEPH_CONF", ceph::ceph_conf())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running python3");
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("piped stdout");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("reading the helper's output");
    assert_eq!(line.trim(), ready, "librbd helper {args:?}");
    child
}

/// Close the helper's stdin and return the rest of its output.
fn librbd_finish(mut child: std::process::Child) -> String {
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("waiting for the helper");
    assert!(out.status.success(), "librbd helper failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether vmcrypt's header lock on the image is held (`rados lock info`).
fn header_lock_held(img: &TestImage) -> bool {
    let id = rbd_cli(&["info", "--format", "json", &img.path()]);
    let info: serde_json::Value = serde_json::from_slice(&id.stdout).expect("rbd info json");
    let oid = format!("rbd_header.{}", info["id"].as_str().expect("image id"));
    let out = std::process::Command::new("rados")
        .args([
            "--conf",
            ceph::ceph_conf(),
            "-p",
            "rbd",
            "lock",
            "info",
            &oid,
        ])
        .arg("vmcrypt_luks")
        .output()
        .expect("running rados");
    String::from_utf8_lossy(&out.stdout).contains("\"lockers\":[{")
}

/// Key changes on an rbd image hold a RADOS lock on its header object: a second change
/// while one runs (another vmcrypt, or any holder of the lock) is refused with an error
/// naming the holder and how to remove a stale lock, and changes nothing. The lock is
/// not librbd's exclusive lock: a client writing the image's data keeps writing.
#[test]
fn luks_key_changes_on_rbd_take_the_header_lock() {
    let sc = Scratch::new();
    let img = TestImage::new("keylock");
    let pw = sc.write("pw", PASS);
    let (pw2, pw3) = (sc.write("pw2", b"second"), sc.write("pw3", b"third"));
    format_cheap(&img, "24M", "luks2", &pw);
    let dev = img.filename();
    let cheap = ["--iter-time", "10", "--pbkdf-memory", "32768"];
    let add_key = |new: &str| {
        let mut a = vec!["luks", "add-key", "-q", "--key-file", &pw, &dev, new];
        a.extend_from_slice(&cheap);
        vmcrypt(&a)
    };

    // Any holder of the lock: refused, named, nothing changed.
    let holder = librbd_background(&["hold-lock", &img.name, "test holder"], "locked");
    add_key(&pw2)
        .failed()
        .stderr_has("is being changed elsewhere")
        .stderr_has("vmcrypt_luks")
        .stderr_has("held by client.")
        .stderr_has("cookie 'test holder'")
        .stderr_has("lock break");
    librbd_finish(holder);
    assert!(
        !librbd_loads(&img, "luks2", &pw2),
        "the refused add-key added a key"
    );
    assert!(!header_lock_held(&img), "the refused add-key left a lock");

    // Two vmcrypt key changes at once: the slow one holds the lock, the other is refused
    // naming it (its pid); the first then finishes.
    let slow = std::process::Command::new(VMCRYPT)
        .args(["luks", "add-key", "-q", "--key-file", &pw, &dev, &pw2])
        .args(["--iter-time", "4000", "--pbkdf-memory", "32768"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting vmcrypt");
    let start = std::time::Instant::now();
    while !header_lock_held(&img) {
        assert!(
            start.elapsed().as_secs() < 30,
            "the first add-key never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    add_key(&pw3)
        .failed()
        .stderr_has(&format!("pid {}", slow.id()))
        .stderr_has("luks header change");
    let out = slow.wait_with_output().expect("waiting for vmcrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(librbd_loads(&img, "luks2", &pw2), "the first add-key's key");
    assert!(
        !librbd_loads(&img, "luks2", &pw3),
        "the refused add-key's key"
    );
    assert!(!header_lock_held(&img), "a finished add-key left its lock");

    // A client holding librbd's exclusive lock (writing data) neither blocks a key
    // change nor loses its writes to it.
    let writer = librbd_background(&["hold-writer", &img.name], "wrote");
    add_key(&pw3).ok();
    assert_eq!(librbd_finish(writer).trim(), "wrote again");
    assert!(
        librbd_loads(&img, "luks2", &pw3),
        "key added while a writer ran"
    );
}

/// A `vmcrypt luks add-key` on `dev` with passphrase file `pw`, adding `new`, with a
/// KDF of `iter_ms`, its header lock lasting 3 s unless renewed; stderr piped.
fn spawn_add_key(dev: &str, pw: &str, new: &str, iter_ms: &str) -> std::process::Child {
    std::process::Command::new(VMCRYPT)
        .env("VMCRYPT_RBD_LOCK_SECONDS", "3")
        .args(["luks", "add-key", "-q", "--key-file", pw, dev, new])
        .args(["--iter-time", iter_ms, "--pbkdf-memory", "32768"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting vmcrypt")
}

/// Wait (up to 30 s) until the image's header lock is held.
fn await_header_lock(img: &TestImage) {
    let start = std::time::Instant::now();
    while !header_lock_held(img) {
        assert!(start.elapsed().as_secs() < 30, "nobody took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The header lock is taken for a limited time and renewed while its holder runs: a
/// change that runs for longer than the lock lasts keeps it and blocks others to the
/// end; a holder killed with SIGKILL leaves a lock that blocks at first and expires by
/// itself, after which the next change succeeds; a holder stopped for longer than the
/// lock lasts has lost it, and writes nothing when it resumes, another change having
/// run meanwhile. A bad `VMCRYPT_RBD_LOCK_SECONDS` is refused, naming it.
#[test]
fn rbd_header_lock_expires_when_its_holder_is_gone() {
    let sc = Scratch::new();
    let img = TestImage::new("lockexpiry");
    let pw = sc.write("pw", PASS);
    let [pw2, pw3, pw4, pw5] = ["two", "three", "four", "five"].map(|p| sc.write(p, p.as_bytes()));
    format_cheap(&img, "24M", "luks2", &pw);
    let dev = img.filename();
    let add_key = |new: &str| {
        vmcrypt(&[
            "luks",
            "add-key",
            "-q",
            "--key-file",
            &pw,
            &dev,
            new,
            "--iter-time",
            "10",
            "--pbkdf-memory",
            "32768",
        ])
    };

    // A live holder, for twice the lock's 3 s: renewed, it still blocks, then succeeds.
    let live = spawn_add_key(&dev, &pw, &pw2, "6000");
    await_header_lock(&img);
    std::thread::sleep(std::time::Duration::from_secs(5));
    add_key(&pw3)
        .failed()
        .stderr_has("is being changed elsewhere")
        .stderr_has(&format!("pid {}", live.id()));
    let out = live.wait_with_output().expect("waiting for vmcrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(librbd_loads(&img, "luks2", &pw2), "the long add-key's key");
    assert!(!header_lock_held(&img), "a finished add-key left its lock");

    // Killed with SIGKILL: the lock stays, blocks, and is gone within the 3 s (plus
    // the renewal period) and some slack; then the next change runs.
    let mut killed = spawn_add_key(&dev, &pw, &pw3, "20000");
    await_header_lock(&img);
    killed.kill().expect("SIGKILL");
    let killed_at = std::time::Instant::now();
    killed.wait().expect("reaping vmcrypt");
    assert!(header_lock_held(&img), "the killed holder's lock is left");
    add_key(&pw3)
        .failed()
        .stderr_has("is being changed elsewhere");
    while header_lock_held(&img) {
        assert!(killed_at.elapsed().as_secs() < 12, "the lock never expired");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    add_key(&pw3).ok();
    assert!(librbd_loads(&img, "luks2", &pw3), "added after the expiry");

    // Stopped (SIGSTOP) past the expiry while another change runs: on SIGCONT it fails
    // naming the lost lock and adds nothing.
    let stopped = spawn_add_key(&dev, &pw, &pw4, "3000");
    await_header_lock(&img);
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &stopped.id().to_string()])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    let stopped_at = std::time::Instant::now();
    while add_key(&pw5).code != Some(0) {
        assert!(
            stopped_at.elapsed().as_secs() < 12,
            "the lock never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    signal("-CONT");
    let out = stopped.wait_with_output().expect("waiting for vmcrypt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stopped add-key succeeded");
    assert!(err.contains("lost the LUKS header lock"), "{err}");
    assert!(
        librbd_loads(&img, "luks2", &pw5),
        "the change made meanwhile"
    );
    assert!(
        !librbd_loads(&img, "luks2", &pw4),
        "the stopped add-key's key"
    );
    assert!(!header_lock_held(&img), "a lock is left");

    let bad = run_in_env(
        &["luks", "add-key", "-q", "--key-file", &pw, &dev, &pw4],
        "1",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("VMCRYPT_RBD_LOCK_SECONDS"));
    assert!(
        !librbd_loads(&img, "luks2", &pw4),
        "added with a refused setting"
    );
}

/// Run vmcrypt with `VMCRYPT_RBD_LOCK_SECONDS=seconds`.
fn run_in_env(args: &[&str], seconds: &str) -> std::process::Output {
    std::process::Command::new(VMCRYPT)
        .env("VMCRYPT_RBD_LOCK_SECONDS", seconds)
        .args(args)
        .output()
        .expect("running vmcrypt")
}

/// `vmcrypt luks open` of an rbd image (librbd's layout): the daemon serves it decrypted
/// over NBD, never-written objects as zeros as librbd reads them; `status` names it;
/// what is written through the export, librbd reads; a wrong passphrase or key slot
/// fails `open` itself; `close` stops it.
#[test]
fn luks_open_serves_an_rbd_image() {
    let sc = Scratch::new();
    let img = TestImage::new("open");
    let pw = sc.write("pw", PASS);
    let wrong = sc.write("wrong", b"not the passphrase");
    format_cheap(&img, "24M", "luks2", &pw);
    // librbd writes 1 MiB at 4 MiB of the 8 MiB volume; the rest is never written.
    let data = plaintext(MIB, "librbd wrote");
    let src = sc.write("data", &data);
    librbd(&[
        "write",
        &img.name,
        "luks2",
        &pw,
        &(4 * MIB).to_string(),
        &src,
    ]);
    let mut want = vec![0u8; 8 * MIB];
    want[4 * MIB..5 * MIB].copy_from_slice(&data);

    let (dev, run) = (img.filename(), sc.p("run"));
    let open = |key: &str, extra: &[&str]| {
        let mut a = vec![
            "luks",
            "open",
            "--key-file",
            key,
            "--run-dir",
            &run,
            &dev,
            "rbd0",
        ];
        a.extend_from_slice(extra);
        vmcrypt(&a)
    };
    open(&wrong, &[]).code_is(2);
    open(&pw, &["--key-slot", "1"]).failed();
    open(&pw, &[]).ok();
    let st = vmcrypt(&["luks", "status", "rbd0", "--run-dir", &run]).ok();
    for line in [
        "type:    LUKS2",
        &format!("device:  {dev}"),
        "sector size:  4096",
        "offset:  32768 sectors",
        "size:    16384 sectors",
        "mode:    read/write",
    ] {
        assert!(
            st.stdout_str().contains(line),
            "status lacks {line:?}\n{}",
            st.describe()
        );
    }
    let uri = format!("nbd+unix:///?socket={run}/rbd0.sock");
    let back = sc.p("back");
    tool("nbdcopy", &[&uri, &back]).ok();
    assert_same_bytes("served by luks open", &sc.read("back"), &want);
    let patch = plaintext(64 * 1024, "through the export");
    let patch_file = sc.write("patch", &patch);
    tool("nbdcopy", &[&patch_file, &uri]).ok();
    want[..patch.len()].copy_from_slice(&patch);
    vmcrypt(&["luks", "close", "rbd0", "--run-dir", &run]).ok();
    vmcrypt(&["luks", "status", "rbd0", "--run-dir", &run]).code_is(4);
    assert_same_bytes(
        "librbd reads what the export wrote",
        &librbd_read(&img, "luks2", &pw),
        &want,
    );
}

/// `vmcrypt luks format` of an rbd image writes librbd's layout (as `rbd encryption
/// format`): librbd loads it, LUKS1 and LUKS2. Options that layout fixes are refused
/// before anything is written.
#[test]
fn luks_format_of_an_rbd_image_loads_in_librbd() {
    let sc = Scratch::new();
    let pw = sc.write("pw", PASS);
    let pw2 = sc.write("pw2", b"another passphrase");
    for (version, sector) in [("luks1", "512"), ("luks2", "4096")] {
        let img = TestImage::new(&format!("fmt-{version}"));
        assert!(
            rbd_cli(&["create", "--size", "24M", &img.path()])
                .status
                .success()
        );
        let dev = img.filename();
        let format = |extra: &[&str], key: &str| {
            let mut a = vec![
                "luks",
                "format",
                "-q",
                "--type",
                version,
                "--iter-time",
                "10",
            ];
            a.extend_from_slice(&["--pbkdf-memory", "32768"]);
            a.extend_from_slice(extra);
            a.extend_from_slice(&[&dev, key]);
            vmcrypt(&a)
        };
        format(&["--sector-size", sector], &pw).ok();
        assert!(
            librbd_loads(&img, version, &pw),
            "{version}: librbd loads it"
        );
        let plain = plaintext(MIB, version);
        let src = sc.write("plain", &plain);
        librbd(&["write", &img.name, version, &pw, "0", &src]);
        let fmt = if version == "luks1" { "luks" } else { "luks2" };
        let back = vmcrypt_read(&sc, &img, &pw, fmt, "back");
        assert_same_bytes("vmcrypt reads what librbd wrote", &back[..MIB], &plain);
        for (bad, names) in [
            (&["--sector-size", "1024"][..], "--sector-size 1024"),
            (&["--cipher", "aes-cbc-essiv:sha256"][..], "--cipher"),
            (&["--key-size", "128"][..], "--key-size 128"),
            (&["--offset", "4096"][..], "--offset"),
        ] {
            format(bad, &pw2)
                .failed()
                .stderr_has(names)
                .stderr_has("librbd");
        }
        assert!(
            librbd_loads(&img, version, &pw),
            "{version}: refused formats wrote nothing"
        );
    }
}
