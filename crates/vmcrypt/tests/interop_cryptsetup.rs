//! Live interop with the real `cryptsetup` (no device-mapper here, so only header and
//! key-slot commands): cryptsetup-formatted images decrypt in vmcrypt; key slots added,
//! killed, changed and removed by one tool behave so in the other; header backups made by
//! either tool restore with the other and are byte-identical.
//!
//! A missing cryptsetup or qemu-img fails these tests (see `common::require_tool`).
mod common;

use common::*;

const MIB: usize = 1 << 20;

/// The payload offset in bytes cryptsetup reports for `img`.
fn cs_payload_offset(img: &str) -> usize {
    let dump = cryptsetup(&["luksDump", img]).ok().stdout_str();
    dump_field(&dump, "Payload offset")
        .parse::<usize>()
        .unwrap()
        * 512
}

/// A cryptsetup-formatted image of `payload` virtual bytes (file = payload + 2 MiB, so
/// with cryptsetup's 1 MiB alignment the payload sits at 2 MiB for most key sizes).
fn cs_image(sc: &Scratch, name: &str, payload: usize, args: &[&str]) -> (String, usize) {
    let img = sc.sparse(name, (payload + 2 * MIB) as u64);
    cs_format(sc, "pw", &img, args);
    let virt = payload + 2 * MIB - cs_payload_offset(&img);
    (img, virt)
}

/// Test 2 (cryptsetup side): cryptsetup formats, qemu-img writes, vmcrypt must read the
/// same bytes; and vmcrypt writes, qemu-img must read them.
fn cryptsetup_to_vmcrypt(cipher: &str, bits: &str, hash: &str) {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let (img, virt) = cs_image(&sc, "cs.img", MIB, &["-c", cipher, "-s", bits, "-h", hash]);
    let plain = plaintext(virt, &format!("cs {cipher} {bits} {hash}"));
    sc.write("plain.raw", &plain);
    write_into_luks(qemu_img, &sc, "pw", "plain.raw", &img, None);
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "ours.raw");
    assert_same_bytes("vmcrypt reading what qemu-img wrote", &ours, &plain);

    let plain2 = plaintext(virt, &format!("cs2 {cipher} {bits} {hash}"));
    sc.write("plain2.raw", &plain2);
    write_into_luks(vmcrypt, &sc, "pw", "plain2.raw", &img, None);
    let theirs = decrypt_luks(qemu_img, &sc, "pw", &img, None, "theirs.raw");
    assert_same_bytes("qemu-img reading what vmcrypt wrote", &theirs, &plain2);
    // Writing data must not have touched the header: cryptsetup still opens it.
    cs_test_pass(&sc, "pw", &img, &[]).ok();
}

mod cryptsetup_formats {
    use super::*;
    #[test]
    fn aes_xts_plain64_512_sha256() {
        cryptsetup_to_vmcrypt("aes-xts-plain64", "512", "sha256");
    }
    #[test]
    fn aes_xts_plain64_256_sha1() {
        cryptsetup_to_vmcrypt("aes-xts-plain64", "256", "sha1");
    }
    #[test]
    fn aes_cbc_essiv_sha256_256_sha512() {
        cryptsetup_to_vmcrypt("aes-cbc-essiv:sha256", "256", "sha512");
    }
    #[test]
    fn aes_cbc_plain64_128_ripemd160() {
        cryptsetup_to_vmcrypt("aes-cbc-plain64", "128", "ripemd160");
    }
    #[test]
    fn aes_cbc_plain_256_sha384() {
        cryptsetup_to_vmcrypt("aes-cbc-plain", "256", "sha384");
    }
}

/// The volume key cryptsetup reveals for `img` with key file `pw`.
fn cs_volume_key(sc: &Scratch, img: &str) -> String {
    let kf = sc.p("pw");
    let dump = cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        &kf,
        img,
    ])
    .ok()
    .stdout_str();
    let start = dump.find("MK dump:").expect("MK dump line");
    dump[start + 8..]
        .lines()
        .take_while(|l| l.starts_with('\t') || l.starts_with(' ') || l.contains(' '))
        .flat_map(|l| l.split_whitespace())
        .take_while(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

/// Decrypt `ct` with the openssl CLI (`openssl enc -d -CIPHER -K KEY [-iv IV] -nopad`).
fn openssl_decrypt(sc: &Scratch, cipher: &str, key: &str, iv: Option<&str>, ct: &[u8]) -> Vec<u8> {
    let inp = sc.write("ct.bin", ct);
    let outp = sc.p("pt.bin");
    let mut args = vec![
        "enc", "-d", cipher, "-K", key, "-nopad", "-in", &inp, "-out", &outp,
    ];
    if let Some(iv) = iv {
        args.extend_from_slice(&["-iv", iv]);
    }
    tool("openssl", &args).ok();
    sc.read("pt.bin")
}

/// Suites QEMU cannot open (cryptsetup's IV-less "ecb", and 192-bit CBC): vmcrypt writes
/// through its luks driver and the openssl CLI, keyed with the volume key cryptsetup
/// reveals, must decrypt the payload to the plaintext.
#[test]
fn cryptsetup_ecb_without_iv_checked_with_openssl() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let (img, virt) = cs_image(&sc, "ecb.img", MIB, &["-c", "aes-ecb", "-s", "128"]);
    let plain = plaintext(virt, "ecb");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &img, None);
    let key = cs_volume_key(&sc, &img);
    assert_eq!(key.len(), 32, "128-bit key: {key}");
    let off = cs_payload_offset(&img);
    let disk = sc.read("ecb.img");
    let pt = openssl_decrypt(&sc, "-aes-128-ecb", &key, None, &disk[off..off + virt]);
    assert_same_bytes(
        "openssl decryption of vmcrypt's aes-ecb payload",
        &pt,
        &plain,
    );
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "ours.raw");
    assert_same_bytes("vmcrypt round trip", &ours, &plain);
}

#[test]
fn cryptsetup_aes192_cbc_plain_checked_with_openssl() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let (img, virt) = cs_image(&sc, "c192.img", MIB, &["-c", "aes-cbc-plain", "-s", "192"]);
    let plain = plaintext(virt, "cbc192");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &img, None);
    let key = cs_volume_key(&sc, &img);
    assert_eq!(key.len(), 48, "192-bit key: {key}");
    let off = cs_payload_offset(&img);
    let disk = sc.read("c192.img");
    for sector in [0usize, 1, 300, 1500, virt / 512 - 1] {
        let iv = format!(
            "{}{}",
            hex::encode((sector as u32).to_le_bytes()),
            "0".repeat(24)
        );
        let at = off + sector * 512;
        let pt = openssl_decrypt(&sc, "-aes-192-cbc", &key, Some(&iv), &disk[at..at + 512]);
        assert_same_bytes(
            &format!("openssl decryption of sector {sector}"),
            &pt,
            &plain[sector * 512..(sector + 1) * 512],
        );
    }
}

/// A vmcrypt-made AES-XTS image (cryptsetup can check passphrases on it) with 1 MiB of
/// data; returns its path.
fn vm_image(sc: &Scratch) -> String {
    sc.write("pw", PASS);
    sc.write("pw2", PASS2);
    sc.write("pw3", PASS3);
    sc.write("plain.raw", &plaintext(MIB, "slots"));
    vmcrypt_encrypt(sc, "pw", "plain.raw", "img.luks", "");
    sc.p("img.luks")
}

/// The data still decrypts (in qemu-img) with `keyfile`.
fn data_intact(sc: &Scratch, keyfile: &str, img: &str) {
    let back = decrypt_luks(qemu_img, sc, keyfile, img, None, "check.raw");
    assert_same_bytes(
        "payload after key-slot changes",
        &back,
        &sc.read("plain.raw"),
    );
}

fn slot_state(img: &str, slot: usize) -> String {
    let dump = cryptsetup(&["luksDump", img]).ok().stdout_str();
    dump_field(&dump, &format!("Key Slot {slot}"))
}

#[test]
fn vmcrypt_add_key_opens_in_cryptsetup() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    vmcrypt_add_key(&sc, "pw", &img, "pw2", &[])
        .ok()
        .stderr_has("key slot 1");
    assert_eq!(slot_state(&img, 1), "ENABLED");
    cs_test_pass(&sc, "pw2", &img, &[]).ok();
    cs_test_pass(&sc, "pw2", &img, &["--key-slot", "1"]).ok();
    cs_test_pass(&sc, "pw2", &img, &["--key-slot", "0"]).failed();
    cs_test_pass(&sc, "pw", &img, &["--key-slot", "0"]).ok();
    // An explicit slot number.
    vmcrypt(&[
        "luks",
        "add-key",
        "--key-file",
        &sc.p("pw"),
        "--key-slot",
        "6",
        "--pbkdf-force-iterations",
        "1000",
        "--new-key-file",
        &sc.p("pw3"),
        &img,
    ])
    .ok();
    assert_eq!(slot_state(&img, 6), "ENABLED");
    cs_test_pass(&sc, "pw3", &img, &["--key-slot", "6"]).ok();
    data_intact(&sc, "pw3", &img);
}

#[test]
fn vmcrypt_kill_slot_closes_in_cryptsetup() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    let kf = sc.p("pw");
    cs_new_key(&sc, "luksAddKey", "pw", &img, "pw2", &[]).ok();
    cs_test_pass(&sc, "pw2", &img, &[]).ok();
    vmcrypt(&["luks", "kill-slot", "--key-file", &kf, &img, "1"]).ok();
    assert_eq!(slot_state(&img, 1), "DISABLED");
    cs_test_pass(&sc, "pw2", &img, &[]).code_is(2);
    cs_test_pass(&sc, "pw", &img, &[]).ok();
    data_intact(&sc, "pw", &img);
}

#[test]
fn cryptsetup_add_key_opens_in_vmcrypt() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    cs_new_key(&sc, "luksAddKey", "pw", &img, "pw2", &["--key-slot", "3"]).ok();
    vm_test_key(&sc, "pw2", &img, &[]).ok().stderr_has("slot 3");
    vm_test_key(&sc, "pw2", &img, &["--key-slot", "3"]).ok();
    vm_test_key(&sc, "pw2", &img, &["--key-slot", "0"]).code_is(2);
    let back = decrypt_luks(vmcrypt, &sc, "pw2", &img, None, "back.raw");
    assert_same_bytes(
        "vmcrypt decrypting with the cryptsetup-added key",
        &back,
        &sc.read("plain.raw"),
    );
}

#[test]
fn cryptsetup_kill_slot_refused_by_vmcrypt() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    let kf = sc.p("pw");
    vmcrypt_add_key(&sc, "pw", &img, "pw2", &[]).ok();
    vm_test_key(&sc, "pw2", &img, &[]).ok();
    cryptsetup(&["luksKillSlot", "--batch-mode", "--key-file", &kf, &img, "1"]).ok();
    vm_test_key(&sc, "pw2", &img, &[]).code_is(2);
    vm_test_key(&sc, "pw2", &img, &["--key-slot", "1"]).code_is(2);
    luks_to_raw(vmcrypt, &sc, "pw2", &img, "never.raw").code_is(2);
    vm_test_key(&sc, "pw", &img, &[]).ok();
}

#[test]
fn change_key_both_ways() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    // vmcrypt changes pw -> pw3; cryptsetup sees it.
    vmcrypt(&[
        "luks",
        "change-key",
        "--key-file",
        &sc.p("pw"),
        "--pbkdf-force-iterations",
        "1000",
        &img,
        &sc.p("pw3"),
    ])
    .ok();
    cs_test_pass(&sc, "pw", &img, &[]).code_is(2);
    cs_test_pass(&sc, "pw3", &img, &[]).ok();
    data_intact(&sc, "pw3", &img);
    // cryptsetup changes pw3 -> pw2; vmcrypt sees it.
    cs_new_key(&sc, "luksChangeKey", "pw3", &img, "pw2", &[]).ok();
    vm_test_key(&sc, "pw3", &img, &[]).code_is(2);
    vm_test_key(&sc, "pw2", &img, &[]).ok();
    let back = decrypt_luks(vmcrypt, &sc, "pw2", &img, None, "back.raw");
    assert_same_bytes(
        "after cryptsetup luksChangeKey",
        &back,
        &sc.read("plain.raw"),
    );
}

#[test]
fn remove_key_both_ways() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    for extra in ["pw2", "pw3"] {
        cs_new_key(&sc, "luksAddKey", "pw", &img, extra, &[]).ok();
    }
    // vmcrypt removes pw2's slot; cryptsetup no longer opens it.
    vmcrypt(&["luks", "remove-key", &img, &sc.p("pw2")]).ok();
    cs_test_pass(&sc, "pw2", &img, &[]).code_is(2);
    cs_test_pass(&sc, "pw3", &img, &[]).ok();
    // cryptsetup removes pw3's slot; vmcrypt no longer opens it.
    cryptsetup(&[
        "luksRemoveKey",
        "--batch-mode",
        "--key-file",
        &sc.p("pw3"),
        &img,
    ])
    .ok();
    vm_test_key(&sc, "pw3", &img, &[]).code_is(2);
    vm_test_key(&sc, "pw", &img, &[]).ok();
    assert_eq!(slot_state(&img, 0), "ENABLED");
    assert_eq!(slot_state(&img, 1), "DISABLED");
    assert_eq!(slot_state(&img, 2), "DISABLED");
    data_intact(&sc, "pw", &img);
}

/// Overwrite the first `len` bytes of `path` with a pattern (destroying the header).
fn destroy_header(path: &str, len: usize) {
    let mut b = std::fs::read(path).unwrap();
    for (i, x) in b[..len].iter_mut().enumerate() {
        *x = (i * 7 + 3) as u8;
    }
    std::fs::write(path, b).unwrap();
}

/// End of the LUKS1 header area (phdr + all key material) of `img`: what a header
/// backup must hold and a restore must write. Key offsets come from `qemu-img info`
/// (cryptsetup's luksDump omits them for disabled slots), the key size from luksDump.
fn header_area_end(img: &str) -> usize {
    let dump = cryptsetup(&["luksDump", img]).ok().stdout_str();
    let key_bytes: usize = dump_field(&dump, "MK bits").parse::<usize>().unwrap() / 8;
    let info = qemu_img(&["info", "--output=json", "-f", "luks", img])
        .ok()
        .json();
    let slots = info["format-specific"]["data"]["slots"]
        .as_array()
        .expect("slots in qemu-img info")
        .clone();
    assert_eq!(slots.len(), 8);
    slots
        .iter()
        .map(|s| {
            s["key-offset"].as_u64().unwrap() as usize + (4000 * key_bytes).div_ceil(512) * 512
        })
        .max()
        .unwrap()
}

/// Header backups of `img` restore onto the destroyed image with the other tool, giving
/// the original bytes back; and backups made by both tools are byte-identical.
fn backup_restore(sc: &Scratch, img: &str, tag: &str) {
    let original = read(std::path::Path::new(img));
    let vb = sc.p(&format!("{tag}.vm-backup"));
    let cb = sc.p(&format!("{tag}.cs-backup"));
    vmcrypt(&["luks", "header-backup", img, "--header-backup-file", &vb]).ok();
    cryptsetup(&["luksHeaderBackup", img, "--header-backup-file", &cb]).ok();
    let area = header_area_end(img);

    destroy_header(img, area);
    vm_test_key(sc, "pw", img, &[]).failed();
    cryptsetup(&[
        "luksHeaderRestore",
        "--batch-mode",
        img,
        "--header-backup-file",
        &vb,
    ])
    .ok();
    assert_same_bytes(
        &format!("{tag}: image after cryptsetup restored vmcrypt's backup"),
        &read(img.as_ref()),
        &original,
    );

    destroy_header(img, area);
    cs_test_pass(sc, "pw", img, &[]).failed();
    vmcrypt(&[
        "luks",
        "header-restore",
        "--batch-mode",
        img,
        "--header-backup-file",
        &cb,
    ])
    .ok();
    assert_same_bytes(
        &format!("{tag}: image after vmcrypt restored cryptsetup's backup"),
        &read(img.as_ref()),
        &original,
    );

    // vmcrypt refuses to overwrite an existing backup file.
    vmcrypt(&["luks", "header-backup", img, "--header-backup-file", &vb]).failed();

    let (v, c) = (read(vb.as_ref()), read(cb.as_ref()));
    assert_eq!(
        c.len(),
        area.div_ceil(4096) * 4096,
        "{tag}: cryptsetup's backup is the header area rounded up to 4 KiB"
    );
    let common = v.len().min(c.len());
    assert_same_bytes(
        &format!("{tag}: the first {common} bytes of both backups"),
        &v[..common],
        &c[..common],
    );
    assert_eq!(
        v.len(),
        c.len(),
        "{tag}: backup lengths (vmcrypt vs cryptsetup)"
    );
    assert_same_bytes(
        &format!("{tag}: vmcrypt backup vs cryptsetup backup"),
        &v,
        &c,
    );
}

#[test]
fn header_backup_restore_vmcrypt_image() {
    let sc = Scratch::new();
    let img = vm_image(&sc);
    backup_restore(&sc, &img, "vm");
    data_intact(&sc, "pw", &img);
}

#[test]
fn header_backup_restore_cryptsetup_image() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let (img, virt) = cs_image(&sc, "cs.img", MIB, &["-c", "aes-xts-plain64", "-s", "256"]);
    let plain = plaintext(virt, "backup-cs");
    sc.write("plain.raw", &plain);
    write_into_luks(qemu_img, &sc, "pw", "plain.raw", &img, None);
    backup_restore(&sc, &img, "cs");
    let back = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "back.raw");
    assert_same_bytes("after restores", &back, &plain);
}

#[test]
fn header_backup_restore_qemu_image() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let plain = plaintext(MIB, "backup-qemu");
    sc.write("plain.raw", &plain);
    encrypt_raw(
        qemu_img,
        &sc,
        "pw",
        "plain.raw",
        ("luks", "key-secret=s0,iter-time=10"),
        "q.luks",
    )
    .ok();
    let img = sc.p("q.luks");
    backup_restore(&sc, &img, "qemu");
    let back = decrypt_luks(vmcrypt, &sc, "pw", &img, None, "back.raw");
    assert_same_bytes("after restores", &back, &plain);
}

/// A backup whose key size differs from the device's header is refused by both tools,
/// and the device is left untouched.
#[test]
fn header_restore_mismatch_refused() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let (a, _) = cs_image(&sc, "a.img", MIB, &["-c", "aes-xts-plain64", "-s", "512"]);
    let (b, _) = cs_image(
        &sc,
        "b.img",
        MIB,
        &["-c", "aes-cbc-essiv:sha256", "-s", "128"],
    );
    let bb = sc.p("b.backup");
    cryptsetup(&["luksHeaderBackup", &b, "--header-backup-file", &bb]).ok();
    let before = sha256_file(a.as_ref());
    cryptsetup(&[
        "luksHeaderRestore",
        "--batch-mode",
        &a,
        "--header-backup-file",
        &bb,
    ])
    .failed();
    vmcrypt(&[
        "luks",
        "header-restore",
        "--batch-mode",
        &a,
        "--header-backup-file",
        &bb,
    ])
    .failed();
    assert_eq!(
        before,
        sha256_file(a.as_ref()),
        "a refused restore changed the device"
    );
}
