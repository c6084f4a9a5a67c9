//! `vmcrypt secret push` against a real libvirtd: a pushed secret lets libvirt start VMs
//! from a LUKS1 disk and a qcow2+LUKS disk (`<encryption format='luks'>`, opened by
//! QEMU itself, no vmcrypt process in the data path), and the guest prints its marker
//! on the serial port; a wrong pushed value makes QEMU refuse the disk. Refusals (no
//! value, unknown UUID, bad URI, no virsh, a value virsh cannot take), `--ephemeral`,
//! the undo of a half-done push, and that no virsh run sees the value in its argv or
//! environment.
mod common;
mod libvirt_support;

use common::*;
use libvirt_support::*;
use std::path::Path;

/// A LUKS passphrase QEMU accepts: UTF-8 (non-ASCII included), no NUL.
const PASS_TEXT: &[u8] = "libvirt push passphrase \u{e9}".as_bytes();

fn define_in_store(sc: &Scratch, store: &str, uuid: &str, private: bool, volume: &str) {
    let xml = format!(
        "<secret ephemeral='no' private='{}'><uuid>{uuid}</uuid>\
         <description>test disk</description>\
         <usage type='volume'><volume>{volume}</volume></usage></secret>",
        if private { "yes" } else { "no" }
    );
    let f = sc.write(&format!("{uuid}.xml"), xml.as_bytes());
    vmcrypt(&["secret", "define", &f, "--store", store]).ok();
}

fn set_value(store: &str, uuid: &str, file: &str) {
    #[rustfmt::skip]
    vmcrypt(&["secret", "set-value", uuid, "--file", file, "--plain", "--store", store]).ok();
}

fn push(store: &str, uuid: &str, extra: &[&str], env: &[(&str, &str)]) -> Out {
    let mut args = vec![
        "secret",
        "push",
        "--connect",
        libvirt_uri(),
        uuid,
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    vmcrypt_env(&args, env)
}

/// `vmcrypt convert` of `raw` to `out` encrypted with the passphrase in `pw_file`.
fn encrypt(sc: &Scratch, pw_file: &str, raw: &str, out: &str, fmt: &str, opts: &str) {
    let obj = sc.secret("s0", pw_file);
    #[rustfmt::skip]
    vmcrypt(&["convert", "--object", &obj, "-f", "raw", "-O", fmt, "-o", opts, raw, out]).ok();
}

#[test]
fn libvirt_boots_luks1_and_qcow2_luks_disks_from_a_pushed_secret() {
    let uri = libvirt_uri();
    let sc = Scratch::new();
    let store = sc.p("store");
    let marker = unique_name("VMCRYPT-PUSH-OK");
    let boot = make_boot_disk(&sc, "boot.raw", &marker);
    sc.write("pw", PASS_TEXT);
    let luks = sc.p("vm.luks");
    let qcow = sc.p("vm.qcow2");
    encrypt(
        &sc,
        "pw",
        &boot,
        &luks,
        "luks",
        "key-secret=s0,iter-time=10",
    );
    #[rustfmt::skip]
    encrypt(&sc, "pw", &boot, &qcow, "qcow2", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10");
    tool("cryptsetup", &["isLuks", "--type", "luks1", &luks]).ok();

    let uuid = random_uuid();
    let _lv = LvSecret(uuid.clone());
    define_in_store(&sc, &store, &uuid, true, &luks);
    set_value(&store, &uuid, &sc.p("pw"));
    push(&store, &uuid, &[], &[])
        .ok()
        .stdout_has(&format!("Secret {uuid} created in {uri} (private)"));
    // libvirt holds it, private as defined: its value is not handed out.
    virsh(&["secret-dumpxml", &uuid])
        .ok()
        .stdout_has("private='yes'")
        .stdout_has(&format!("<volume>{luks}</volume>"));
    virsh(&["secret-get-value", &uuid])
        .failed()
        .stderr_has("secret is private");

    for (file, format) in [(&luks, "raw"), (&qcow, "qcow2")] {
        let log = sc.p(&format!("serial-{format}.log"));
        let disk = DiskSpec {
            file,
            format,
            secret_uuid: &uuid,
        };
        let dom = Domain::define(&sc, &disk, &log);
        dom.start().ok();
        wait_for_marker(Path::new(&log), &marker, 60);
        // QEMU opens the image itself; no vmcrypt process is in the data path.
        let qemu = dom.qemu_pid();
        let holders = pids_with_open(Path::new(file));
        assert!(
            holders.contains(&qemu),
            "QEMU ({qemu}) does not hold {file}: {holders:?}"
        );
        for p in holders {
            assert!(
                comm(p).starts_with("qemu-system"),
                "{file} is open in {p} ({})",
                comm(p)
            );
        }
        // libvirt hands QEMU the passphrase encrypted, never in its argv.
        let argv = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
        assert!(
            find(&argv, PASS_TEXT).is_none(),
            "passphrase in QEMU's argv"
        );
    }

    // The value really comes from the push: push a wrong one and QEMU refuses the disk.
    let wrong = sc.write("wrong", b"not the passphrase");
    set_value(&store, &uuid, &wrong);
    push(&store, &uuid, &[], &[])
        .ok()
        .stdout_has(&format!("Secret {uuid} updated in {uri} (private)"));
    let log = sc.p("serial-wrong.log");
    let disk = DiskSpec {
        file: &luks,
        format: "raw",
        secret_uuid: &uuid,
    };
    Domain::define(&sc, &disk, &log)
        .start()
        .failed()
        .stderr_has("Invalid password");
}

#[test]
fn push_refusals_ephemeral_undo_and_no_value_on_virsh_command_lines() {
    let uri = libvirt_uri();
    let sc = Scratch::new();
    let store = sc.p("store");
    let uuid = random_uuid();
    let _lv = LvSecret(uuid.clone());
    define_in_store(&sc, &store, &uuid, false, &sc.p("e.img"));
    let no_virsh = [("VMCRYPT_VIRSH", "/nonexistent/virsh")];
    // The store is read first: these fail before libvirt is asked anything.
    push(&store, &uuid, &[], &no_virsh)
        .code_is(1)
        .stderr_has(&format!("secret {uuid}: secret does not have a value"));
    push(&store, &random_uuid(), &[], &no_virsh)
        .code_is(1)
        .stderr_has("no secret with matching uuid");
    let value = "pushed value \u{e9}\u{263a}".as_bytes();
    set_value(&store, &uuid, &sc.write("v", value));
    #[rustfmt::skip]
    let bad = vmcrypt(&["secret", "push", "--connect", "bogus:///x", &uuid, "--store", &store]);
    bad.code_is(3)
        .stderr_has("cannot connect to libvirt at 'bogus:///x'");
    // No libvirtd behind the URI (its socket does not exist).
    let down = "qemu:///system?socket=/nonexistent/libvirt-sock";
    #[rustfmt::skip]
    let bad = vmcrypt(&["secret", "push", "--connect", down, &uuid, "--store", &store]);
    bad.code_is(3)
        .stderr_has(&format!("cannot connect to libvirt at '{down}'"))
        .stderr_has("/nonexistent/libvirt-sock");
    push(&store, &uuid, &[], &no_virsh)
        .code_is(3)
        .stderr_has("libvirt-clients");

    // A virsh that logs its argv and environment, then runs the real one.
    let log = sc.p("virsh.log");
    let real = require_tool("virsh");
    let wrap = format!(
        "#!/bin/sh\n{{ echo \"ARGV $*\"; env; }} >> '{log}'\nexec '{}' \"$@\"\n",
        real.display()
    );
    let wrapper = executable(&sc, "virsh-log", &wrap);
    push(
        &store,
        &uuid,
        &["--ephemeral"],
        &[("VMCRYPT_VIRSH", &wrapper)],
    )
    .ok()
    .stdout_has(&format!("Secret {uuid} created in {uri} (ephemeral)"));
    let b64 = virsh(&["secret-get-value", &uuid]).ok().stdout_str();
    assert_eq!(
        b64.trim(),
        base64(value),
        "libvirt's value is not the stored one"
    );
    virsh(&["secret-dumpxml", &uuid])
        .ok()
        .stdout_has("ephemeral='yes'");
    // Ephemeral: libvirt keeps it in memory only, not in its (unencrypted) files.
    assert!(!Path::new(&format!("/etc/libvirt/secrets/{uuid}.base64")).exists());
    let logged = std::fs::read(&log).unwrap();
    assert!(
        find(&logged, b"ARGV -q -c").is_some(),
        "the wrapper did not run"
    );
    assert!(find(&logged, b"secret-set-value").is_some());
    for needle in [value, base64(value).as_bytes()] {
        assert!(
            find(&logged, needle).is_none(),
            "the value reached virsh's argv or env"
        );
    }
    virsh(&["secret-undefine", &uuid]).ok();

    // A push whose set-value fails undefines the secret it created.
    let fail = format!(
        "#!/bin/sh\nfor a; do [ \"$a\" = secret-set-value ] && {{ echo 'error: injected' >&2; exit 1; }}; done\n\
         exec '{}' \"$@\"\n",
        real.display()
    );
    let failing = executable(&sc, "virsh-fail", &fail);
    push(&store, &uuid, &[], &[("VMCRYPT_VIRSH", &failing)])
        .code_is(3)
        .stderr_has(&format!("cannot set the value of secret {uuid} in libvirt"))
        .stderr_has("injected");
    virsh(&["secret-dumpxml", &uuid]).failed();

    // virsh reads at most 1 KiB: refused before libvirt is touched.
    set_value(&store, &uuid, &sc.write("big", &[b'a'; 1025]));
    push(&store, &uuid, &[], &[])
        .code_is(4)
        .stderr_has("takes at most 1024");
    virsh(&["secret-dumpxml", &uuid]).failed();
    // A value QEMU cannot use as a passphrase is pushed with a warning.
    set_value(&store, &uuid, &sc.write("bin", b"a\0b"));
    push(&store, &uuid, &[], &[])
        .ok()
        .stderr_has("not UTF-8 text without NUL bytes");
}

fn executable(sc: &Scratch, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = sc.write(name, text.as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn base64(bytes: &[u8]) -> String {
    vmcrypt_secrets::base64_encode(bytes).to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
