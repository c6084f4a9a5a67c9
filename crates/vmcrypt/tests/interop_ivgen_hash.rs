//! LUKS cipher modes with a hash after the IV generator ("xts-plain64:sha256"), as
//! qemu-img writes for `ivgen-hash-alg`, libvirt for `<ivgen name='plain64' hash=...>`
//! and cryptsetup for `-c aes-xts-plain64:sha256` (issue 10, items 1 and 2).
//!
//! For every IV generator and hash qemu-img accepts, both directions: a qemu-img-made
//! image opens in vmcrypt (test-key, dump, info, convert: the same plaintext), and
//! vmcrypt writes the same cipher-mode bytes qemu-img writes for the same `-o` options
//! and its image decrypts to the same plaintext in qemu-img. The hash changes no IV for
//! plain/plain64 (QEMU and dm-crypt ignore it), which the plaintext comparisons prove.
//! cryptsetup-made images with hashed generators (the ones this machine's cryptsetup can
//! write without device-mapper) open in vmcrypt, and vmcrypt-made ones in cryptsetup.
mod common;

use common::*;

const SIZE: usize = 256 * 1024;
/// The hashes QEMU 10 accepts for `ivgen-hash-alg` (its QCryptoHashAlgo).
const QEMU_HASHES: [&str; 8] = [
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "sm3",
];

/// One set of QEMU LUKS cipher options.
type Combo = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// (cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg): every generator QEMU has and
/// every hash it accepts (each hash after plain64; plain, which QEMU parses the same way,
/// with two; ESSIV with the digests that are AES key sizes), plus libvirt's example
/// (twofish-256 cbc plain64:sha256). Every qemu-img create spends about a second of CPU
/// calibrating PBKDF2 whatever iter-time says, hence not the full cross product.
fn qemu_combinations() -> Vec<Combo> {
    let mut v: Vec<Combo> = QEMU_HASHES
        .iter()
        .map(|&h| ("aes-256", "xts", "plain64", Some(h)))
        .collect();
    v.push(("aes-256", "xts", "plain", Some("sha256")));
    v.push(("aes-256", "xts", "plain", Some("sm3")));
    for h in [None, Some("md5"), Some("sha256"), Some("sm3")] {
        v.push(("aes-256", "xts", "essiv", h));
    }
    v.push(("twofish-256", "cbc", "plain64", Some("sha256")));
    v
}

fn luks_o(alg: &str, mode: &str, iv: &str, hash: Option<&str>) -> String {
    let mut o = format!("key-secret=s0,cipher-alg={alg},cipher-mode={mode},ivgen-alg={iv}");
    if let Some(h) = hash {
        o += &format!(",ivgen-hash-alg={h}");
    }
    o
}

/// The LUKS1 `cipher_mode` field (bytes 40..72, NUL-padded) of the image file `path`.
fn cipher_mode_field(path: &str) -> String {
    let bytes = read(std::path::Path::new(path));
    let field = &bytes[40..72];
    let end = field.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8(field[..end].to_vec()).unwrap()
}

/// `TOOL info --output=json IMG`'s `format-specific` object.
fn format_specific(tool: Tool, img: &str) -> serde_json::Value {
    tool(&["info", "--output=json", img]).ok().json()["format-specific"].clone()
}

#[test]
fn every_qemu_ivgen_hash_opens_both_ways_with_the_same_plaintext() {
    let combos = qemu_combinations();
    // Two workers: qemu-img's calibration is CPU time, not I/O.
    let (a, b) = combos.split_at(combos.len() / 2);
    std::thread::scope(|s| {
        let t = s.spawn(|| both_ways(a));
        both_ways(b);
        t.join().unwrap();
    });
}

/// The checks of the test above for each of `combos`, in a scratch dir of its own.
fn both_ways(combos: &[Combo]) {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "ivgen-hash");
    sc.write("plain.raw", &plain);
    for &(alg, mode, iv, hash) in combos {
        let o = luks_o(alg, mode, iv, hash);
        let what = format!("{alg} {mode} {iv} {hash:?}");
        // qemu-img makes it; vmcrypt opens it.
        let q = sc.p("q.luks");
        let _ = std::fs::remove_file(&q);
        let qo = format!("{o},iter-time=10");
        encrypt_raw(qemu_img, &sc, "pw", "plain.raw", ("luks", &qo), "q.luks").ok();
        let qemu_mode = cipher_mode_field(&q);
        let want_mode = match (iv, hash) {
            ("essiv", None) => format!("{mode}-essiv:sha256"),
            (_, Some(h)) => format!("{mode}-{iv}:{h}"),
            (_, None) => format!("{mode}-{iv}"),
        };
        assert_eq!(qemu_mode, want_mode, "{what}: qemu-img's cipher mode");
        vm_test_key(&sc, "pw", &q, &[]).ok();
        let dump = vmcrypt(&["luks", "dump", &q]).ok().stdout_str();
        assert_eq!(dump_field(&dump, "Cipher mode"), qemu_mode, "{what}: dump");
        assert_eq!(
            format_specific(vmcrypt, &q),
            format_specific(qemu_img, &q),
            "{what}: info format-specific"
        );
        let got = decrypt_luks(vmcrypt, &sc, "pw", &q, None, "q-by-vm.raw");
        assert_same_bytes(&format!("{what}: qemu-made, read by vmcrypt"), &got, &plain);

        // vmcrypt makes it from the same options; qemu-img opens it.
        let v = sc.p("v.luks");
        let _ = std::fs::remove_file(&v);
        let vo = format!("{o},iterations=1000");
        encrypt_raw(vmcrypt, &sc, "pw", "plain.raw", ("luks", &vo), "v.luks").ok();
        assert_eq!(
            cipher_mode_field(&v),
            qemu_mode,
            "{what}: vmcrypt's cipher mode"
        );
        let (ours, theirs) = (format_specific(vmcrypt, &v), format_specific(qemu_img, &v));
        for field in ["cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg"] {
            assert_eq!(
                ours["data"][field], theirs["data"][field],
                "{what}: {field}"
            );
        }
        let got = decrypt_luks(qemu_img, &sc, "pw", &v, None, "v-by-qemu.raw");
        assert_same_bytes(
            &format!("{what}: vmcrypt-made, read by qemu-img"),
            &got,
            &plain,
        );
    }
}

/// qemu-io writes known plaintext into a qemu-img-made `plain64:sha256` image; vmcrypt
/// reads it back, and reads the same ciphertext as a `plain64` image would give (the hash
/// is ignored for the IV, as QEMU's source says and this shows).
#[test]
fn qemu_io_writes_plain64_sha256_and_vmcrypt_reads_it() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    let img = sc.p("x.luks");
    #[rustfmt::skip]
    qemu_img(&["create", "-q", "--object", &secret, "-f", "luks", "-o",
        "key-secret=s0,cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,ivgen-hash-alg=sha256,iter-time=10",
        &img, "1M"]).ok();
    let opts = luks_opts("s0", &img, None);
    #[rustfmt::skip]
    qemu_io(&["--object", &secret, "--image-opts", &opts,
        "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xc3 512k 4k"]).ok();
    vm_test_key(&sc, "pw", &img, &[]).ok();
    let got = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "out.raw");
    let mut want = vec![0u8; 1 << 20];
    want[..64 * 1024].fill(0x5a);
    want[512 * 1024..516 * 1024].fill(0xc3);
    // Sectors qemu-io never wrote hold whatever the zero ciphertext decrypts to.
    let written = |i: usize| i < 64 * 1024 || (512 * 1024..516 * 1024).contains(&i);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if written(i) {
            assert_eq!(g, w, "byte {i}");
        }
    }
    // Same volume key with the hash removed from the mode: the same plaintext.
    let mut bytes = sc.read("x.luks");
    bytes[40..72].fill(0);
    bytes[40..51].copy_from_slice(b"xts-plain64");
    sc.write("bare.luks", &bytes);
    let bare = decrypt_luks(vmcrypt, &sc, "pw", &sc.p("bare.luks"), None, "bare.raw");
    assert_same_bytes("plain64 vs plain64:sha256", &bare, &got);
    let qemu = decrypt_luks(qemu_img, &sc, "pw", &sc.p("bare.luks"), None, "bare-q.raw");
    assert_same_bytes("qemu-img on the bare copy", &qemu, &got);
}

/// dm-crypt's generators QEMU lacks take the hash too (vmcrypt `-o ivgen-alg=benbi,
/// ivgen-hash-alg=sha256` writes "cbc-benbi:sha256"); cryptsetup reads every one and
/// unlocks the ones its userspace crypto can run without device-mapper.
#[test]
fn vmcrypt_dm_only_ivgens_with_hash_in_cryptsetup() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "dm-ivgen");
    sc.write("plain.raw", &plain);
    for (iv, unlock_here) in [("plain64be", false), ("benbi", true), ("null", false)] {
        let o = format!(
            "{},iterations=1000",
            luks_o("aes-256", "cbc", iv, Some("sha256"))
        );
        let name = format!("{iv}.luks");
        encrypt_raw(vmcrypt, &sc, "pw", "plain.raw", ("luks", &o), &name).ok();
        let img = sc.p(&name);
        let want = format!("cbc-{iv}:sha256");
        assert_eq!(cipher_mode_field(&img), want);
        let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
        assert_eq!(dump_field(&dump, "Cipher mode"), want, "{dump}");
        if unlock_here {
            cs_test_pass(&sc, "pw", &img, &[]).ok();
        }
        let got = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "out.raw");
        assert_same_bytes(&want, &got, &plain);
    }
}

/// cryptsetup-made LUKS1 and LUKS2 headers with hashed generators (those cryptsetup can
/// format here: benbi:HASH and essiv:sm3; plain64:HASH needs device-mapper to pass
/// cryptsetup's cipher check) open in vmcrypt, show their mode as written, and keep it
/// through a LUKS1 -> LUKS2 conversion; a cryptsetup-encrypted LUKS2 payload decrypts.
#[test]
fn cryptsetup_hashed_ivgens_open_in_vmcrypt() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    for cipher in [
        "aes-cbc-benbi:sha256",
        "aes-cbc-essiv:sm3",
        "aes-xts-benbi:sha1",
    ] {
        for ty in ["luks1", "luks2"] {
            let img = sc.sparse(&format!("{ty}-{cipher}.img"), 4 << 20);
            #[rustfmt::skip]
            cryptsetup(&["luksFormat", "-q", "--type", ty, "-c", cipher, "--pbkdf", "pbkdf2",
                "--pbkdf-force-iterations", "1000", "--key-file", &sc.p("pw"), &img]).ok();
            vm_test_key(&sc, "pw", &img, &[]).ok();
            let dump = vmcrypt(&["luks", "dump", &img]).ok().stdout_str();
            let shown = match ty {
                "luks1" => format!("aes-{}", dump_field(&dump, "Cipher mode")),
                _ => dump_field(&dump, "\tcipher"),
            };
            assert_eq!(shown, cipher, "{ty}: {dump}");
            if ty == "luks1" {
                vmcrypt(&["luks", "convert", "-q", "--type", "luks2", &img]).ok();
                let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
                assert_eq!(dump_field(&dump, "\tcipher"), cipher, "{dump}");
                cs_test_pass(&sc, "pw", &img, &[]).ok();
            }
        }
    }
    // A payload cryptsetup itself encrypted (userspace reencrypt) with benbi:sha256.
    let plain = plaintext(SIZE, "cs-benbi");
    let img = sc.write("enc.img", &plain);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&img)
        .unwrap()
        .set_len((SIZE + (2 << 20)) as u64)
        .unwrap();
    #[rustfmt::skip]
    cryptsetup(&["reencrypt", "-q", "--encrypt", "--type", "luks2", "-c", "aes-cbc-benbi:sha256",
        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", &sc.p("pw"),
        "--reduce-device-size", "2M", &img]).ok();
    let got = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "enc.raw");
    assert_same_bytes("cryptsetup benbi:sha256 payload", &got[..SIZE], &plain);
}

/// A vmcrypt-made `xts-plain64:sha256` image reads in cryptsetup (luksDump), survives a
/// LUKS1 -> LUKS2 conversion with the mode as written, and `qemu-args` hands it (and an
/// `essiv:sm3` one, a hash QEMU implements) to QEMU natively.
#[test]
fn plain64_sha256_dump_convert_and_qemu_args() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(SIZE, "p64-sha256");
    sc.write("plain.raw", &plain);
    let o = format!(
        "{},iterations=1000",
        luks_o("aes-256", "xts", "plain64", Some("sha256"))
    );
    encrypt_raw(vmcrypt, &sc, "pw", "plain.raw", ("luks", &o), "x.luks").ok();
    let img = sc.p("x.luks");
    let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    assert_eq!(dump_field(&dump, "Cipher mode"), "xts-plain64:sha256");
    let secret = sc.secret("s0", "pw");
    let args = vmcrypt(&["qemu-args", "--object", &secret, &img])
        .ok()
        .stdout_str();
    assert!(args.contains("driver"), "{args}");
    // ESSIV with SM3, which QEMU implements: qemu-args hands it to QEMU natively too.
    let o = format!(
        "{},iterations=1000",
        luks_o("aes-256", "xts", "essiv", Some("sm3"))
    );
    encrypt_raw(vmcrypt, &sc, "pw", "plain.raw", ("luks", &o), "sm3.luks").ok();
    let sm3 = sc.p("sm3.luks");
    let args = vmcrypt(&["qemu-args", "--object", &secret, &sm3])
        .ok()
        .stdout_str();
    assert!(args.contains("driver=luks"), "{args}");
    vmcrypt(&["luks", "convert", "-q", "--type", "luks2", &img]).ok();
    let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    assert_eq!(
        dump_field(&dump, "\tcipher"),
        "aes-xts-plain64:sha256",
        "{dump}"
    );
    let got = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "out.raw");
    assert_same_bytes("after conversion", &got, &plain);
    vmcrypt(&["luks", "convert", "-q", "--type", "luks1", &img]).ok();
    assert_eq!(cipher_mode_field(&img), "xts-plain64:sha256");
    let got = decrypt_luks(qemu_img, &sc, "pw", &img, None, "back.raw");
    assert_same_bytes("back to LUKS1, read by qemu-img", &got, &plain);
}
