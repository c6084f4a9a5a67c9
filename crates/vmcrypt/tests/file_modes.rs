//! Files that hold key slots are created owner-only, as cryptsetup creates them: header
//! backups 0400 (cryptsetup's `luksHeaderBackup`), detached headers and images with a
//! LUKS header 0600 (cryptsetup's `luksFormat --header` on a new file). Each mode is
//! compared with what the real cryptsetup makes in the same run where it makes one.
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

/// The permission bits of `path`.
fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn header_backups_are_owner_read_only_like_cryptsetups() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let img = sc.sparse("a.img", 4 << 20);
    cs_format(&sc, "pw", &img, &[]);
    let (vb, cb) = (sc.p("vm.backup"), sc.p("cs.backup"));
    vmcrypt(&["luks", "header-backup", &img, "--header-backup-file", &vb]).ok();
    cryptsetup(&["luksHeaderBackup", &img, "--header-backup-file", &cb]).ok();
    assert_eq!(mode(&cb), 0o400, "cryptsetup's backup mode");
    assert_eq!(
        mode(&vb),
        mode(&cb),
        "vmcrypt's backup mode vs cryptsetup's"
    );
}

#[test]
fn detached_headers_are_owner_only_like_cryptsetups() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let data = sc.sparse("data.img", 8 << 20);
    let cs_hdr = sc.p("cs.hdr");
    let kf = sc.p("pw");
    cryptsetup(&[
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        &kf,
        "--header",
        &cs_hdr,
        &data,
    ])
    .ok();
    assert_eq!(mode(&cs_hdr), 0o600, "cryptsetup's detached header mode");
    let obj = sc.secret("s0", "pw");
    for (fmt, name) in [("luks", "v1.hdr"), ("luks2", "v2.hdr")] {
        let hdr = sc.p(name);
        vmcrypt(&[
            "create",
            "--object",
            &obj,
            "-f",
            fmt,
            "-o",
            "key-secret=s0,iter-time=10,detached-header=on",
            &hdr,
            "1M",
        ])
        .ok();
        assert_eq!(mode(&hdr), mode(&cs_hdr), "{fmt} detached header mode");
    }
}

#[test]
fn images_with_a_luks_header_are_owner_only_and_plain_ones_are_not() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let obj = sc.secret("s0", "pw");
    for (fmt, opts, name) in [
        ("luks", "key-secret=s0,iter-time=10", "a.luks"),
        ("luks2", "key-secret=s0,iter-time=10", "a.luks2"),
        (
            "qcow2",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            "a.qcow2",
        ),
    ] {
        let img = sc.p(name);
        vmcrypt(&[
            "create", "--object", &obj, "-f", fmt, "-o", opts, &img, "1M",
        ])
        .ok();
        assert_eq!(mode(&img) & 0o077, 0, "{fmt}: group/other bits set");
    }
    // A plain image holds no key material: it keeps the usual mode (umask permitting).
    let plain = sc.p("plain.qcow2");
    vmcrypt(&["create", "-f", "qcow2", &plain, "1M"]).ok();
    let want = std::fs::File::create(sc.path("umask-probe"))
        .and_then(|f| f.metadata())
        .map(|m| m.permissions().mode() & 0o777)
        .expect("probing the umask");
    assert_eq!(mode(&plain), want, "plain qcow2 mode follows the umask");
}
