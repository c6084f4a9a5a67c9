//! `vmcrypt secret ...` end to end: libvirt's secret commands over the encrypted store
//! (round trip, virsh's output shapes, file modes, private and ephemeral secrets,
//! tampering and bad input refused without writing), and `--object secret` naming a
//! stored secret to open a LUKS image QEMU made.
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run vmcrypt with the store at `store` (through `$VMCRYPT_SECRET_STORE`, as `--object`
/// reads it) and `input` on stdin.
fn vm(store: &str, args: &[&str], input: &[u8]) -> Out {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmcrypt"))
        .args(args)
        .env("VMCRYPT_SECRET_STORE", store)
        .env_remove("VMCRYPT_MASTER_KEY_FILE")
        .env_remove("VMCRYPT_MASTER_KEY_PASSPHRASE_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        cmdline: format!("vmcrypt {}", args.join(" ")),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `vmcrypt convert --object OBJECT --image-opts OPTS -O raw OUT` against `store`.
fn convert(store: &str, object: &str, opts: &str, out: &str) -> Out {
    #[rustfmt::skip]
    let args = ["convert", "--object", object, "--image-opts", opts, "-O", "raw", out];
    vm(store, &args, b"")
}

const UUID: &str = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";

fn secret_xml(uuid: Option<&str>, private: bool, volume: &str) -> String {
    format!(
        "<secret ephemeral='no' private='{}'>\n  {}<description>LUKS passphrase</description>\n  \
         <usage type='volume'>\n    <volume>{volume}</volume>\n  </usage>\n</secret>\n",
        if private { "yes" } else { "no" },
        uuid.map(|u| format!("<uuid>{u}</uuid>\n  "))
            .unwrap_or_default()
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn virsh_like_round_trip() {
    let sc = Scratch::new();
    let store = sc.p("store");
    let xml = sc.write(
        "s.xml",
        secret_xml(Some(UUID), false, "/images/a.img").as_bytes(),
    );
    vm(&store, &["secret", "define", &xml], b"")
        .ok()
        .stdout_has(&format!("Secret {UUID} created"));
    // virsh reads --file as base64 unless --plain; stdin the same.
    vm(&store, &["secret", "set-value", UUID], b"aHVudGVyMg==\n").ok();
    let got = vm(&store, &["secret", "get-value", UUID], b"").ok();
    assert_eq!(got.stdout_str(), "aHVudGVyMg==\n");
    let pw = sc.write("pw", b"raw \x00 bytes\n");
    vm(
        &store,
        &["secret", "set-value", UUID, "--file", &pw, "--plain"],
        b"",
    )
    .ok();
    let got = vm(&store, &["secret", "get-value", UUID, "--plain"], b"").ok();
    assert_eq!(got.stdout, b"raw \x00 bytes\n");
    // file modes
    assert_eq!(mode(Path::new(&store)), 0o700);
    for f in [
        format!("{UUID}.xml"),
        format!("{UUID}.value"),
        "master.key".into(),
    ] {
        assert_eq!(mode(&sc.path("store").join(&f)), 0o600, "{f}");
    }
    // list: virsh's table, and JSON
    let l = vm(&store, &["secret", "list"], b"").ok().stdout_str();
    let lines: Vec<&str> = l.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["UUID", "Usage"]
    );
    assert!(
        lines[1].chars().all(|c| c == '-') && lines[1].len() > 40,
        "{l}"
    );
    assert_eq!(lines[2], format!(" {UUID}   volume /images/a.img"));
    let j = vm(&store, &["secret", "list", "--json"], b"").ok().json();
    assert_eq!(j[0]["uuid"], UUID);
    assert_eq!(j[0]["usage"]["type"], "volume");
    assert_eq!(j[0]["usage"]["id"], "/images/a.img");
    assert_eq!(j[0]["has_value"], true);
    // dumpxml: libvirt's layout
    let d = vm(&store, &["secret", "dumpxml", UUID], b"")
        .ok()
        .stdout_str();
    assert_eq!(
        d,
        secret_xml(None, false, "/images/a.img").replace(
            "<secret ephemeral='no' private='no'>\n  ",
            &format!("<secret ephemeral='no' private='no'>\n  <uuid>{UUID}</uuid>\n  "),
        )
    );
    vm(&store, &["secret", "undefine", UUID], b"").ok();
    vm(&store, &["secret", "get-value", UUID], b"")
        .code_is(1)
        .stderr_has("no secret with matching uuid");
    assert!(!sc.path("store").join(format!("{UUID}.value")).exists());
}

#[test]
fn missing_uuid_generated() {
    let sc = Scratch::new();
    let store = sc.p("store");
    let xml = sc.write("s.xml", secret_xml(None, false, "/x").as_bytes());
    let out = vm(&store, &["secret", "define", &xml], b"")
        .ok()
        .stdout_str();
    let uuid = out
        .trim()
        .strip_prefix("Secret ")
        .unwrap()
        .strip_suffix(" created")
        .unwrap();
    assert_eq!(uuid.len(), 36);
    vm(&store, &["secret", "dumpxml", uuid], b"")
        .ok()
        .stdout_has(uuid);
    // --store overrides $VMCRYPT_SECRET_STORE
    let other = sc.p("other");
    vm(&store, &["secret", "define", &xml, "--store", &other], b"").ok();
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        2,
        "xml and .lock"
    );
    vm(
        &store,
        &["secret", "list", "--json", "--store", &other],
        b"",
    )
    .ok()
    .json()[0]["uuid"]
        .as_str()
        .filter(|u| u.len() == 36)
        .expect("a generated uuid in the other store");
}

#[test]
fn private_ephemeral_and_bad_input() {
    let sc = Scratch::new();
    let store = sc.p("store");
    let xml = sc.write("p.xml", secret_xml(Some(UUID), true, "/p").as_bytes());
    vm(&store, &["secret", "define", &xml], b"").ok();
    vm(
        &store,
        &["secret", "set-value", UUID, "--plain"],
        b"topsecret",
    )
    .ok();
    let out = vm(&store, &["secret", "get-value", UUID], b"")
        .failed()
        .stderr_has("secret is private");
    assert!(out.stdout.is_empty());
    // ephemeral: refused, nothing written
    let eph = sc.write(
        "e.xml",
        b"<secret ephemeral='yes'><uuid>11111111-2222-4333-8444-555555555555</uuid></secret>",
    );
    vm(&store, &["secret", "define", &eph], b"")
        .failed()
        .stderr_has("ephemeral");
    // bad XML, bad base64, unknown secret: clear errors, no write
    let before = std::fs::read_dir(&store).unwrap().count();
    let bad = sc.write("b.xml", b"<secret><usage type='disk'/></secret>");
    vm(&store, &["secret", "define", &bad], b"")
        .code_is(1)
        .stderr_has("unknown secret usage type 'disk'");
    vm(&store, &["secret", "set-value", UUID], b"not base64!!")
        .code_is(1)
        .stderr_has("base64");
    vm(
        &store,
        &[
            "secret",
            "set-value",
            "11111111-2222-4333-8444-555555555555",
            "--plain",
        ],
        b"x",
    )
    .code_is(1)
    .stderr_has("no secret with matching uuid");
    vm(&store, &["secret", "get-value", "not-a-uuid"], b"")
        .code_is(1)
        .stderr_has("malformed uuid");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), before);
}

#[test]
fn tampered_and_swapped_values_refused() {
    let sc = Scratch::new();
    let store = sc.p("store");
    let other = "11111111-2222-4333-8444-555555555555";
    for (u, vol) in [(UUID, "/a"), (other, "/b")] {
        let xml = sc.write("s.xml", secret_xml(Some(u), false, vol).as_bytes());
        vm(&store, &["secret", "define", &xml], b"").ok();
        vm(
            &store,
            &["secret", "set-value", u, "--plain"],
            vol.as_bytes(),
        )
        .ok();
    }
    let pa = sc.path("store").join(format!("{UUID}.value"));
    let pb = sc.path("store").join(format!("{other}.value"));
    let (va, vb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    // the other secret's value file copied over this one's (the other stays intact)
    std::fs::write(&pa, &vb).unwrap();
    let got = vm(&store, &["secret", "get-value", other, "--plain"], b"").ok();
    assert_eq!(got.stdout, b"/b");
    vm(&store, &["secret", "get-value", UUID], b"").code_is(2).stderr_has(&format!(
        "secret {UUID}: sealed value does not authenticate (tampered, or sealed under another master key)"
    ));
    let mut flipped = va.clone();
    flipped[40] ^= 1;
    std::fs::write(&pa, &flipped).unwrap();
    vm(&store, &["secret", "get-value", UUID], b"")
        .code_is(2)
        .stderr_has("does not authenticate");
    // truncated: by one byte (the tag no longer authenticates) and to less than a
    // header, refused by get-value and where an image would use the value
    std::fs::write(&pa, &va[..va.len() - 1]).unwrap();
    vm(&store, &["secret", "get-value", UUID], b"")
        .code_is(2)
        .stderr_has("does not authenticate");
    std::fs::write(&pa, &va[..20]).unwrap();
    vm(&store, &["secret", "get-value", UUID], b"")
        .code_is(4)
        .stderr_has(&format!("secret {UUID}: sealed value is truncated"));
    let obj = format!("secret,id=s0,store-uuid={UUID}");
    let opts = "driver=luks,key-secret=s0,file.filename=/nonexistent.luks";
    convert(&store, &obj, opts, &sc.p("never.raw"))
        .failed()
        .stderr_has("sealed value is truncated");
    assert!(!sc.path("never.raw").exists());
    // a leftover temp file from an interrupted write is ignored; the old value reads
    std::fs::write(&pa, &va).unwrap();
    sc.write(&format!("store/.{UUID}.value.tmp.999"), b"VMCSEAL1 partial");
    let got = vm(&store, &["secret", "get-value", UUID, "--plain"], b"").ok();
    assert_eq!(got.stdout, b"/a");
    // another master key: refused
    let key = sc.write("k", &[5u8; 32]);
    vm(
        &store,
        &["secret", "get-value", UUID, "--master-key-file", &key],
        b"",
    )
    .code_is(2)
    .stderr_has("does not authenticate");
}

/// A LUKS image made by qemu-img with data written by qemu-io, opened through a stored
/// passphrase by UUID and by volume usage; the bytes match qemu-img's own read.
#[test]
fn object_store_reference_opens_a_real_image() {
    let sc = Scratch::new();
    let store = sc.p("store");
    let pw = sc.write("pw", b"store-pass");
    let img = sc.p("d.luks");
    let obj = sc.secret("s0", "pw");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        &obj,
        "-f",
        "luks",
        "-o",
        "key-secret=s0,iter-time=10",
        &img,
        "4M",
    ])
    .ok();
    let opts = format!("driver=luks,key-secret=s0,file.filename={img}");
    qemu_io(&[
        "--object",
        &obj,
        "--image-opts",
        &opts,
        "-c",
        "write -P 0x5a 4096 65536",
    ])
    .ok();
    qemu_convert_to_raw(&obj, &opts, &sc.p("want.raw")).ok();
    let xml = sc.write("s.xml", secret_xml(Some(UUID), true, &img).as_bytes());
    vm(&store, &["secret", "define", &xml], b"").ok();
    vm(
        &store,
        &["secret", "set-value", UUID, "--file", &pw, "--plain"],
        b"",
    )
    .ok();
    for (i, r) in [
        format!("store-uuid={UUID}"),
        format!("store-usage=volume:{img}"),
    ]
    .iter()
    .enumerate()
    {
        let out = sc.p(&format!("got{i}.raw"));
        let o = format!("secret,id=s0,{r}");
        convert(&store, &o, &opts, &out).ok();
        assert_same_bytes(r, &read(Path::new(&out)), &sc.read("want.raw"));
        vm(
            &store,
            &["info", "--object", &o, "--image-opts", &opts],
            b"",
        )
        .ok()
        .stdout_has("file format: luks");
    }
    assert_eq!(sc.read("want.raw")[4096], 0x5a);
    // a wrong stored passphrase is a wrong key; an unknown reference names the secret
    vm(&store, &["secret", "set-value", UUID, "--plain"], b"wrong").ok();
    let o = format!("secret,id=s0,store-uuid={UUID}");
    convert(&store, &o, &opts, &sc.p("x.raw")).code_is(2);
    let o = "secret,id=s0,store-usage=volume:/nonexistent.img";
    convert(&store, o, &opts, &sc.p("y.raw"))
        .code_is(1)
        .stderr_has("no secret in");
}
