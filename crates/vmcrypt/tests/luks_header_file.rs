//! A detached LUKS header file on its own (`cryptsetup luksFormat --header hdr.img
//! data.img`), LUKS1 and LUKS2: cryptsetup dumps it, tests keys on it and changes its
//! key slots without the data file, and so must vmcrypt; only opening the data needs the
//! data file (qemu-img refuses the LUKS1 header file as an image too). A header file
//! whose payload offset lies beyond its end dumps as well (issue 10 item 4).
mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// `cryptsetup luksFormat --type TYPE --header HDR DATA` with a fast PBKDF2 and `extra`.
fn cs_detached(sc: &Scratch, ty: &str, hdr: &str, data: &str, extra: &[&str]) {
    let mut args = vec!["luksFormat", "-q", "--type", ty, "--pbkdf", "pbkdf2"];
    args.extend(["--pbkdf-force-iterations", "1000", "--key-file"]);
    let pw = sc.p("pw");
    args.extend([pw.as_str(), "--header", hdr]);
    args.extend_from_slice(extra);
    args.push(data);
    cryptsetup(&args).ok();
}

#[test]
fn header_file_alone_dumps_and_takes_key_slot_changes() {
    for ty in ["luks1", "luks2"] {
        let sc = Scratch::new();
        sc.write("pw", PASS);
        sc.write("pw2", PASS2);
        let data = sc.sparse("data.img", 4 * MIB);
        let hdr = sc.p("hdr.img");
        cs_detached(&sc, ty, &hdr, &data, &[]);

        let theirs = cryptsetup(&["luksDump", &hdr]).ok().stdout_str();
        let ours = vmcrypt(&["luks", "dump", &hdr]).ok().stdout_str();
        assert_eq!(
            dump_field(&ours, "UUID"),
            dump_field(&theirs, "UUID"),
            "{ty}"
        );
        if ty == "luks1" {
            assert_eq!(dump_field(&theirs, "Payload offset"), "0");
            assert_eq!(dump_field(&ours, "Payload offset"), "0");
        } else {
            assert_eq!(
                dump_field(&ours, "\toffset"),
                dump_field(&theirs, "\toffset")
            );
        }
        vmcrypt(&["luks", "is-luks", &hdr]).ok();

        // Key slots on the header file alone, checked by cryptsetup on it alone.
        vm_test_key(&sc, "pw", &hdr, &[]).ok();
        vmcrypt_add_key(&sc, "pw", &hdr, "pw2", &["--pbkdf", "pbkdf2"]).ok();
        cs_test_pass(&sc, "pw2", &hdr, &[]).ok();
        vm_test_key(&sc, "pw2", &hdr, &[]).ok();

        // Data needs the data file: the header file alone is no image.
        let e = vmcrypt(&["info", &hdr]).failed();
        assert!(e.stderr.contains("detached header"), "{ty}: {}", e.stderr);
        if ty == "luks1" {
            qemu_img(&["info", &hdr]).failed();
        }
        let plain = plaintext(MIB as usize, "header-file");
        sc.write("plain.raw", &plain);
        write_into_luks(vmcrypt, &sc, "pw2", "plain.raw", &data, Some(&hdr));
        let back = decrypt_luks(vmcrypt, &sc, "pw", &data, Some(&hdr), "back.raw");
        assert_same_bytes(ty, &back[..plain.len()], &plain);
        if ty == "luks1" {
            let q = decrypt_luks(qemu_img, &sc, "pw", &data, Some(&hdr), "q.raw");
            assert_same_bytes("qemu-img", &q[..plain.len()], &plain);
        }
    }
}

/// A LUKS1 header file cut to its key material, its payload offset (4 MiB) past its end
/// (`--offset 8192`): cryptsetup and vmcrypt both dump it and unlock its key slot.
#[test]
fn header_file_shorter_than_its_payload_offset_dumps() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let data = sc.sparse("data.img", 8 * MIB);
    let hdr = sc.p("hdr.img");
    cs_detached(&sc, "luks1", &hdr, &data, &["--offset", "8192"]);
    // Slot 7's key material (64-byte key x 4000 stripes) starts at 4096 + 7 * 258048.
    let end = 4096 + 7 * 258048 + 256000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hdr)
        .unwrap()
        .set_len(end)
        .unwrap();
    let theirs = cryptsetup(&["luksDump", &hdr]).ok().stdout_str();
    let ours = vmcrypt(&["luks", "dump", &hdr]).ok().stdout_str();
    assert_eq!(dump_field(&theirs, "Payload offset"), "8192");
    assert_eq!(dump_field(&ours, "Payload offset"), "8192");
    cs_test_pass(&sc, "pw", &hdr, &[]).ok();
    vm_test_key(&sc, "pw", &hdr, &[]).ok();
    // One byte less cuts slot 7's key material: both refuse.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hdr)
        .unwrap()
        .set_len(end - 1)
        .unwrap();
    cryptsetup(&["luksDump", &hdr]).failed();
    vmcrypt(&["luks", "dump", &hdr]).failed();
}
