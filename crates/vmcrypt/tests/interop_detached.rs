//! Detached LUKS1 headers across tools: a header file plus a data file whose ciphertext
//! starts at byte 0. vmcrypt-made ones must open in qemu-img and cryptsetup; QEMU- and
//! cryptsetup-made ones must open, read and write in vmcrypt.
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
