//! `vmcrypt qemu-args` for qcow2 with LUKS encryption (a backing chain in which every
//! layer has its own secret) and for a detached LUKS1 header over a qcow2 payload. The
//! images are made and written by qemu-img and qemu-io; the printed arguments must open
//! in qemu-storage-daemon and serve the bytes the writes left, which `vmcrypt convert`
//! and `qemu-img convert` of the same chain must give too.
mod common;
mod glue_support;

use common::*;
use glue_support::*;

const MIB: usize = 1 << 20;
const SIZE: usize = 4 * MIB;

/// `qemu-io --object ... --image-opts OPTS -c CMD`.
fn qemu_io(objects: &[String], opts: &str, cmd: &str) {
    let mut a: Vec<&str> = Vec::new();
    for o in objects {
        a.extend(["--object", o]);
    }
    a.extend(["--image-opts", opts, "-c", cmd]);
    tool("qemu-io", &a).ok().stdout_has("wrote");
}

/// `-f`-free convert of `--image-opts OPTS` to raw with `prog` ("qemu-img" or vmcrypt).
fn convert(sc: &Scratch, vm: bool, objects: &[String], opts: &str, out: &str) -> Vec<u8> {
    let mut a: Vec<&str> = vec!["convert"];
    for o in objects {
        a.extend(["--object", o]);
    }
    let out = sc.p(out);
    a.extend(["--image-opts", opts, "-O", "raw", &out]);
    if vm { vmcrypt(&a) } else { qemu_img(&a) }.ok();
    read(std::path::Path::new(&out))
}

/// base (secret sb) <- mid (sm) <- top (st), all qcow2 with LUKS; the top's backing
/// name is relative. Returns the objects, the top's --image-opts, and the expected
/// bytes.
fn make_chain(sc: &Scratch) -> (Vec<String>, String, Vec<u8>) {
    let mut objects = Vec::new();
    for (id, pw) in [("sb", "base pw"), ("sm", "mid pw"), ("st", "top pw")] {
        sc.write(&format!("{id}.pw"), pw.as_bytes());
        objects.push(sc.secret(id, &format!("{id}.pw")));
    }
    let layers = [
        ("sb", "base.qcow2"),
        ("sm", "mid.qcow2"),
        ("st", "top.qcow2"),
    ];
    let mut want = vec![0u8; SIZE];
    let writes = [
        (0xaa, 0, 2 * MIB),
        (0xbb, MIB, MIB),
        (0xcc, MIB + MIB / 2, MIB),
    ];
    let mut chain_opts = String::new();
    for (i, (id, file)) in layers.iter().enumerate() {
        let mut a = vec![
            "create".to_string(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "--object".into(),
            objects[i].clone(),
            "-o".into(),
            format!("encrypt.format=luks,encrypt.key-secret={id},encrypt.iter-time=10"),
        ];
        if i > 0 {
            // Relative to the overlay's directory, as QEMU resolves it.
            a.extend([
                "-b".into(),
                layers[i - 1].1.into(),
                "-F".into(),
                "qcow2".into(),
            ]);
        }
        a.extend([sc.p(file), SIZE.to_string()]);
        qemu_img(&a.iter().map(String::as_str).collect::<Vec<_>>()).ok();
        // Options for this layer on top of the chain built so far.
        let below = chain_opts.replace("encrypt.key-secret", "backing.encrypt.key-secret");
        chain_opts = format!("encrypt.key-secret={id}");
        if !below.is_empty() {
            chain_opts += &format!(",{below}");
        }
        let (pat, off, len) = writes[i];
        let opts = format!("driver=qcow2,file.filename={},{chain_opts}", sc.p(file));
        qemu_io(
            &objects[..=i],
            &opts,
            &format!("write -P {pat:#x} {off} {len}"),
        );
        want[off..off + len].fill(pat);
    }
    let top = format!(
        "driver=qcow2,file.filename={},{chain_opts}",
        sc.p("top.qcow2")
    );
    (objects, top, want)
}

#[test]
fn qcow2_luks_chain_with_a_secret_per_layer_opens_in_qemu() {
    let sc = Scratch::new();
    let (objects, top, want) = make_chain(&sc);
    assert!(
        top.contains("backing.backing.encrypt.key-secret=sb"),
        "{top}"
    );
    assert_same_bytes(
        "vmcrypt convert of the chain",
        &convert(&sc, true, &objects, &top, "vm.raw"),
        &want,
    );
    assert_same_bytes(
        "qemu-img convert of the chain",
        &convert(&sc, false, &objects, &top, "q.raw"),
        &want,
    );

    let mut args: Vec<&str> = Vec::new();
    for o in &objects {
        args.extend(["--object", o]);
    }
    args.extend(["--image-opts", &top]);
    check_both_forms(&sc, &args, &want, "qcow2+LUKS chain");

    let mut a = vec!["qemu-args"];
    a.extend_from_slice(&args);
    let words = unquote(&vmcrypt(&a).ok().stdout_str());
    let nodes: Vec<&String> = words
        .iter()
        .zip(words.iter().skip(1))
        .filter(|(k, _)| *k == "-blockdev")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(nodes.len(), 3, "one -blockdev per layer: {words:?}");
    assert!(nodes[0].contains("node-name=disk0-backing2") && nodes[0].contains("key-secret=sb"));
    assert!(!nodes[0].contains("backing="), "{}", nodes[0]);
    assert!(nodes[1].contains("backing=disk0-backing2") && nodes[1].contains("key-secret=sm"));
    assert!(nodes[2].contains("node-name=disk0,") && nodes[2].contains("backing=disk0-backing1"));
    assert!(nodes[2].contains("encrypt.format=luks"), "{}", nodes[2]);
}

#[test]
fn qcow2_chain_without_a_layers_secret_is_refused() {
    let sc = Scratch::new();
    let (objects, top, _) = make_chain(&sc);
    let partial = top.replace(",backing.backing.encrypt.key-secret=sb", "");
    let mut a = vec!["qemu-args"];
    for o in &objects {
        a.extend(["--object", o]);
    }
    a.extend(["--image-opts", &partial]);
    vmcrypt(&a)
        .code_is(1)
        .stderr_has("backing.backing.encrypt.key-secret=ID");
}

#[test]
fn detached_luks1_header_over_a_qcow2_payload_opens_in_qemu() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    vmcrypt_detached_header(&sc, "pw", "hdr.img");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &sc.p("payload.qcow2"),
        &SIZE.to_string(),
    ])
    .ok();
    // QEMU's layout: luks on top, `header` raw over the header file, `file` the payload.
    let opts = format!(
        "driver=luks,key-secret=s0,header.driver=raw,header.file.filename={},\
         file.driver=qcow2,file.file.filename={}",
        sc.p("hdr.img"),
        sc.p("payload.qcow2")
    );
    let objects = vec![secret.clone()];
    qemu_io(&objects, &opts, "write -P 0x5e 100k 300k");
    qemu_io(&objects, &opts, "write -P 0x71 3M 512k");
    // Never-written sectors of the zeroed payload decrypt to noise, so QEMU's own
    // reading of the whole disk is the reference; the written ranges must hold the data.
    let want = convert(&sc, false, &objects, &opts, "q.raw");
    assert!(want[100 << 10..400 << 10].iter().all(|&b| b == 0x5e));
    assert!(want[3 * MIB..3 * MIB + MIB / 2].iter().all(|&b| b == 0x71));
    assert_same_bytes(
        "vmcrypt convert",
        &convert(&sc, true, &objects, &opts, "vm.raw"),
        &want,
    );
    check_both_forms(
        &sc,
        &["--object", &secret, "--image-opts", &opts],
        &want,
        "detached LUKS1 header over qcow2",
    );
}

/// An encrypted qcow2 overlay (`ol.qcow2`, key `st`) made by qemu-img over `base` in
/// format `fmt` (its backing name relative, as Nova writes it), with qemu-io writes in
/// the overlay. `base_opts` are the overlay's `--image-opts` for the base layer ("" for
/// none); returns the `--image-opts` of the overlay and the expected bytes after the
/// writes, on top of `base_bytes`.
fn overlay_over(
    sc: &Scratch,
    objects: &[String],
    base: &str,
    fmt: &str,
    base_opts: &str,
    mut want: Vec<u8>,
) -> (String, Vec<u8>) {
    let st = objects.last().unwrap();
    #[rustfmt::skip]
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "--object", st, "-b", base, "-F", fmt,
        "-o", "encrypt.format=luks,encrypt.key-secret=st,encrypt.iter-time=10",
        &sc.p("ol.qcow2"), &SIZE.to_string(),
    ])
    .ok();
    let mut opts = format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=st",
        sc.p("ol.qcow2")
    );
    if !base_opts.is_empty() {
        opts = format!("{opts},{base_opts}");
    }
    qemu_io(objects, &opts, "write -P 0x3c 512k 1M");
    want[512 << 10..(512 << 10) + MIB].fill(0x3c);
    (opts, want)
}

/// qemu-args of `opts` must open in qemu-storage-daemon (both output forms) and serve
/// `want`, which vmcrypt's and qemu-img's own reading of the chain give too; the base
/// layer is its own -blockdev of driver `base_driver`, without a `backing` option.
fn overlay_opens_in_qemu(
    sc: &Scratch,
    objects: &[String],
    opts: &str,
    want: &[u8],
    base_driver: &str,
) {
    assert_same_bytes(
        "qemu-img convert",
        &convert(sc, false, objects, opts, "q.raw"),
        want,
    );
    assert_same_bytes(
        "vmcrypt convert",
        &convert(sc, true, objects, opts, "vm.raw"),
        want,
    );
    let mut args: Vec<&str> = Vec::new();
    for o in objects {
        args.extend(["--object", o]);
    }
    args.extend(["--image-opts", opts]);
    check_both_forms(sc, &args, want, &format!("qcow2+LUKS over {base_driver}"));
    let mut a = vec!["qemu-args", "--output", "json"];
    a.extend_from_slice(&args);
    let words = unquote(&vmcrypt(&a).ok().stdout_str());
    let base: serde_json::Value = serde_json::from_str(&words[words.len() - 3]).unwrap();
    assert_eq!(base["driver"], base_driver, "{words:?}");
    assert!(base.get("backing").is_none(), "{base}");
}

/// Nova's layout: an encrypted qcow2 instance disk over a plain raw base image.
#[test]
fn qcow2_luks_overlay_over_a_raw_base_opens_in_qemu() {
    let sc = Scratch::new();
    sc.write("st.pw", b"top pw");
    let objects = vec![sc.secret("st", "st.pw")];
    let base = plaintext(SIZE, "nova raw base");
    sc.write("base.raw", &base);
    let (opts, want) = overlay_over(&sc, &objects, "base.raw", "raw", "", base);
    overlay_opens_in_qemu(&sc, &objects, &opts, &want, "raw");
}

/// An encrypted qcow2 overlay over a LUKS1 base, each with its own key.
#[test]
fn qcow2_luks_overlay_over_a_luks_base_opens_in_qemu() {
    let sc = Scratch::new();
    sc.write("sb.pw", b"base pw");
    sc.write("st.pw", b"top pw");
    let objects = vec![sc.secret("sb", "sb.pw"), sc.secret("st", "st.pw")];
    let base = plaintext(SIZE, "luks base");
    let raw = sc.write("base-plain.raw", &base);
    #[rustfmt::skip]
    qemu_img(&[
        "convert", "-q", "--object", &objects[0], "-f", "raw", "-O", "luks",
        "-o", "key-secret=sb,iter-time=10", &raw, &sc.p("base.luks"),
    ])
    .ok();
    let (opts, want) = overlay_over(
        &sc,
        &objects,
        "base.luks",
        "luks",
        "backing.key-secret=sb",
        base,
    );
    overlay_opens_in_qemu(&sc, &objects, &opts, &want, "luks");
    // Each layer's key is checked: the base's secret holding the top's passphrase is
    // refused, naming the base.
    let swapped = opts.replace("backing.key-secret=sb", "backing.key-secret=st");
    let mut a = vec!["qemu-args"];
    for o in &objects {
        a.extend(["--object", o]);
    }
    a.extend(["--image-opts", &swapped]);
    vmcrypt(&a).code_is(2).stderr_has("base.luks");
}
