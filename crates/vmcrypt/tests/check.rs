//! `vmcrypt check`: LUKS headers are checked (LUKS2 copy damage is reported with exit 2
//! until `vmcrypt luks repair` fixes it); formats without checks exit 63 like qemu-img.
mod common;
use common::*;

#[test]
fn luks2_damaged_copy_is_reported_then_repaired() {
    let sc = Scratch::new();
    sc.write("pw", b"check-pass");
    let img = sc.p("d.luks2");
    vmcrypt(&[
        "create",
        "-q",
        "--object",
        &sc.secret("s0", "pw"),
        "-f",
        "luks2",
        "-o",
        "key-secret=s0,pbkdf=pbkdf2,iterations=1000",
        &img,
        "1M",
    ])
    .ok();
    vmcrypt(&["check", &img])
        .ok()
        .stdout_has("No errors were found");
    // Damage the secondary copy's JSON area (16 KiB + 5000).
    let mut bytes = sc.read("d.luks2");
    bytes[16384 + 5000] ^= 0xff;
    std::fs::write(sc.path("d.luks2"), &bytes).unwrap();
    let out = vmcrypt(&["check", &img]).code_is(2);
    assert!(
        out.stdout_str()
            .contains("secondary LUKS2 header copy is invalid"),
        "{}",
        out.describe()
    );
    let json = vmcrypt(&["check", "--output", "json", &img])
        .code_is(2)
        .json();
    assert_eq!(json["check-errors"], 1);
    // The data is still readable from the valid copy.
    vmcrypt(&["luks", "test-key", "--key-file", &sc.p("pw"), &img]).ok();
    vmcrypt(&["luks", "repair", &img]).ok();
    vmcrypt(&["check", &img])
        .ok()
        .stdout_has("No errors were found");
}

#[test]
fn raw_has_no_checks_and_garbage_is_corrupt() {
    let sc = Scratch::new();
    let raw = sc.sparse("r.raw", 1 << 20);
    vmcrypt(&["check", "-f", "raw", &raw]).code_is(63);
    let mut junk = vec![0u8; 1 << 20];
    junk[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
    let j = sc.write("j.luks", &junk);
    vmcrypt(&["check", "-f", "luks", &j])
        .code_is(2)
        .stdout_has("ERROR");
}
