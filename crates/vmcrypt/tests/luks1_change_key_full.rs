//! `luks change-key` on a LUKS1 header whose 8 key slots are all in use cannot add the
//! new key before removing the old one, so the only way is to rewrite the slot in place,
//! which an interruption turns into a lost slot. vmcrypt refuses that unless the user
//! passes `--force-in-place` (cryptsetup's luksChangeKey does it without asking); the
//! refusal changes no byte, and cryptsetup opens the result of a forced change.
mod common;
use common::*;

/// A LUKS1 image (cryptsetup-made) with `pw0` .. `pw7` in slots 0..7.
fn full_image(sc: &Scratch) -> String {
    for i in 0..8 {
        sc.write(&format!("pw{i}"), format!("passphrase {i}").as_bytes());
    }
    let img = sc.sparse("full.luks", 4 << 20);
    cs_format(sc, "pw0", &img, &[]);
    let kf = sc.p("pw0");
    for i in 1..8 {
        cryptsetup(&[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            &kf,
            &img,
            &sc.p(&format!("pw{i}")),
        ])
        .ok();
    }
    img
}

#[test]
fn change_key_with_every_slot_in_use_needs_consent() {
    let sc = Scratch::new();
    let img = full_image(&sc);
    sc.write("new", b"the new passphrase");
    let before = read(img.as_ref());
    let (old, new) = (sc.p("pw3"), sc.p("new"));
    let base = ["luks", "change-key", "--iter-time", "10", "--key-file"];
    let mut args = base.to_vec();
    args.extend([old.as_str(), img.as_str(), new.as_str()]);
    vmcrypt(&args).code_is(5).stderr_has("--force-in-place");
    assert!(read(img.as_ref()) == before, "a refused change-key wrote");
    cs_test_pass(&sc, "pw3", &img, &[]).ok();

    args.push("--force-in-place");
    vmcrypt(&args).ok();
    cs_test_pass(&sc, "new", &img, &[]).ok();
    cs_test_pass(&sc, "pw3", &img, &[]).code_is(2);
    cs_test_pass(&sc, "pw5", &img, &[]).ok();
}
