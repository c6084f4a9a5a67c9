//! Command-line behaviour checked against the real tools: `info` matches `qemu-img
//! info`, `luks dump`/`uuid`/`is-luks` match cryptsetup, exit codes (1 usage, 2 wrong
//! key, non-zero for bad headers), messages, and that a refused operation on a corrupt
//! image leaves the file byte-identical.
mod common;

use common::*;
use serde_json::Value;

fn vector1() -> String {
    shared("vectors/qemu/luks1-aes256-xts-plain64-sha256.luks")
}

/// Remove every "actual-size" (allocation depends on the filesystem, not the tool).
fn strip_actual_size(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("actual-size");
            m.values_mut().for_each(strip_actual_size);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_actual_size),
        _ => {}
    }
}

/// Sort every "children" array by name (QEMU lists a detached header before the file).
fn sort_children(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(c)) = m.get_mut("children") {
                c.sort_by_key(|x| x["name"].as_str().unwrap_or_default().to_string());
            }
            m.values_mut().for_each(sort_children);
        }
        Value::Array(a) => a.iter_mut().for_each(sort_children),
        _ => {}
    }
}

#[test]
fn info_json_matches_qemu_img() {
    let img = vector1();
    let mut ours = vmcrypt(&["info", "--output=json", &img]).ok().json();
    let mut theirs = qemu_img(&["info", "--output=json", &img]).ok().json();
    strip_actual_size(&mut ours);
    strip_actual_size(&mut theirs);
    assert_eq!(
        ours,
        theirs,
        "vmcrypt info JSON differs from qemu-img's:\nours:\n{}\ntheirs:\n{}",
        serde_json::to_string_pretty(&ours).unwrap(),
        serde_json::to_string_pretty(&theirs).unwrap()
    );
}

#[test]
fn info_json_matches_qemu_img_detached() {
    let v = shared("vectors/qemu");
    let opts = format!(
        "driver=luks,file.filename={v}/luks1-detached.data,header.filename={v}/luks1-detached.hdr"
    );
    let mut ours = vmcrypt(&["info", "--output=json", "--image-opts", &opts])
        .ok()
        .json();
    let mut theirs = qemu_img(&["info", "--output=json", "--image-opts", &opts])
        .ok()
        .json();
    for v in [&mut ours, &mut theirs] {
        strip_actual_size(v);
        sort_children(v);
    }
    assert_eq!(
        ours,
        theirs,
        "ours:\n{}\ntheirs:\n{}",
        serde_json::to_string_pretty(&ours).unwrap(),
        serde_json::to_string_pretty(&theirs).unwrap()
    );
}

#[test]
fn info_human_matches_qemu_img() {
    let img = vector1();
    let ours = vmcrypt(&["info", &img]).ok().stdout_str();
    let theirs = qemu_img(&["info", &img]).ok().stdout_str();
    let ours_lines: Vec<&str> = ours.lines().collect();
    let theirs_lines: Vec<&str> = theirs.lines().collect();
    for (i, (a, b)) in ours_lines.iter().zip(&theirs_lines).enumerate() {
        assert_eq!(a, b, "line {i} differs\nours:\n{ours}\ntheirs:\n{theirs}");
    }
    assert_eq!(
        ours_lines.len(),
        theirs_lines.len(),
        "ours:\n{ours}\ntheirs:\n{theirs}"
    );
}

#[test]
fn luks_dump_matches_cryptsetup() {
    for name in [
        "luks1-aes256-xts-plain64-sha256.luks",
        "luks1-aes128-cbc-essiv_sha256-hsha1.luks",
        "luks1-multislot-aes256-xts.luks",
    ] {
        let img = shared(&format!("vectors/qemu/{name}"));
        let ours = vmcrypt(&["luks", "dump", &img]).ok().stdout_str();
        let theirs = cryptsetup(&["luksDump", &img]).ok().stdout_str();
        assert_eq!(
            ours, theirs,
            "luks dump of {name} differs from cryptsetup luksDump"
        );
    }
}

#[test]
fn uuid_and_is_luks_match_cryptsetup() {
    let img = vector1();
    let ours = vmcrypt(&["luks", "uuid", &img]).ok().stdout_str();
    let theirs = cryptsetup(&["luksUUID", &img]).ok().stdout_str();
    assert_eq!(ours.trim(), theirs.trim());
    assert_eq!(ours.trim(), "c5efe19d-64cf-4efc-b575-7a09998a05cf");
    vmcrypt(&["luks", "is-luks", &img]).ok();
    cryptsetup(&["isLuks", &img]).ok();

    let sc = Scratch::new();
    let raw = sc.write("plain.raw", &plaintext(64 * 1024, "not luks"));
    vmcrypt(&["luks", "is-luks", &raw]).failed();
    cryptsetup(&["isLuks", &raw]).failed();

    // Setting a UUID with vmcrypt: cryptsetup reads it back.
    let copy = sc.write("copy.luks", &read(img.as_ref()));
    let new = "0badc0de-1234-4321-8765-0123456789ab";
    vmcrypt(&["luks", "uuid", "--uuid", new, &copy]).ok();
    let got = cryptsetup(&["luksUUID", &copy]).ok().stdout_str();
    assert_eq!(got.trim(), new);
}

#[test]
fn wrong_passphrase_exit_code_2() {
    let sc = Scratch::new();
    sc.write("wrong", WRONG);
    let img = sc.write("v.luks", &read(vector1().as_ref()));
    let before = sha256_file(img.as_ref());
    vm_test_key(&sc, "wrong", &img, &[])
        .code_is(2)
        .stderr_has("no key available");
    luks_to_raw(vmcrypt, &sc, "wrong", &img, "out.raw")
        .code_is(2)
        .stderr_has("passphrase");
    vmcrypt_add_key(&sc, "wrong", &img, "wrong", &[]).code_is(2);
    vmcrypt(&[
        "luks",
        "dump",
        "--dump-volume-key",
        "--key-file",
        &sc.p("wrong"),
        &img,
    ])
    .code_is(2);
    assert_eq!(
        before,
        sha256_file(img.as_ref()),
        "a refused operation changed the image"
    );
    // A right passphrase on the wrong slot is refused too.
    sc.write("pw", b"vec-aes256-xts");
    vm_test_key(&sc, "pw", &img, &["--key-slot", "1"]).code_is(2);
    vm_test_key(&sc, "pw", &img, &["--key-slot", "0"]).ok();
}

/// Big-endian u32 write at `off`.
fn put_be32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// Ways to damage a LUKS1 image, with a word the error message must contain.
fn corruptions(orig: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    let mut v = Vec::new();
    v.push((
        "truncated to 300 bytes",
        orig[..300].to_vec(),
        &["small", "truncated"][..],
    ));
    v.push((
        "truncated inside the key material",
        orig[..100 * 1024].to_vec(),
        &["small", "truncated"][..],
    ));
    let mut b = orig.to_vec();
    b[0] = b'X';
    v.push(("magic destroyed", b, &["not a luks"][..]));
    let mut b = orig.to_vec();
    put_be32(&mut b, 208 + 44, 3999);
    v.push(("slot 0 stripes 3999", b, &["stripes"][..]));
    let mut b = orig.to_vec();
    put_be32(&mut b, 108, 0);
    v.push(("key_bytes 0", b, &["key size", "key_bytes"][..]));
    let mut b = orig.to_vec();
    put_be32(&mut b, 208 + 48 + 40, 8); // slot 1 material on top of slot 0's
    v.push(("slot 1 overlaps slot 0", b, &["overlap"][..]));
    let mut b = orig.to_vec();
    b[6..8].copy_from_slice(&7u16.to_be_bytes());
    v.push(("version 7", b, &["version"][..]));
    v
}

#[test]
fn corrupt_headers_refused_and_left_untouched() {
    let sc = Scratch::new();
    sc.write("pw", b"vec-aes256-xts");
    sc.write("pw2", PASS2);
    sc.write("plain.raw", &plaintext(1 << 20, "never written"));
    let orig = read(vector1().as_ref());
    for (what, bytes, words) in corruptions(&orig) {
        let img = sc.write("bad.luks", &bytes);
        let before = sha256_file(img.as_ref());
        let runs = [
            vmcrypt_add_key(&sc, "pw", &img, "pw2", &[]),
            vmcrypt(&["luks", "kill-slot", "--key-file", &sc.p("pw"), &img, "0"]),
            vmcrypt(&["luks", "kill-slot", "--batch-mode", &img, "0"]),
            vmcrypt(&[
                "convert",
                "-n",
                "--object",
                &sc.secret("s0", "pw"),
                "-f",
                "raw",
                &sc.p("plain.raw"),
                "--target-image-opts",
                &luks_opts("s0", &img, None),
            ]),
        ];
        for out in runs {
            assert!(
                matches!(out.code, Some(c) if c != 0),
                "[{what}] should fail\n{}",
                out.describe()
            );
            let err = out.stderr.to_lowercase();
            assert!(
                words.iter().any(|w| err.contains(w)),
                "[{what}] message should name the problem (one of {words:?})\n{}",
                out.describe()
            );
            assert_eq!(
                before,
                sha256_file(img.as_ref()),
                "[{what}] the refused command changed the file\n{}",
                out.describe()
            );
        }
        // cryptsetup agrees these are not usable LUKS1 devices.
        cs_test_pass(&sc, "pw", &img, &[]).failed();
    }
}

#[test]
fn usage_errors_exit_1() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    let img = sc.p("x.luks");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["convert"],
        vec![
            "create",
            "-f",
            "luks",
            "--object",
            &secret,
            "-o",
            "key-secret=s0,bogus=1",
            &img,
            "1M",
        ],
        vec![
            "create",
            "-f",
            "luks",
            "--object",
            &secret,
            "-o",
            "iterations=1000",
            &img,
            "1M",
        ],
        vec![
            "create",
            "-f",
            "luks",
            "--object",
            &secret,
            "-o",
            "key-secret=s0",
            &img,
        ],
        vec![
            "create",
            "-f",
            "luks",
            "--object",
            &secret,
            "-o",
            "key-secret=s9,iterations=1000",
            &img,
            "1M",
        ],
        vec!["convert", "--target-image-opts", "a", "b"],
        vec!["info", "--output=yaml", "/dev/null"],
        vec!["create", "-f", "raw", &img, "12Q"],
    ];
    for args in cases {
        let out = vmcrypt(&args);
        assert_eq!(
            out.code,
            Some(1),
            "usage error should exit 1\n{}",
            out.describe()
        );
        assert!(
            !out.stderr.trim().is_empty(),
            "no message\n{}",
            out.describe()
        );
    }
    assert!(
        !sc.path("x.luks").exists(),
        "a refused create left a file behind"
    );
}

#[test]
fn option_help_lists_luks_options() {
    let ours = vmcrypt(&["create", "-f", "luks", "-o", "help", "unused.img"])
        .ok()
        .stdout_str();
    // Every option qemu-img lists for luks must be listed by vmcrypt.
    let theirs = qemu_img(&["create", "-f", "luks", "-o", "help"])
        .ok()
        .stdout_str();
    let names: Vec<&str> = theirs
        .lines()
        .filter_map(|l| l.trim().split_once('=').map(|(n, _)| n))
        .filter(|n| !n.is_empty() && !n.contains(' '))
        .collect();
    assert!(
        names.contains(&"cipher-alg"),
        "unexpected qemu-img -o help output:\n{theirs}"
    );
    for n in names {
        assert!(
            ours.lines().any(|l| l.trim_start().starts_with(n)),
            "vmcrypt -o help does not list '{n}'\nours:\n{ours}\nqemu-img:\n{theirs}"
        );
    }
    let convert = vmcrypt(&["convert", "-O", "luks", "-o", "help", "a", "b"])
        .ok()
        .stdout_str();
    assert!(
        convert.contains("key-secret") && convert.contains("iterations"),
        "{convert}"
    );
}

/// Passphrases are never needed on the command line: a key file with trailing newline
/// and binary bytes is used verbatim, as cryptsetup does.
#[test]
fn key_files_are_exact_bytes() {
    let sc = Scratch::new();
    let pass = b"line one\nwith \x00 nul and newline\n";
    sc.write("pw", pass);
    sc.write("plain.raw", &plaintext(64 * 1024, "keyfile"));
    vmcrypt_encrypt(&sc, "pw", "plain.raw", "k.luks", "");
    let img = sc.p("k.luks");
    cs_test_pass(&sc, "pw", &img, &[]).ok();
    sc.write("pw-trimmed", &pass[..pass.len() - 1]);
    cs_test_pass(&sc, "pw-trimmed", &img, &[]).code_is(2);
    vm_test_key(&sc, "pw-trimmed", &img, &[]).code_is(2);
    // `--key-file -` reads all of stdin.
    let out = vmcrypt_stdin(&["luks", "test-key", "--key-file", "-", &img], pass);
    out.ok();
}

/// qemu-img prints the option list without a filename (`qemu-img create -f luks -o
/// help`); vmcrypt must accept the same command line.
#[test]
fn option_help_needs_no_filename() {
    let theirs = qemu_img(&["create", "-f", "luks", "-o", "help"])
        .ok()
        .stdout_str();
    assert!(theirs.contains("key-secret"), "{theirs}");
    let ours = vmcrypt(&["create", "-f", "luks", "-o", "help"])
        .ok()
        .stdout_str();
    assert!(ours.contains("key-secret"), "{ours}");
    let ours = vmcrypt(&["convert", "-O", "luks", "-o", "help"])
        .ok()
        .stdout_str();
    assert!(ours.contains("key-secret"), "{ours}");
}
