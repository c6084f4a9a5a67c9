//! `vmcrypt luks format` (issue 10 item 8) against the real cryptsetup: the same options
//! give the same header fields in `cryptsetup luksDump` (only salts, digests and the
//! epoch differ), cryptsetup opens what vmcrypt formatted, the device keeps its size and
//! the bytes past the header, a device too small is refused without a write, and the
//! confirmation is cryptsetup's ("YES", or -q).
//!
//! A missing cryptsetup fails these tests (see `common::require_tool`).
mod common;

use common::*;

const UUID: &str = "4fbd1a5c-1111-4222-8333-123456789abc";
const MIB: u64 = 1 << 20;

/// Options every format here gets: fast KDF, fixed UUID, no question, key file `pw`.
fn quick(sc: &Scratch) -> Vec<String> {
    [
        "-q",
        "--pbkdf-force-iterations",
        "1000",
        "--uuid",
        UUID,
        "--key-file",
        &sc.p("pw"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `cryptsetup luksDump` without what is random (salts, digests) or counts writes
/// (epoch), and without the device's name.
fn dump_fields(dev: &str) -> Vec<String> {
    let dump = cryptsetup(&["luksDump", dev]).ok().stdout_str();
    let random = ["Salt:", "Digest:", "MK digest:", "MK salt:", "Epoch:"];
    let mut out = Vec::new();
    let mut in_random = false;
    for line in dump.lines() {
        let t = line.trim();
        if t.starts_with("LUKS header information") {
            continue;
        }
        let hex_only = !t.is_empty()
            && t.split_whitespace()
                .all(|w| w.len() == 2 && w.bytes().all(|b| b.is_ascii_hexdigit()));
        if random.iter().any(|r| t.starts_with(r)) {
            in_random = true;
            continue;
        }
        if in_random && hex_only {
            continue;
        }
        in_random = false;
        out.push(line.to_string());
    }
    assert!(
        out.len() > 8,
        "luksDump of {dev} printed too little:\n{dump}"
    );
    out
}

/// Format `dev` with `tool` (cryptsetup or vmcrypt), the [`quick`] options and `args`,
/// with a detached `header` when given.
fn format_with(tool: &str, sc: &Scratch, args: &[&str], header: Option<&str>, dev: &str) -> Out {
    let mut argv: Vec<String> = match tool {
        "cryptsetup" => vec!["luksFormat".into()],
        _ => vec!["luks".into(), "format".into()],
    };
    argv.extend(quick(sc));
    argv.extend(args.iter().map(|s| s.to_string()));
    if let Some(h) = header {
        argv.extend(["--header".into(), h.into()]);
    }
    argv.push(dev.into());
    match tool {
        "cryptsetup" => cryptsetup(&strs(&argv)),
        _ => vmcrypt(&strs(&argv)),
    }
}

/// Format one file with cryptsetup and one with vmcrypt, same size and options; the
/// dumps must agree, both must open with the passphrase, and neither file may change
/// size. `header` formats with a detached header file (created by each tool).
fn compare_with_cryptsetup(args: &[&str], header: bool) {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let size = 40 * MIB;
    let mut dumps = Vec::new();
    for (tool, name) in [("cryptsetup", "cs"), ("vmcrypt", "vm")] {
        let dev = sc.sparse(&format!("{name}.img"), size);
        let hdr = sc.p(&format!("{name}.hdr"));
        format_with(tool, &sc, args, header.then_some(&hdr[..]), &dev).ok();
        let len = std::fs::metadata(&dev).unwrap().len();
        assert_eq!(
            len, size,
            "{tool} changed the size of the device ({args:?})"
        );
        let meta = if header { hdr } else { dev };
        let mut open = vec!["open", "--test-passphrase", "--key-file"];
        let pw = sc.p("pw");
        open.push(&pw);
        open.push(&meta);
        cryptsetup(&open).ok();
        dumps.push(dump_fields(&meta));
    }
    assert_eq!(
        dumps[0], dumps[1],
        "luksDump differs between cryptsetup (left) and vmcrypt (right) for {args:?}"
    );
}

mod same_header_as_cryptsetup {
    use super::*;

    #[test]
    fn luks2_defaults() {
        compare_with_cryptsetup(&["--pbkdf", "pbkdf2"], false);
    }
    #[test]
    fn luks2_small_metadata_and_keyslots_area() {
        let a = ["--pbkdf", "pbkdf2", "--luks2-metadata-size", "64k"];
        compare_with_cryptsetup(&[&a[..], &["--luks2-keyslots-size", "1m"]].concat(), false);
    }
    #[test]
    fn luks2_offset_and_alignment() {
        compare_with_cryptsetup(&["--pbkdf", "pbkdf2", "--offset", "40960"], false);
        compare_with_cryptsetup(&["--pbkdf", "pbkdf2", "--align-payload", "65536"], false);
        let odd = [
            "--pbkdf",
            "pbkdf2",
            "--offset",
            "40000",
            "--sector-size",
            "512",
        ];
        compare_with_cryptsetup(&odd, false);
    }
    #[test]
    fn luks2_cipher_hash_sector_label_slot() {
        let a = [
            "--pbkdf",
            "pbkdf2",
            "-c",
            "aes-cbc-essiv:sha256",
            "-h",
            "sha512",
            "--sector-size",
            "1024",
            "--label",
            "data disk",
            "--subsystem",
            "vmcrypt-test",
            "--key-slot",
            "3",
        ];
        compare_with_cryptsetup(&a, false);
        compare_with_cryptsetup(&["--pbkdf", "pbkdf2", "-s", "256"], false);
    }
    #[test]
    fn luks2_detached_header() {
        compare_with_cryptsetup(&["--pbkdf", "pbkdf2"], true);
    }
    #[test]
    fn luks1_defaults_and_layouts() {
        compare_with_cryptsetup(&["--type", "luks1"], false);
        compare_with_cryptsetup(&["--type", "luks1", "--align-payload", "8"], false);
        compare_with_cryptsetup(&["--type", "luks1", "--offset", "5000"], false);
    }
    #[test]
    fn luks1_ciphers_hashes_slot() {
        let a = [
            "--type",
            "luks1",
            "-c",
            "aes-cbc-essiv:sha256",
            "-h",
            "sha512",
        ];
        compare_with_cryptsetup(&[&a[..], &["-S", "5"]].concat(), false);
        let b = [
            "--type",
            "luks1",
            "-c",
            "aes-cbc-plain",
            "-s",
            "128",
            "-h",
            "sha1",
        ];
        compare_with_cryptsetup(&b, false);
    }
    #[test]
    fn luks1_detached_header() {
        compare_with_cryptsetup(&["--type", "luks1"], true);
    }
}

/// What decides a layout, from `cryptsetup luksDump`: (encryption sector size, data
/// offset in bytes, keyslots area in bytes); LUKS1 has 512-byte sectors and no area.
fn layout_of(meta: &str) -> (u64, u64, u64) {
    let dump = cryptsetup(&["luksDump", meta]).ok().stdout_str();
    let field = |key: &str| {
        dump.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    if let Some(payload) = field("Payload offset:") {
        return (512, payload * 512, 0);
    }
    let got = (field("sector:"), field("offset:"), field("Keyslots area:"));
    match got {
        (Some(s), Some(o), Some(k)) => (s, o, k),
        _ => panic!("no sector/offset/keyslots area in luksDump of {meta}:\n{dump}"),
    }
}

/// Format a `size`-byte file (with a detached header when `detached`) with `tool` and
/// `args`; the layout, or `None` when the tool refused.
fn format_layout(tool: &str, size: u64, detached: bool, args: &[&str]) -> Option<(u64, u64, u64)> {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let dev = sc.sparse("d.img", size);
    let hdr = sc.p("d.hdr");
    let out = format_with(tool, &sc, args, detached.then_some(&hdr[..]), &dev);
    if out.code != Some(0) {
        return None;
    }
    Some(layout_of(if detached { &hdr } else { &dev }))
}

/// Without `--sector-size`, vmcrypt picks the sector size, data offset and keyslots area
/// cryptsetup 2.6.1 picks, and refuses what it refuses, for offsets, alignments, data
/// sizes, detached headers and metadata sizes. cryptsetup counts a fixed data offset in
/// 512-byte sectors when it checks it against 4096 (so `--offset 40000`, a multiple of
/// 4096 bytes, gets 512-byte sectors) and checks the device size less the alignment, not
/// less the data offset. `ok` says whether both must succeed.
#[test]
fn default_layout_is_cryptsetups() {
    const M: u64 = MIB;
    let p = ["--pbkdf", "pbkdf2"];
    #[rustfmt::skip]
    let cases: &[(u64, bool, &[&str], bool)] = &[
        (40 * M, false, &[], true),
        (40 * M + 512, false, &[], true),
        (40 * M + 4096, false, &[], true),
        (40 * M, false, &["--offset", "40000"], true),
        (40 * M, false, &["--offset", "34816"], true),
        (40 * M, false, &["--offset", "36864"], true),
        (40 * M, false, &["--offset", "32768"], true),
        (40 * M + 512, false, &["--offset", "32768"], true),
        (40 * M, false, &["--offset", "0"], true),
        (40 * M, false, &["--offset", "40001"], false),
        (40 * M, false, &["--offset", "32768", "--align-payload", "8"], false),
        (40 * M, false, &["--offset", "8192", "--luks2-keyslots-size", "8m"], true),
        (40 * M, false, &["--offset", "8192", "--luks2-metadata-size", "64k"], true),
        (40 * M, false, &["--align-payload", "2049"], true),
        (40 * M, false, &["--align-payload", "1"], true),
        (40 * M, false, &["--align-payload", "0"], true),
        (40 * M + 512, false, &["--align-payload", "1"], false),
        (40 * M, false, &["--luks2-metadata-size", "64k", "--luks2-keyslots-size", "1m"], true),
        (40 * M, true, &[], true),
        (40 * M + 512, true, &[], true),
        (40 * M, true, &["--offset", "2048"], true),
        (40 * M, true, &["--offset", "4096"], true),
        (40 * M + 512, true, &["--offset", "4096"], true),
        (40 * M, true, &["--offset", "300000"], true),
        (40 * M, true, &["--offset", "4096", "--luks2-keyslots-size", "4m"], true),
        (40 * M, true, &["--offset", "128", "--luks2-metadata-size", "64k"], false),
        (40 * M, true, &["--align-payload", "2048"], true),
        (40 * M, true, &["--align-payload", "8193"], true),
        (40 * M, true, &["--luks2-metadata-size", "64k"], true),
        (40 * M, false, &["--type", "luks1", "--offset", "4097"], false),
        (40 * M, false, &["--type", "luks1", "--offset", "0"], true),
    ];
    let mut wrong = Vec::new();
    for &(size, detached, extra, ok) in cases {
        let args = [&p[..], extra].concat();
        let cs = format_layout("cryptsetup", size, detached, &args);
        let vm = format_layout("vmcrypt", size, detached, &args);
        assert_eq!(
            cs.is_some(),
            ok,
            "cryptsetup {} {args:?} on {size} bytes (detached: {detached})",
            if ok { "failed" } else { "succeeded" }
        );
        if cs != vm {
            wrong.push(format!(
                "{size} bytes, detached {detached}, {extra:?}: cryptsetup {cs:?}, vmcrypt {vm:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "(sector, data offset, keyslots area) differ:\n{}",
        wrong.join("\n")
    );
}

/// An 8 MiB file with data beyond the header keeps its size and that data; cryptsetup
/// opens the result, and data written through vmcrypt reads back through qemu-img.
#[test]
fn keeps_size_and_data_past_the_header() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let mut bytes = plaintext(8 << 20, "old contents");
    let tail = bytes.len() - 4096;
    bytes[tail..].fill(0x5a);
    let dev = sc.write("disk.img", &bytes);
    let mut argv = vec![
        "luks".to_string(),
        "format".into(),
        "--type".into(),
        "luks1".into(),
    ];
    argv.extend(quick(&sc));
    argv.push(dev.clone());
    vmcrypt(&strs(&argv)).ok();
    let after = sc.read("disk.img");
    assert_eq!(after.len(), bytes.len(), "the device changed size");
    assert_eq!(
        &after[tail..],
        &bytes[tail..],
        "data past the header changed"
    );
    cs_test_pass(&sc, "pw", &dev, &[]).ok();
    let dump = cryptsetup(&["luksDump", &dev]).ok().stdout_str();
    assert!(dump.contains("Payload offset:\t4096"), "{dump}");
    // The payload (6 MiB) is usable: write through vmcrypt, read through qemu-img.
    let plain = plaintext(6 << 20, "new contents");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &dev, None);
    let back = decrypt_luks(qemu_img, &sc, "pw", &dev, None, "back.raw");
    assert_same_bytes("qemu-img reading the formatted device", &back, &plain);
}

/// A device smaller than the header is refused with a clear error and not touched
/// (cryptsetup would grow a file; vmcrypt never changes the size).
#[test]
fn too_small_is_refused_without_a_write() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    for (ty, size) in [("luks2", 8 << 20), ("luks1", 1 << 20)] {
        let bytes = plaintext(size, ty);
        let dev = sc.write("small.img", &bytes);
        let mut argv = vec![
            "luks".to_string(),
            "format".into(),
            "--type".into(),
            ty.into(),
        ];
        argv.extend(quick(&sc));
        argv.push(dev.clone());
        vmcrypt(&strs(&argv))
            .code_is(1)
            .stderr_has("too small")
            .stderr_has("nothing was written");
        assert_same_bytes("a refused device", &sc.read("small.img"), &bytes);
    }
}

/// A scratch dir with key file `pw` and a device `d.img` of `size` bytes of data.
fn device_with_data(size: usize, seed: &str) -> (Scratch, Vec<u8>, String) {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let bytes = plaintext(size, seed);
    let dev = sc.write("d.img", &bytes);
    (sc, bytes, dev)
}

/// Without -q the user must type YES (here on stdin, which is not a terminal);
/// anything else, or nothing, leaves the device alone.
#[test]
fn confirmation_is_required_without_q() {
    let (sc, bytes, dev) = device_with_data(4 << 20, "keep me");
    let pw = sc.p("pw");
    let args = [
        "luks",
        "format",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        &pw,
        &dev,
    ];
    for answer in [&b"no\n"[..], b"yes\n", b""] {
        vmcrypt_stdin(&args, answer)
            .code_is(1)
            .stderr_has("This will overwrite data on")
            .stderr_has("Operation aborted");
        assert_same_bytes("an unconfirmed format", &sc.read("d.img"), &bytes);
    }
    // The key on stdin leaves no way to confirm: -q is required.
    let stdin_key = ["luks", "format", "--type", "luks1", "--key-file", "-", &dev];
    vmcrypt_stdin(&stdin_key, PASS).code_is(1).stderr_has("-q");
    assert_same_bytes("a refused format", &sc.read("d.img"), &bytes);
    vmcrypt_stdin(&args, b"YES\n").ok();
    cs_test_pass(&sc, "pw", &dev, &[]).ok();
    // Re-formatting warns that a LUKS header is already there.
    vmcrypt_stdin(&args, b"YES\n")
        .ok()
        .stderr_has("already contains a LUKS1 header");
}

/// With no key file, the passphrase is the line after YES on stdin.
#[test]
fn passphrase_from_stdin_after_the_confirmation() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let dev = sc.sparse("d.img", 4 << 20);
    let args = [
        "luks",
        "format",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
        &dev,
    ];
    let mut input = b"YES\n".to_vec();
    input.extend_from_slice(PASS);
    input.push(b'\n');
    vmcrypt_stdin(&args, &input).ok();
    cs_test_pass(&sc, "pw", &dev, &[]).ok();
}

/// Options that need LUKS2, a bad cipher and a bad UUID are refused before anything is
/// asked or written.
#[test]
fn bad_options_are_refused_first() {
    let (sc, bytes, dev) = device_with_data(20 << 20, "untouched");
    let pw = sc.p("pw");
    let cases: &[(&[&str], &str)] = &[
        (&["--type", "luks1", "--sector-size", "4096"], "needs LUKS2"),
        (&["--type", "luks1", "--pbkdf", "argon2id"], "pbkdf2 only"),
        (&["-c", "aes-nope-plain64"], "aes-nope-plain64"),
        (&["-s", "100"], "key size"),
        (&["--uuid", "not-a-uuid"], "not a valid UUID"),
        (&["--type", "luks3"], "luks3"),
        (&["--luks2-metadata-size", "20k"], "metadata size"),
        (&["--type", "luks1", "--offset", "96"], "overlaps"),
        (&["--type", "luks1", "--offset", "100"], "multiple of 4096"),
    ];
    for (extra, msg) in cases {
        let mut args = vec!["luks", "format", "-q", "--key-file", &pw];
        args.extend_from_slice(extra);
        args.push(&dev);
        vmcrypt(&args).failed().stderr_has(msg);
        assert_same_bytes("a refused format", &sc.read("d.img"), &bytes);
    }
}

/// A loop device detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = tool("losetup", &["-d", &self.0]);
    }
}

/// A block device (a loop device over a file) keeps its size too, cryptsetup opens the
/// result, and `luks open` serves it.
#[test]
fn formats_a_block_device_in_place() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let file = sc.sparse("backing.img", 20 * MIB);
    let dev = tool("losetup", &["-f", "--show", &file]).ok().stdout_str();
    let lo = Loop(dev.trim().to_string());
    let size = || tool("blockdev", &["--getsize64", &lo.0]).ok().stdout_str();
    assert_eq!(size().trim(), (20 * MIB).to_string());
    let mut argv = vec![
        "luks".to_string(),
        "format".into(),
        "--pbkdf".into(),
        "pbkdf2".into(),
    ];
    argv.extend(quick(&sc));
    argv.push(lo.0.clone());
    vmcrypt(&strs(&argv)).ok();
    assert_eq!(
        size().trim(),
        (20 * MIB).to_string(),
        "the block device changed size"
    );
    cs_test_pass(&sc, "pw", &lo.0, &[]).ok();
    let vm_layout = layout_of(&lo.0);
    assert_eq!(vm_layout.1, 16 * MIB);
    // cryptsetup picks the sector size from the block device (512 on a loop device
    // with 512-byte physical blocks), not 4096 as on a file.
    let mut cs_argv = vec!["luksFormat", "--pbkdf", "pbkdf2"];
    let q = quick(&sc);
    cs_argv.extend(strs(&q));
    cs_argv.push(&lo.0);
    cryptsetup(&cs_argv).ok();
    assert_eq!(
        vm_layout,
        layout_of(&lo.0),
        "vmcrypt (left) and cryptsetup (right)"
    );
    vmcrypt(&strs(&argv)).ok();
    let run = sc.p("run");
    let pw = sc.p("pw");
    vmcrypt(&[
        "luks",
        "open",
        &lo.0,
        "blk",
        "--run-dir",
        &run,
        "--key-file",
        &pw,
    ])
    .ok();
    let uri = format!("nbd+unix:///?socket={run}/blk.sock");
    let served = tool("nbdinfo", &["--size", &uri]);
    vmcrypt(&["luks", "close", "blk", "--run-dir", &run]).ok();
    assert_eq!(served.ok().stdout_str().trim(), (4 * MIB).to_string());
}
