//! `vmcrypt clone` against the real QEMU tools and cryptsetup.
//!
//! * Full clone of a qcow2+LUKS overlay over a qcow2+LUKS base (each with its own key):
//!   one flat qcow2 image under a new key (with the source's cluster size); `qemu-img
//!   compare` with the right secrets finds it identical to the chain, qemu-io reads the
//!   written patterns, `qemu-img check` is clean, cryptsetup dumps a volume key different from both source layers',
//!   and the source's LUKS header transplanted into the clone (so the source's
//!   passphrase unlocks the source's volume key over the clone's data) reads garbage.
//! * Full clone of a qemu-made LUKS1 image: LUKS1 again, the source's cipher and hash
//!   inherited, a different volume key, identical contents.
//! * Linked clone: a qcow2 overlay naming the source as its backing file, with a volume
//!   key of its own; qemu-io writes through it with both secrets; the source is not
//!   changed; `--flatten` copies the backing data in under the clone's key and drops
//!   the backing file, after which the clone reads the same without the source.
//! * Refusals (no key for the clone, an unencrypted format, -O with --linked) create
//!   nothing.
mod common;
use common::*;

const SIZE: &str = "8M";

fn keys() -> Keyring {
    require_tool("qemu-img");
    require_tool("qemu-io");
    require_tool("cryptsetup");
    Keyring::new(&[("base", PASS3), ("src", PASS), ("dst", PASS2)])
}

/// A qcow2+LUKS overlay `src` (key `src`) over a qcow2+LUKS `base` (key `base`).
fn make_chain(k: &Keyring) -> String {
    k.create_qcow2(
        "base.qcow2",
        "encrypt.format=luks,encrypt.key-secret=base,encrypt.iter-time=10",
        SIZE,
    );
    k.qemu_io(&["write -P 0x61 0 8M"], &k.qcow2("base.qcow2", "base"));
    let backed = format!(
        "encrypt.format=luks,encrypt.key-secret=src,encrypt.iter-time=10,cluster_size=32768,\
         backing_fmt=qcow2,backing_file={}",
        k.sc.p("base.qcow2")
    );
    k.create_qcow2("src.qcow2", &backed, SIZE);
    let chain = format!(
        "{},backing.encrypt.key-secret=base",
        k.qcow2("src.qcow2", "src")
    );
    k.qemu_io(
        &[
            "write -P 0x62 1M 2M",
            "write -z 5M 1M",
            "write -P 0x63 7000000 100000",
        ],
        &chain,
    );
    chain
}

fn compare(k: &Keyring, a: &str, b: &str) -> Out {
    qemu_img(&k.with_objects(&["compare", "--image-opts"], &[a, b]))
}

#[test]
fn full_clone_of_an_encrypted_chain_has_a_new_key_and_the_same_data() {
    let k = keys();
    let chain = make_chain(&k);
    vmcrypt(&k.with_objects(
        &["clone", "--image-opts"],
        &[
            &chain,
            &k.sc.p("dst.qcow2"),
            "-o",
            "encrypt.key-secret=dst,encrypt.iter-time=10",
        ],
    ))
    .ok();
    let dst = k.qcow2("dst.qcow2", "dst");
    compare(&k, &chain, &dst)
        .ok()
        .stdout_has("Images are identical.");
    k.qemu_io(
        &[
            "read -P 0x61 0 1M",
            "read -P 0x62 1M 2M",
            "read -P 0 5M 1M",
            "read -P 0x63 7000000 100000",
        ],
        &dst,
    );
    k.check_clean(&dst);
    let info = qemu_img(&["info", "--output=json", &k.sc.p("dst.qcow2")])
        .ok()
        .json();
    assert_eq!(info["format"], "qcow2");
    assert!(
        info.get("backing-filename").is_none(),
        "a full clone is flat: {info}"
    );
    assert_eq!(info["format-specific"]["data"]["encrypt"]["format"], "luks");
    assert_eq!(info["cluster-size"], 32768, "the source's cluster size");
    let (kd, ks, kb) = (
        qcow2_volume_key(&k.sc, "dst.qcow2", "dst"),
        qcow2_volume_key(&k.sc, "src.qcow2", "src"),
        qcow2_volume_key(&k.sc, "base.qcow2", "base"),
    );
    assert!(kd != ks && kd != kb, "the clone shares a volume key");

    // The source's header (and so its volume key) over the clone's data: its
    // passphrase unlocks it, but what it decrypts is not the data.
    let mut forged = k.sc.read("dst.qcow2");
    let src = k.sc.read("src.qcow2");
    let ((fo, fl), (so, sl)) = (qcow2_fde_region(&forged), qcow2_fde_region(&src));
    assert_eq!(fl, sl, "same LUKS parameters, same region size");
    forged[fo..fo + fl].copy_from_slice(&src[so..so + sl]);
    k.sc.write("forged", &forged);
    let got = k.read(&k.qcow2("forged", "src"), "forged.raw");
    let want = k.read(&chain, "want.raw");
    assert_eq!(got.len(), want.len());
    let mib = 1 << 20;
    for m in [0, 1, 2, 7] {
        assert_ne!(
            got[m * mib..m * mib + 4096],
            want[m * mib..m * mib + 4096],
            "MiB {m} decrypts with the source's key"
        );
    }
}

#[test]
fn full_clone_of_a_qemu_luks1_image_inherits_the_cipher() {
    let k = keys();
    let src = k.sc.p("src.luks");
    qemu_img(&k.with_objects(
        &["create", "-q", "-f", "luks"],
        &[
            "-o",
            "key-secret=src,cipher-alg=aes-128,hash-alg=sha512,iter-time=10",
            &src,
            SIZE,
        ],
    ))
    .ok();
    let sopts = format!("driver=luks,file.filename={src},key-secret=src");
    k.qemu_io(&["write -P 0x71 0 3M", "write -P 0x72 6M 1M"], &sopts);
    vmcrypt(&k.with_objects(
        &["clone", "--image-opts"],
        &[
            &sopts,
            &k.sc.p("dst.luks"),
            "-o",
            "key-secret=dst,iter-time=10",
        ],
    ))
    .ok();
    let dopts = format!(
        "driver=luks,file.filename={},key-secret=dst",
        k.sc.p("dst.luks")
    );
    compare(&k, &sopts, &dopts)
        .ok()
        .stdout_has("Images are identical.");
    k.qemu_io(&["read -P 0x71 0 3M", "read -P 0x72 6M 1M"], &dopts);
    let dump = cryptsetup(&["luksDump", &k.sc.p("dst.luks")])
        .ok()
        .stdout_str();
    assert_eq!(dump_field(&dump, "Version"), "1");
    assert_eq!(dump_field(&dump, "Cipher mode"), "xts-plain64");
    assert_eq!(dump_field(&dump, "Hash spec"), "sha512");
    assert_eq!(
        dump_field(&dump, "MK bits"),
        "256",
        "aes-128 in XTS: 256 key bits"
    );
    assert_ne!(
        dump_volume_key(&src, &k.sc.p("src")),
        dump_volume_key(&k.sc.p("dst.luks"), &k.sc.p("dst")),
        "the clone shares the volume key"
    );
}

#[test]
fn linked_clone_has_its_own_key_and_flattens_under_it() {
    let k = keys();
    let src = k.sc.p("src.qcow2");
    k.create_qcow2(
        "src.qcow2",
        "encrypt.format=luks,encrypt.key-secret=src,encrypt.iter-time=10",
        SIZE,
    );
    let sopts = k.qcow2("src.qcow2", "src");
    k.qemu_io(&["write -P 0x81 0 8M"], &sopts);
    let golden = k.sc.read("src.qcow2");
    vmcrypt(&k.with_objects(
        &["clone", "--linked", "--image-opts"],
        &[
            &sopts,
            &k.sc.p("dst.qcow2"),
            "-o",
            "encrypt.key-secret=dst,encrypt.iter-time=10",
        ],
    ))
    .ok();
    let info = qemu_img(&["info", "--output=json", &k.sc.p("dst.qcow2")])
        .ok()
        .json();
    assert_eq!(info["backing-filename"], src.as_str());
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["format-specific"]["data"]["encrypt"]["format"], "luks");
    let chain = format!(
        "{},backing.encrypt.key-secret=src",
        k.qcow2("dst.qcow2", "dst")
    );
    k.qemu_io(
        &[
            "write -P 0x82 2M 1M",
            "read -P 0x81 0 2M",
            "read -P 0x82 2M 1M",
        ],
        &chain,
    );
    assert!(
        k.sc.read("src.qcow2") == golden,
        "writing the clone changed its source"
    );
    assert_ne!(
        qcow2_volume_key(&k.sc, "dst.qcow2", "dst"),
        qcow2_volume_key(&k.sc, "src.qcow2", "src")
    );
    let before = k.read(&chain, "before.raw");

    vmcrypt(&k.with_objects(&["clone", "--flatten", "--image-opts"], &[&chain])).ok();
    let info = qemu_img(&["info", "--output=json", &k.sc.p("dst.qcow2")])
        .ok()
        .json();
    assert!(
        info.get("backing-filename").is_none(),
        "still backed: {info}"
    );
    std::fs::remove_file(&src).unwrap();
    let dst = k.qcow2("dst.qcow2", "dst");
    k.check_clean(&dst);
    assert_same_bytes("flattened clone", &k.read(&dst, "after.raw"), &before);
    k.qemu_io(
        &[
            "read -P 0x81 0 2M",
            "read -P 0x82 2M 1M",
            "read -P 0x81 3M 5M",
        ],
        &dst,
    );
}

#[test]
fn refusals_create_nothing() {
    let k = keys();
    let chain = make_chain(&k);
    let raw = k.sc.write("plain.raw", &[1u8; 65536]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--image-opts", &chain, "out"], "encrypt.key-secret=ID"),
        (
            vec![
                "--image-opts",
                &chain,
                "out",
                "-O",
                "raw",
                "-o",
                "key-secret=dst",
            ],
            "-O raw cannot hold one",
        ),
        (
            vec!["--image-opts", &chain, "out", "-O", "luks"],
            "-o key-secret=ID",
        ),
        (
            vec![
                "--linked",
                "--image-opts",
                &chain,
                "out",
                "-O",
                "luks",
                "-o",
                "key-secret=dst",
            ],
            "linked clone is a qcow2 overlay",
        ),
        (
            vec!["-f", "raw", &raw, "out", "-o", "encrypt.key-secret=dst"],
            "not encrypted",
        ),
        (
            vec![
                "--image-opts",
                &chain,
                "out",
                "-o",
                "encrypt.key-secret=dst,encrypt.format=aes",
            ],
            "encrypt.format=aes is not possible",
        ),
    ];
    let out = k.sc.p("out");
    for (mut args, msg) in cases {
        for a in args.iter_mut() {
            if *a == "out" {
                *a = &out;
            }
        }
        vmcrypt(&k.with_objects(&["clone"], &args))
            .failed()
            .stderr_has(msg);
        assert!(!k.sc.path("out").exists(), "{args:?} created the target");
    }
    vmcrypt(&k.with_objects(&["clone", "--flatten", "-f", "raw"], &[&raw]))
        .failed()
        .stderr_has("qcow2 linked clone");
}
