//! `--max-unlock-cost` end to end: a LUKS1 image (cryptsetup's) with 8 key slots, each
//! made to cost exactly one per-slot cap by a small `--max-pbkdf2-iterations`: a wrong
//! passphrase tries 4 slots (the default budget), names the 4 it skipped and exits 4;
//! a raised budget tries them all (exit 2); a named slot is always tried.
mod common;
use common::*;

#[test]
fn max_unlock_cost_bounds_one_unlock() {
    let sc = Scratch::new();
    sc.write("k0", b"budget-0");
    sc.write("wrong", b"not-a-key");
    let img = sc.sparse("v.luks", 8 << 20);
    cs_format(&sc, "k0", &img, &[]);
    for i in 1..8 {
        let k = format!("k{i}");
        sc.write(&k, format!("budget-{i}").as_bytes());
        vmcrypt(&[
            "luks",
            "add-key",
            "--key-file",
            &sc.p("k0"),
            "--pbkdf-force-iterations",
            "1000",
            "--key-slot",
            &i.to_string(),
            &img,
            &sc.p(&k),
        ])
        .ok();
    }
    let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    let mk_iter: u64 = dump_field(&dump, "MK iterations").parse().unwrap();
    // Slot 0 was made by cryptsetup with 1000 iterations too: every slot costs 1000 +
    // the digest's iterations, one cap.
    let cap = (mk_iter + 1000).to_string();
    let caps = ["--max-pbkdf2-iterations", cap.as_str()];
    vm_test_key(&sc, "wrong", &img, &caps)
        .code_is(4)
        .stderr_has("key slot(s) 4, 5, 6, 7 were not tried")
        .stderr_has("--max-unlock-cost");
    vm_test_key(&sc, "k6", &img, &caps).code_is(4);
    vm_test_key(&sc, "k6", &img, &[&caps[..], &["--key-slot", "6"]].concat()).ok();
    vm_test_key(&sc, "k2", &img, &caps).ok();
    let raised = [&caps[..], &["--max-unlock-cost", "8"]].concat();
    vm_test_key(&sc, "k6", &img, &raised).ok();
    vm_test_key(&sc, "wrong", &img, &raised)
        .code_is(2)
        .stderr_has("no key available");
    // The default caps leave a normal header alone.
    vm_test_key(&sc, "wrong", &img, &[]).code_is(2);
    vm_test_key(&sc, "k7", &img, &[]).ok();
}
