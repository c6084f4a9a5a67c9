//! LUKS command lines the interop tests run through more than one tool: creating an
//! image, writing plaintext into one and reading it back as raw (each through either
//! `qemu-img` or `vmcrypt`, see [`Tool`]), cryptsetup's format and key-slot commands,
//! and the `--image-opts` string naming a LUKS node with an optional detached header.

use super::{Out, PASS, Scratch, Tool, cryptsetup, plaintext, qemu_img, vmcrypt};

/// The `--image-opts` string opening `file` (and optional detached `header`) as luks
/// with secret `id`. Commas in paths are escaped as QEMU's keyval syntax wants.
pub fn luks_opts(id: &str, file: &str, header: Option<&str>) -> String {
    let esc = |s: &str| s.replace(',', ",,");
    let mut s = format!("driver=luks,key-secret={id},file.filename={}", esc(file));
    if let Some(h) = header {
        s += &format!(",header.filename={}", esc(h));
    }
    s
}

/// `TOOL create -q -f luks --object secret,id=s0,file=KEYFILE -o OPTS NAME [SIZE]` in
/// the scratch dir; the caller checks the outcome.
pub fn create_luks(
    tool: Tool,
    sc: &Scratch,
    keyfile: &str,
    opts: &str,
    name: &str,
    size: Option<&str>,
) -> Out {
    let (secret, path) = (sc.secret("s0", keyfile), sc.p(name));
    let mut args = vec![
        "create", "-q", "-f", "luks", "--object", &secret, "-o", opts, &path,
    ];
    args.extend(size);
    tool(&args)
}

/// Write plaintext file `raw` into the existing LUKS image `img` (with an optional
/// detached `header`) through TOOL's luks driver, keyed by `keyfile`; panics on failure.
#[track_caller]
pub fn write_into_luks(
    tool: Tool,
    sc: &Scratch,
    keyfile: &str,
    raw: &str,
    img: &str,
    header: Option<&str>,
) {
    write_into_node(tool, sc, keyfile, raw, &luks_opts("s0", img, header));
}

/// Write the raw scratch file `raw` over the start of the node `target` (`--image-opts`
/// naming secret `s0`, read from `keyfile`) through TOOL; panics on failure.
#[track_caller]
pub fn write_into_node(tool: Tool, sc: &Scratch, keyfile: &str, raw: &str, target: &str) {
    let secret = sc.secret("s0", keyfile);
    tool(&[
        "convert",
        "-n",
        "--object",
        &secret,
        "-f",
        "raw",
        &sc.p(raw),
        "--target-image-opts",
        target,
    ])
    .ok();
}

/// `TOOL convert --object secret,id=s0,file=KEYFILE --image-opts OPTS -O raw OUT`.
fn node_to_raw(tool: Tool, sc: &Scratch, keyfile: &str, opts: &str, out: &str) -> Out {
    let secret = sc.secret("s0", keyfile);
    tool(&[
        "convert",
        "--object",
        &secret,
        "--image-opts",
        opts,
        "-O",
        "raw",
        &sc.p(out),
    ])
}

/// `TOOL convert` of the LUKS image `file`, keyed by `keyfile`, into the raw file `out`;
/// the caller checks the outcome.
pub fn luks_to_raw(tool: Tool, sc: &Scratch, keyfile: &str, file: &str, out: &str) -> Out {
    node_to_raw(tool, sc, keyfile, &luks_opts("s0", file, None), out)
}

/// Decrypt a LUKS image (optional detached `header`) with TOOL (`qemu_img` or
/// `vmcrypt`) into `out` (raw) and return the bytes; panics when the tool fails.
#[track_caller]
pub fn decrypt_luks(
    tool: Tool,
    sc: &Scratch,
    keyfile: &str,
    file: &str,
    header: Option<&str>,
    out: &str,
) -> Vec<u8> {
    node_to_raw(tool, sc, keyfile, &luks_opts("s0", file, header), out).ok();
    sc.read(out)
}

/// Run `cryptsetup open --test-passphrase --key-file KEYFILE` with extra `args`.
pub fn cs_test_pass(sc: &Scratch, keyfile: &str, image: &str, extra: &[&str]) -> Out {
    let head = ["open", "--test-passphrase"];
    with_key_file(cryptsetup, &head, &sc.p(keyfile), extra, image)
}

/// Run `vmcrypt luks test-key --key-file KEYFILE` with extra `args`.
pub fn vm_test_key(sc: &Scratch, keyfile: &str, image: &str, extra: &[&str]) -> Out {
    let head = ["luks", "test-key"];
    with_key_file(vmcrypt, &head, &sc.p(keyfile), extra, image)
}

/// `TOOL HEAD... --key-file KEYFILE EXTRA... IMAGE`.
fn with_key_file(tool: Tool, head: &[&str], keyfile: &str, extra: &[&str], image: &str) -> Out {
    let mut args = head.to_vec();
    args.extend(["--key-file", keyfile]);
    args.extend_from_slice(extra);
    args.push(image);
    tool(&args)
}

/// Format `image` (an existing file) as LUKS1 with cryptsetup, quickly.
#[track_caller]
pub fn cs_format(sc: &Scratch, keyfile: &str, image: &str, extra: &[&str]) {
    let head = ["luksFormat", "--type", "luks1"];
    cs_quick(&head, &sc.p(keyfile), extra, &[image]).ok();
}

/// `cryptsetup HEAD... --batch-mode --pbkdf-force-iterations 1000 --key-file KEYFILE
/// EXTRA... TAIL...`: a cryptsetup key operation with a fast KDF.
fn cs_quick(head: &[&str], keyfile: &str, extra: &[&str], tail: &[&str]) -> Out {
    let mut args = head.to_vec();
    args.extend(["--batch-mode", "--pbkdf-force-iterations", "1000"]);
    args.extend(["--key-file", keyfile]);
    args.extend_from_slice(extra);
    args.extend_from_slice(tail);
    cryptsetup(&args)
}

/// Create a LUKS image from plaintext `raw` with vmcrypt convert and extra `-o` options.
#[track_caller]
pub fn vmcrypt_encrypt(sc: &Scratch, keyfile: &str, raw: &str, out: &str, opts: &str) {
    let o = format!(
        "key-secret=s0,iterations=1000{}{opts}",
        if opts.is_empty() { "" } else { "," }
    );
    encrypt_raw(vmcrypt, sc, keyfile, raw, ("luks", &o), out).ok();
}

/// `--object secret,id=s0,file=KEYFILE --image-opts LUKS_OPTS`: the arguments naming the
/// LUKS image `name` in the scratch dir, owned, for longer command lines (`vmcrypt serve`).
pub fn luks_node_args(sc: &Scratch, keyfile: &str, name: &str) -> Vec<String> {
    vec![
        "--object".into(),
        sc.secret("s0", keyfile),
        "--image-opts".into(),
        luks_opts("s0", &sc.p(name), None),
    ]
}

/// The LUKS1 image `disk.luks` made by vmcrypt from `plaintext(size, seed)` (written to
/// `plain.raw`) under the key file `pw` holding [`PASS`]; returns the plaintext.
#[track_caller]
pub fn vmcrypt_luks_disk(sc: &Scratch, size: usize, seed: &str) -> Vec<u8> {
    sc.write("pw", PASS);
    let plain = plaintext(size, seed);
    sc.write("plain.raw", &plain);
    vmcrypt_encrypt(sc, "pw", "plain.raw", "disk.luks", "");
    plain
}

/// `TOOL convert --object secret,id=s0,file=KEYFILE -f raw RAW -O FORMAT -o OPTS OUT`
/// (`target` is `(FORMAT, OPTS)`): a new encrypted image from the plaintext file `raw`
/// in the scratch dir; the caller checks the outcome.
pub fn encrypt_raw(
    tool: Tool,
    sc: &Scratch,
    keyfile: &str,
    raw: &str,
    target: (&str, &str),
    out: &str,
) -> Out {
    let (format, opts) = target;
    tool(&[
        "convert",
        "--object",
        &sc.secret("s0", keyfile),
        "-f",
        "raw",
        "-O",
        format,
        "-o",
        opts,
        &sc.p(raw),
        &sc.p(out),
    ])
}

/// `vmcrypt luks add-key --key-file KEYFILE --pbkdf-force-iterations 1000 EXTRA... IMAGE
/// NEWFILE`; the caller checks the outcome.
pub fn vmcrypt_add_key(
    sc: &Scratch,
    keyfile: &str,
    image: &str,
    newfile: &str,
    extra: &[&str],
) -> Out {
    let (kf, nf) = (sc.p(keyfile), sc.p(newfile));
    let mut args = vec![
        "luks",
        "add-key",
        "--key-file",
        &kf,
        "--pbkdf-force-iterations",
        "1000",
    ];
    args.extend_from_slice(extra);
    args.extend([image, &nf]);
    vmcrypt(&args)
}

/// `vmcrypt create` of a detached LUKS1 header file `name` (no payload) keyed by
/// `keyfile`; panics on failure.
#[track_caller]
pub fn vmcrypt_detached_header(sc: &Scratch, keyfile: &str, name: &str) {
    let opts = "key-secret=s0,detached-header=on,iterations=1000";
    create_luks(vmcrypt, sc, keyfile, opts, name, None).ok();
}

/// One value of a `cryptsetup luksDump` line such as "Cipher name:   \taes".
#[track_caller]
pub fn dump_field(dump: &str, field: &str) -> String {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no '{field}' line in dump:\n{dump}"))
}
/// `cryptsetup OP --batch-mode --pbkdf-force-iterations 1000 --key-file KEYFILE EXTRA...
/// IMAGE NEWFILE` (`luksAddKey`, `luksChangeKey`): a key-slot change unlocked by
/// `keyfile` that sets the passphrase in `newfile`; the caller checks the outcome.
pub fn cs_new_key(
    sc: &Scratch,
    op: &str,
    keyfile: &str,
    image: &str,
    newfile: &str,
    extra: &[&str],
) -> Out {
    cs_quick(&[op], &sc.p(keyfile), extra, &[image, &sc.p(newfile)])
}

/// `qemu-img create -f qcow2` of an image with embedded LUKS keyed by the secret `s0`
/// (`secret` is its `--object` argument), over a raw `base` file, with `extra` `-o`
/// options appended.
pub fn qemu_qcow2_luks_over_raw(secret: &str, base: &str, extra: &str, img: &str, size: &str) {
    let mut o = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10".to_string();
    if !extra.is_empty() {
        o = format!("{o},{extra}");
    }
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "--object", secret, "-b", base, "-F", "raw", "-o", &o, img,
        size,
    ])
    .ok();
}

/// The embedded LUKS header region (offset, length) of the qcow2 file `file`, from its
/// FDE header extension.
pub fn qcow2_fde_region(file: &[u8]) -> (usize, usize) {
    let be32 = |p: usize| u32::from_be_bytes(file[p..p + 4].try_into().unwrap()) as usize;
    let be64 = |p: usize| u64::from_be_bytes(file[p..p + 8].try_into().unwrap()) as usize;
    let mut p = be32(100);
    loop {
        let (kind, len) = (be32(p), be32(p + 4));
        assert_ne!(kind, 0, "no FDE header extension");
        if kind == 0x0537_be77 {
            return (be64(p + 8), be64(p + 16));
        }
        p += 8 + len.next_multiple_of(8);
    }
}

/// The volume key (hex) `cryptsetup luksDump --dump-volume-key` prints for the LUKS
/// header file `hdr`, unlocked with the key file `keyfile`.
pub fn dump_volume_key(hdr: &str, keyfile: &str) -> String {
    let text = cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        keyfile,
        hdr,
    ])
    .ok()
    .stdout_str();
    let start = text.find("MK dump:").expect("a volume key dump");
    let key: String = text[start + 8..]
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert!(key.len() >= 32, "{text}");
    key
}

/// The volume key of the qcow2+LUKS scratch file `name`: its embedded header is copied
/// out to `NAME.hdr` and dumped by cryptsetup with the key file `keyfile`.
pub fn qcow2_volume_key(sc: &Scratch, name: &str, keyfile: &str) -> String {
    let bytes = sc.read(name);
    let (off, len) = qcow2_fde_region(&bytes);
    let hdr = sc.write(&format!("{name}.hdr"), &bytes[off..off + len]);
    dump_volume_key(&hdr, &sc.p(keyfile))
}
