//! Backing chains as deep as QEMU opens them (a 40-deep chain made by qemu-img: `info
//! --backing-chain`, `map` and `convert` agree with qemu-img), loops refused with exit 4
//! (a hostile image), and `check`'s own status 1 for a qcow2 image it cannot open, as
//! qemu-img's.
mod common;
use common::*;

const DEPTH: usize = 40;

/// `base.qcow2` and `DEPTH` overlays `l1.qcow2` .. `l40.qcow2`, each layer writing its own
/// pattern at its own offset; returns the top's path.
fn deep_chain(sc: &Scratch) -> String {
    let base = sc.p("l0.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "4M"]).ok();
    for i in 0..=DEPTH {
        let img = sc.p(&format!("l{i}.qcow2"));
        if i > 0 {
            let below = format!("l{}.qcow2", i - 1);
            qemu_img(&[
                "create", "-q", "-f", "qcow2", "-b", &below, "-F", "qcow2", &img,
            ])
            .ok();
        }
        let w = format!("write -P {} {} 4096", i + 1, i * 65536);
        qemu_io(&["-f", "qcow2", &img, "-c", &w]).ok();
    }
    sc.p(&format!("l{DEPTH}.qcow2"))
}

#[test]
fn a_40_deep_chain_opens_like_qemu_img() {
    let sc = Scratch::new();
    let top = deep_chain(&sc);
    let args = ["info", "--backing-chain", "--output=json", &top];
    let ours = vmcrypt(&args).ok().json();
    let theirs = qemu_img(&args).ok().json();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["filename"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&ours).len(), DEPTH + 1);
    assert_eq!(names(&ours), names(&theirs));

    let map = ["map", "--output=json", "-f", "qcow2", &top];
    assert_eq!(vmcrypt(&map).ok().json(), qemu_img(&map).ok().json());

    let (ours, theirs) = (sc.p("ours.raw"), sc.p("theirs.raw"));
    vmcrypt(&["convert", "-f", "qcow2", "-O", "raw", &top, &ours]).ok();
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &top, &theirs]).ok();
    let got = sc.read("ours.raw");
    assert_same_bytes("converted chain", &got, &sc.read("theirs.raw"));
    assert_eq!(got[DEPTH * 65536], DEPTH as u8 + 1);
}

#[test]
fn a_backing_loop_is_refused_as_a_hostile_image() {
    let sc = Scratch::new();
    let (a, b) = (sc.p("a.qcow2"), sc.p("b.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &b, "1M"]).ok();
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", &a,
    ])
    .ok();
    qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", &b,
    ])
    .ok();
    // qemu-img refuses it too (with its catch-all status 1).
    qemu_img(&["info", "--backing-chain", &a])
        .failed()
        .stderr_has("infinite loop");
    vmcrypt(&["info", "--backing-chain", &a])
        .code_is(4)
        .stderr_has("infinite loop");
    for out in ["json", "human"] {
        vmcrypt(&["map", &format!("--output={out}"), "-f", "qcow2", &a])
            .code_is(4)
            .stderr_has("infinite loop");
    }
    let dst = sc.p("out.raw");
    vmcrypt(&["convert", "-f", "qcow2", "-O", "raw", &a, &dst])
        .code_is(4)
        .stderr_has("infinite loop");
}

#[test]
fn check_of_an_unopenable_qcow2_exits_1_like_qemu_img() {
    let sc = Scratch::new();
    let img = sc.write("junk.qcow2", &[0u8; 65536]);
    let ours = vmcrypt(&["check", "-f", "qcow2", &img]).code_is(1);
    assert_eq!(ours.code, qemu_img(&["check", "-f", "qcow2", &img]).code);
}
