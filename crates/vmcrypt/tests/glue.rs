//! VM glue against the real tools: the arguments `vmcrypt qemu-args` prints are handed
//! to `qemu-storage-daemon --object ... --blockdev ...` (the same parsers as
//! qemu-system's `-object`/`-blockdev`), exported over NBD and read back with qemu-img;
//! the bytes must equal the plaintext. `vmcrypt libvirt disk-xml` must parse as XML
//! (python3's minidom) and carry the socket and export name. A missing tool fails.
mod common;
mod glue_support;

use common::*;
use glue_support::*;
use std::process::{Command, Stdio};

const SIZE: usize = 4 << 20;

fn make_luks1(sc: &Scratch, plain: &[u8]) -> String {
    sc.write("pw", PASS);
    sc.write("plain.raw", plain);
    encrypt_raw(
        vmcrypt,
        sc,
        "pw",
        "plain.raw",
        ("luks", "key-secret=s0,iterations=1000"),
        "d.luks",
    )
    .ok();
    sc.p("d.luks")
}

#[test]
fn luks1_args_open_in_qemu() {
    let sc = Scratch::new();
    let plain = plaintext(SIZE, "glue-luks1");
    let img = make_luks1(&sc, &plain);
    let secret = sc.secret("s0", "pw");
    check_both_forms(
        &sc,
        &[
            "--object",
            &secret,
            "--image-opts",
            &luks_opts("s0", &img, None),
        ],
        &plain,
        "LUKS1",
    );
    // A plain filename with a single secret: that secret is the key.
    let printed = vmcrypt(&["qemu-args", "--object", &secret, &img])
        .ok()
        .stdout_str();
    let got = read_through_qsd(&sc, &unquote(&printed), "plainname");
    assert_same_bytes("LUKS1 from a plain filename", &got, &plain);
}

#[test]
fn detached_header_luks1_args_open_in_qemu() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "glue-detached");
    sc.write("plain.raw", &plain);
    let secret = sc.secret("s0", "pw");
    vmcrypt_detached_header(&sc, "pw", "hdr.img");
    let data = sc.sparse("data,1.img", SIZE as u64); // a comma exercises keyval escaping
    let opts = luks_opts("s0", &data, Some(&sc.p("hdr.img")));
    write_into_luks(
        vmcrypt,
        &sc,
        "pw",
        "plain.raw",
        &data,
        Some(&sc.p("hdr.img")),
    );
    check_both_forms(
        &sc,
        &["--object", &secret, "--image-opts", &opts],
        &plain,
        "detached LUKS1",
    );
    // The JSON form also works as qemu-img's json: filename.
    let printed = vmcrypt(&[
        "qemu-args",
        "--output",
        "json",
        "--object",
        &secret,
        "--image-opts",
        &opts,
    ])
    .ok()
    .stdout_str();
    let words = unquote(&printed);
    let json = &words[words.iter().position(|w| w == "-blockdev").unwrap() + 1];
    assert!(json.contains("\"header\""), "{json}");
    qemu_img(&[
        "convert",
        "--object",
        &secret,
        &format!("json:{json}"),
        "-O",
        "raw",
        &sc.p("viajson.raw"),
    ])
    .ok();
    assert_same_bytes("detached LUKS1 via json:", &sc.read("viajson.raw"), &plain);
}

#[test]
fn raw_args_open_in_qemu() {
    let sc = Scratch::new();
    let plain = plaintext(1 << 20, "glue-raw");
    let raw = sc.write("r.raw", &plain);
    let printed = vmcrypt(&["qemu-args", "-f", "raw", &raw]).ok().stdout_str();
    let words = unquote(&printed);
    assert_eq!(words[0], "-blockdev", "{printed}");
    assert_same_bytes("raw", &read_through_qsd(&sc, &words, "raw"), &plain);
}

#[test]
fn luks2_and_inline_secrets_are_refused() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    vmcrypt(&[
        "create",
        "-q",
        "-f",
        "luks2",
        "--object",
        &secret,
        "-o",
        "key-secret=s0,pbkdf=pbkdf2,iterations=1000",
        &sc.p("d.luks2"),
        "20M",
    ])
    .ok();
    vmcrypt(&["qemu-args", "--object", &secret, &sc.p("d.luks2")])
        .code_is(4)
        .stderr_has("vmcrypt serve");
    let img = make_luks1(&sc, &plaintext(1 << 20, "x"));
    vmcrypt(&["qemu-args", "--object", "secret,id=s0,data=hunter2", &img])
        .code_is(1)
        .stderr_has("file=PATH");
    // Without a secret QEMU could not unlock the image.
    vmcrypt(&["qemu-args", &img]).code_is(1);
}

/// Parse `xml` with python3's minidom and return (source name, host socket or name:port,
/// tls, readonly present).
fn parse_disk_xml(xml: &str) -> String {
    let script = r#"
import sys, xml.dom.minidom as m
d = m.parseString(sys.stdin.read()).documentElement
s = d.getElementsByTagName('source')[0]
h = s.getElementsByTagName('host')[0]
print(d.getAttribute('type'), s.getAttribute('protocol'), repr(s.getAttribute('name')),
      repr(h.getAttribute('socket') or h.getAttribute('name') + ':' + h.getAttribute('port')),
      s.getAttribute('tls') or '-', len(d.getElementsByTagName('readonly')))
"#;
    let mut child = Command::new(require_tool("python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not well-formed XML:\n{xml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn disk_xml_parses_and_carries_the_socket_and_export() {
    let xml = vmcrypt(&[
        "libvirt",
        "disk-xml",
        "--socket",
        "/run/vm <0>&'q'.sock",
        "--export",
        "disk \"a\"&b",
        "--read-only",
        "--tls",
    ])
    .ok()
    .stdout_str();
    assert_eq!(
        parse_disk_xml(&xml),
        r#"network nbd 'disk "a"&b' "/run/vm <0>&'q'.sock" yes 1"#
    );
    let xml = vmcrypt(&[
        "libvirt",
        "disk-xml",
        "--host",
        "nbd.example",
        "--port",
        "10810",
        "--target",
        "sdc",
        "--bus",
        "scsi",
    ])
    .ok()
    .stdout_str();
    assert_eq!(
        parse_disk_xml(&xml),
        "network nbd '' 'nbd.example:10810' - 0"
    );
    assert!(xml.contains("<target dev='sdc' bus='scsi'/>"), "{xml}");
    vmcrypt(&["libvirt", "disk-xml", "--export", "x"]).code_is(1);
}

/// qemu-args checks the key QEMU will be given on every layout (issue: a detached header
/// over qcow2 refused a wrong key, the same header over a plain file accepted it): a
/// wrong passphrase exits 2 and prints no arguments, and QEMU itself refuses that key,
/// so the check matches what the VM would do at boot; the right key prints arguments.
#[test]
fn a_wrong_key_is_refused_on_every_layout() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    sc.write("bad", WRONG);
    vmcrypt_detached_header(&sc, "pw", "hdr.img");
    let hdr = sc.p("hdr.img");
    let data = sc.sparse("data.img", SIZE as u64);
    let payload = sc.p("payload.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &payload, &SIZE.to_string()]).ok();
    let plain = make_luks1(&sc, &plaintext(1 << 20, "wrong-key"));
    let layouts = [
        (
            "detached header over a plain file",
            luks_opts("s0", &data, Some(&hdr)),
        ),
        (
            "detached header over qcow2",
            format!(
                "driver=luks,key-secret=s0,header.driver=raw,header.file.filename={hdr},\
                 file.driver=qcow2,file.file.filename={payload}"
            ),
        ),
        ("LUKS1 image", luks_opts("s0", &plain, None)),
    ];
    for (what, opts) in &layouts {
        let args = |key: &str| {
            let secret = sc.secret("s0", key);
            vmcrypt(&["qemu-args", "--object", &secret, "--image-opts", opts])
        };
        let out = args("bad").code_is(2).stderr_has("no key available");
        assert!(
            out.stdout.is_empty(),
            "{what}: printed arguments for a wrong key"
        );
        // QEMU refuses the same key: the check tells now what the VM would at boot.
        let secret = sc.secret("s0", "bad");
        #[rustfmt::skip]
        let q = qemu_img(&[
            "convert", "--object", &secret, "--image-opts", opts, "-O", "raw", &sc.p("q.raw"),
        ]);
        q.failed().stderr_has("Invalid password");
        args("pw").ok().stdout_has("-blockdev");
    }
    // A plain filename with one secret (that secret is the key) is checked too.
    let bad = sc.secret("s0", "bad");
    vmcrypt(&["qemu-args", "--object", &bad, &plain])
        .code_is(2)
        .stderr_has("no key available");
}
