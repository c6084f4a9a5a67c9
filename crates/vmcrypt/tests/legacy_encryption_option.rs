//! `-o encryption=on` / `-o encryption` (the old qemu-img form for legacy AES qcow2) is
//! refused before anything is printed or created, naming `encrypt.format=luks`.
//! qemu-img itself announces the image first, then fails.
mod common;
use common::*;

#[test]
fn legacy_encryption_option_is_refused_before_formatting() {
    let sc = Scratch::new();
    for (i, o) in [
        "encryption=on",
        "encryption",
        "encryption=on,cluster_size=4096",
    ]
    .iter()
    .enumerate()
    {
        let img = sc.p(&format!("x{i}.qcow2"));
        let out = vmcrypt(&["create", "-f", "qcow2", "-o", o, &img, "1M"])
            .code_is(1)
            .stderr_has("encrypt.format=luks");
        assert!(
            out.stdout.is_empty(),
            "{o}: printed before refusing: {}",
            out.stdout_str()
        );
        assert!(
            !sc.path(&format!("x{i}.qcow2")).exists(),
            "{o}: file created"
        );
    }
    // The same through convert.
    let src = sc.write("src.raw", &[0u8; 4096]);
    let dst = sc.p("c.qcow2");
    vmcrypt(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "encryption=on",
        &src,
        &dst,
    ])
    .code_is(1)
    .stderr_has("encrypt.format=luks");
    assert!(!sc.path("c.qcow2").exists(), "convert created the target");
}

/// The "Formatting" line names each nested `encrypt.*` option as qemu-img's does (it
/// printed `encrypt=`).
#[test]
fn formatting_line_names_each_encrypt_option_like_qemu_img() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let obj = sc.secret("s0", "pw");
    let o = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=twofish-256,encrypt.iter-time=10";
    let (q, v) = (sc.p("q.qcow2"), sc.p("v.qcow2"));
    let theirs = qemu_img(&["create", "--object", &obj, "-f", "qcow2", "-o", o, &q, "1M"]).ok();
    let ours = vmcrypt(&["create", "--object", &obj, "-f", "qcow2", "-o", o, &v, "1M"]).ok();
    let encrypt_tokens = |s: String| -> Vec<String> {
        s.split_whitespace()
            .filter(|t| t.starts_with("encrypt"))
            .map(str::to_string)
            .collect()
    };
    let want = encrypt_tokens(theirs.stdout_str());
    assert_eq!(want.len(), 4, "qemu-img's line: {}", theirs.stdout_str());
    assert_eq!(
        encrypt_tokens(ours.stdout_str()),
        want,
        "{}",
        ours.stdout_str()
    );
}
