//! Legacy qcow AES (qcow2 `encrypt.format=aes`, qcow v1) cannot verify a passphrase: a
//! wrong key decrypts to garbage with exit 0, in QEMU too. Every command that opens such
//! an image with a key to read its data (convert, compare, map, serve) warns once per
//! image opened, saying how to check the key; `info` (which reads no data) and `-q` do
//! not; LUKS images, whose keys are verified, never do. Vectors 10 and 11 of
//! shared/vectors/qemu (README.txt) and a qemu-img-made AES base under a LUKS overlay.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;

const AES_SHA: &str = "561e0deb209137ab84c8efbb4bbdbdfb287440919c5f48fddef716e2e94bb8f0";
const WARNING: &str = "uses legacy qcow AES encryption, which cannot verify a passphrase";

fn vector(name: &str) -> String {
    shared(&format!("vectors/qemu/{name}"))
}

/// How often the warning names `image` in `stderr`.
fn warnings_for(stderr: &str, image: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains(WARNING) && l.contains(&format!("'{image}'")))
        .count()
}

/// `vmcrypt convert --object O... --image-opts OPTS -O raw OUT`, which must succeed.
fn convert(objects: &[&str], opts: &str, out: &str) -> Out {
    let mut a = vec!["convert"];
    for o in objects {
        a.extend(["--object", o]);
    }
    a.extend(["--image-opts", opts, "-O", "raw", out]);
    vmcrypt(&a).ok()
}

/// The warning says how to check the key.
fn says_how_to_check(stderr: &str) {
    for hint in [
        "To check the key, convert the image",
        "blkid",
        "encrypt.format=luks",
    ] {
        assert!(stderr.contains(hint), "no '{hint}' in:\n{stderr}");
    }
}

#[test]
fn a_wrong_legacy_aes_key_reads_garbage_with_a_warning() {
    let sc = Scratch::new();
    let img = vector("qcow2-legacy-aes.qcow2");
    sc.write("good", b"0123456789abcdefTRUNCATED");
    sc.write("bad", WRONG);
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    for (key, right) in [("good", true), ("bad", false)] {
        let secret = sc.secret("s0", key);
        let out = sc.p(&format!("{key}.raw"));
        let conv = convert(&[&secret], &opts, &out);
        assert_eq!(warnings_for(&conv.stderr, &img), 1, "{}", conv.stderr);
        says_how_to_check(&conv.stderr);
        assert_eq!(
            sha256_file(sc.path(&format!("{key}.raw")).as_path()) == AES_SHA,
            right
        );

        #[rustfmt::skip]
        let map = vmcrypt(&["map", "--output=json", "--object", &secret, "--image-opts", &opts]).ok();
        assert_eq!(warnings_for(&map.stderr, &img), 1, "{}", map.stderr);

        // compare opens the image once: one warning; -q silences it.
        let plain = sc.p("good.raw");
        let cmp = |quiet: bool| {
            let mut a = vec!["compare"];
            if quiet {
                a.push("-q");
            }
            let first = format!(
                "json:{{\"driver\":\"qcow2\",\"file\":\"{img}\",\"encrypt\":{{\"key-secret\":\"s0\"}}}}"
            );
            a.extend(["--object", &secret, "-F", "raw", &first, &plain]);
            vmcrypt(&a)
        };
        let c = cmp(false).code_is(if right { 0 } else { 1 });
        assert_eq!(warnings_for(&c.stderr, &img), 1, "{}", c.stderr);
        let c = cmp(true);
        assert!(!c.stderr.contains(WARNING), "-q: {}", c.stderr);
    }
    // info reads no data: nothing to warn about, even with a key.
    let secret = sc.secret("s0", "bad");
    let info = vmcrypt(&["info", "--object", &secret, "--image-opts", &opts]).ok();
    assert!(!info.stderr.contains(WARNING), "{}", info.stderr);
}

#[test]
fn qcow_v1_aes_warns_and_serve_warns() {
    let sc = Scratch::new();
    let img = vector("qcow1-legacy-aes.qcow");
    sc.write("pw", b"qcow1-pass");
    let secret = sc.secret("s0", "pw");
    let opts = format!("driver=qcow,file.filename={img},encrypt.key-secret=s0");
    let conv = convert(&[&secret], &opts, &sc.p("o.raw"));
    assert_eq!(warnings_for(&conv.stderr, &img), 1, "{}", conv.stderr);

    let (server, sock) = Served::unix(
        &sc,
        &["--read-only", "--object", &secret, "--image-opts", &opts],
    );
    let uri = format!("nbd+unix:///?socket={sock}");
    qemu_img(&["convert", "-f", "raw", &uri, "-O", "raw", &sc.p("nbd.raw")]).ok();
    let log = server.stop();
    assert_eq!(warnings_for(&log, &img), 1, "{log}");
    assert_eq!(sc.read("nbd.raw"), sc.read("o.raw"));
}

/// A LUKS-encrypted overlay (key verified: no warning for it) over a qemu-img-made AES
/// base: the warning names the base, once.
#[test]
fn an_aes_backing_layer_is_named() {
    let sc = Scratch::new();
    sc.write("pb", b"base key");
    sc.write("pt", PASS);
    let (sb, st) = (sc.secret("sb", "pb"), sc.secret("st", "pt"));
    let base = sc.p("base.qcow2");
    #[rustfmt::skip]
    qemu_img(&["create", "-q", "-f", "qcow2", "--object", &sb,
               "-o", "encrypt.format=aes,encrypt.key-secret=sb", &base, "1M"]).ok();
    let top = sc.p("top.qcow2");
    #[rustfmt::skip]
    qemu_img(&["create", "-q", "-f", "qcow2", "--object", &st, "-b", &base, "-F", "qcow2",
               "-o", "encrypt.format=luks,encrypt.key-secret=st,encrypt.iter-time=10", &top]).ok();
    let opts = format!(
        "driver=qcow2,file.filename={top},encrypt.key-secret=st,backing.encrypt.key-secret=sb"
    );
    let conv = convert(&[&sb, &st], &opts, &sc.p("o.raw"));
    assert_eq!(warnings_for(&conv.stderr, &base), 1, "{}", conv.stderr);
    assert_eq!(warnings_for(&conv.stderr, &top), 0, "{}", conv.stderr);
    // A LUKS-only chain: no warning.
    let luks = vector("qcow2-luks-base.qcow2");
    sc.write("bp", b"base-pass");
    let s = sc.secret("s0", "bp");
    let o = format!("driver=qcow2,file.filename={luks},encrypt.key-secret=s0");
    let conv = convert(&[&s], &o, &sc.p("l.raw"));
    assert!(!conv.stderr.contains(WARNING), "{}", conv.stderr);
}
