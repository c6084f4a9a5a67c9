//! Detached LUKS1 headers across tools: a header file plus a data file whose ciphertext
//! starts at byte 0. vmcrypt-made ones must open in qemu-img and cryptsetup; QEMU- and
//! cryptsetup-made ones must open, read and write in vmcrypt. Also the virtual size of
//! LUKS1 files (detached or not) whose size is not a multiple of 512.
//!
//! A missing qemu-img or cryptsetup fails these tests (see `common::require_tool`).
mod common;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn vmcrypt_detached_header_opens_in_qemu_and_cryptsetup() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    sc.write("wrong", WRONG);
    vmcrypt_detached_header(&sc, "pw", "hdr.img");
    let (hdr, data) = (sc.p("hdr.img"), sc.sparse("data.img", MIB as u64));
    let dump = cryptsetup(&["luksDump", &hdr]).ok().stdout_str();
    assert_eq!(dump_field(&dump, "Payload offset"), "0", "{dump}");

    let plain = plaintext(MIB, "detached-vm");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &data, Some(&hdr));
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        MIB as u64,
        "data file size"
    );
    let disk = sc.read("data.img");
    assert_ne!(
        &disk[..512],
        &plain[..512],
        "sector 0 is not encrypted at data offset 0"
    );

    let back = decrypt_luks(qemu_img, &sc, "pw", &data, Some(&hdr), "back.raw");
    assert_same_bytes("qemu-img reading a vmcrypt detached image", &back, &plain);
    cs_test_pass(&sc, "pw", &data, &["--header", &hdr]).ok();
    cs_test_pass(&sc, "wrong", &data, &["--header", &hdr]).code_is(2);
    vm_test_key(&sc, "pw", &data, &["--header", &hdr]).ok();
}

#[test]
fn qemu_detached_vector_reads_and_writes_in_vmcrypt() {
    let sc = Scratch::new();
    sc.write("pw", b"detached-pass");
    // Work on copies: the vectors are read-only references.
    let hdr = sc.write(
        "hdr",
        &read(shared("vectors/qemu/luks1-detached.hdr").as_ref()),
    );
    let data = sc.write(
        "data",
        &read(shared("vectors/qemu/luks1-detached.data").as_ref()),
    );
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &data, Some(&hdr), "ours.raw");
    assert_same_bytes(
        "vmcrypt reading QEMU's detached vector",
        &ours,
        &plaintext(MIB / 2, "H"),
    );
    vm_test_key(&sc, "pw", &data, &["--header", &hdr]).ok();

    let plain = plaintext(MIB / 2, "detached-rewrite");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &data, Some(&hdr));
    let back = decrypt_luks(qemu_img, &sc, "pw", &data, Some(&hdr), "back.raw");
    assert_same_bytes(
        "qemu-img reading what vmcrypt wrote into QEMU's detached image",
        &back,
        &plain,
    );
}

#[test]
fn cryptsetup_detached_header_reads_and_writes_in_vmcrypt() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let data = sc.sparse("data.img", MIB as u64);
    let hdr = sc.p("hdr.img");
    cs_format(
        &sc,
        "pw",
        &data,
        &["--header", &hdr, "-c", "aes-xts-plain64", "-s", "512"],
    );
    vm_test_key(&sc, "pw", &data, &["--header", &hdr]).ok();

    let plain = plaintext(MIB, "cs-detached");
    sc.write("plain.raw", &plain);
    write_into_luks(qemu_img, &sc, "pw", "plain.raw", &data, Some(&hdr));
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &data, Some(&hdr), "ours.raw");
    assert_same_bytes(
        "vmcrypt reading qemu-img's write to a cryptsetup detached image",
        &ours,
        &plain,
    );

    let plain2 = plaintext(MIB, "cs-detached-2");
    sc.write("plain2.raw", &plain2);
    write_into_luks(vmcrypt, &sc, "pw", "plain2.raw", &data, Some(&hdr));
    let back = decrypt_luks(qemu_img, &sc, "pw", &data, Some(&hdr), "back.raw");
    assert_same_bytes("qemu-img reading vmcrypt's write", &back, &plain2);
    cs_test_pass(&sc, "pw", &data, &["--header", &hdr]).ok();

    // Key slots through the detached header: vmcrypt adds, cryptsetup opens.
    sc.write("pw2", PASS2);
    vmcrypt_add_key(&sc, "pw", &data, "pw2", &["--header", &hdr]).ok();
    cs_test_pass(&sc, "pw2", &data, &["--header", &hdr]).ok();
}

/// A LUKS1 image or detached data file whose size is not a multiple of 512: qemu-img
/// counts the last partial sector as a whole one (its block layer rounds every file up
/// to 512 bytes; the missing bytes read as zeros before decryption), so the virtual size
/// is round_up(file, 512) - payload offset. vmcrypt must report the same size and read
/// the same bytes, the partial sector included (issue 10 item 14).
#[test]
fn odd_sized_luks1_has_qemu_imgs_virtual_size_and_bytes() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let secret = sc.secret("s0", "pw");
    // Attached: QEMU-made, filled by qemu-io, cut 300 bytes into its last sector.
    let img = sc.p("odd.luks");
    #[rustfmt::skip]
    qemu_img(&["create", "-q", "--object", &secret, "-f", "luks", "-o",
        "key-secret=s0,iter-time=10", &img, "1M"]).ok();
    // Detached: cryptsetup-made header over a 192 KiB data file, cut to 197000 bytes.
    let data = sc.sparse("odd.data", 192 * 1024);
    let hdr = sc.p("odd.hdr");
    cs_format(&sc, "pw", &data, &["--header", &hdr]);
    for (file, header, cut) in [(&img, None, 300u64), (&data, Some(hdr.as_str()), 0)] {
        let opts = luks_opts("s0", file, header);
        #[rustfmt::skip]
        qemu_io(&["--object", &secret, "--image-opts", &opts, "-c", "write -P 0xa7 0 192k"]).ok();
        let len = std::fs::metadata(file).unwrap().len();
        let new_len = if cut > 0 { len - cut } else { 197000 };
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(new_len)
            .unwrap();
        let info = |tool: Tool| {
            tool(&[
                "info",
                "--output=json",
                "--object",
                &secret,
                "--image-opts",
                &opts,
            ])
            .ok()
            .json()
        };
        let (ours, theirs) = (info(vmcrypt), info(qemu_img));
        let payload = theirs["format-specific"]["data"]["payload-offset"]
            .as_u64()
            .unwrap();
        let ours = ours["virtual-size"].as_u64().unwrap();
        assert_eq!(ours, theirs["virtual-size"].as_u64().unwrap(), "{file}");
        assert_eq!(ours, new_len.div_ceil(512) * 512 - payload, "{file}");
        let want = decrypt_luks(qemu_img, &sc, "pw", file, header, "q.raw");
        let got = decrypt_luks(vmcrypt, &sc, "pw", file, header, "v.raw");
        assert_eq!(got.len() as u64, ours);
        assert_same_bytes(&format!("{file} read by vmcrypt and qemu-img"), &got, &want);
    }
}
