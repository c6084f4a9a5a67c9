//! `vmcrypt rekey` (a new volume key for a qcow2+LUKS image) against the real QEMU tools.
//!
//! * Images made and written by qemu-img/qemu-io (standard and extended L2, 64 KiB, 16 KiB and
//!   512-byte clusters, an encrypted backing file with its own key) are re-keyed by
//!   vmcrypt; afterwards `qemu-img check` finds no errors and no leaks, qemu-img reads
//!   the same plaintext with the new passphrase, the old passphrase no longer opens the
//!   image, cryptsetup shows a different volume key in the new header, and neither the
//!   old LUKS header nor a cluster of old ciphertext is left anywhere in the file.
//! * Fault injection: the re-key is stopped at every write, once cleanly and once torn
//!   (the failing write lands its first sector); every image left behind opens with
//!   exactly one of the two passphrases (the old one until the header switch, the new
//!   one after it), reads the full plaintext, and `qemu-img check` finds no corruption
//!   (leaked clusters are allowed).
//! * Refusals: no new key, an unencrypted qcow2, a wrong current key, unknown options, an
//!   encryption header extension outside the first sector —
//!   each a clear error that leaves the file untouched.
//! * LUKS1 (by copy and rename): the same data, UUID, cipher, hash and file mode under a
//!   different volume key; the old passphrase fails; a leftover temporary file is
//!   refused. LUKS2 is refused with a pointer to `luks reencrypt`.
mod common;
use common::*;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::CreateParams;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::qcow2::{OpenOptions, Qcow2Driver};
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_format::luks1::Layout;

const SIZE: &str = "6M";

/// qemu-io writes into the image: partial clusters, a zero range, a discard.
const WRITES: &[&str] = &[
    "write -P 0x41 0 1M",
    "write -P 0x42 1100000 70000",
    "write -z 1500000 300000",
    "write -P 0x43 3145728 1048576",
    "discard 3400000 65536",
    "write -P 0x44 6000000 291456",
];

fn keys() -> Keyring {
    require_tool("qemu-img");
    require_tool("qemu-io");
    require_tool("cryptsetup");
    Keyring::new(&[("old", PASS), ("new", PASS2), ("base", PASS3)])
}

/// `opts` plus the backing layer's key (the base is always keyed `base`).
fn chain_opts(k: &Keyring, name: &str, key: &str, backed: bool) -> String {
    let mut o = k.qcow2(name, key);
    if backed {
        o.push_str(",backing.encrypt.key-secret=base");
    }
    o
}

/// A qcow2+LUKS image `name` keyed `old`, written by qemu-io; `extra` are more create
/// options; with `backed`, over a qcow2+LUKS base keyed `base` holding other data.
fn make_image(k: &Keyring, name: &str, extra: &str, backed: bool) {
    let mut o = format!("encrypt.format=luks,encrypt.key-secret=old,encrypt.iter-time=10{extra}");
    if backed {
        k.create_qcow2(
            "base.qcow2",
            "encrypt.format=luks,encrypt.key-secret=base,encrypt.iter-time=10",
            SIZE,
        );
        k.qemu_io(&["write -P 0x77 0 6M"], &k.qcow2("base.qcow2", "base"));
        o.push_str(&format!(
            ",backing_file={},backing_fmt=qcow2",
            k.sc.p("base.qcow2")
        ));
    }
    k.create_qcow2(name, &o, SIZE);
    k.qemu_io(WRITES, &chain_opts(k, name, "old", backed));
}

/// The host offset of guest cluster 0 (L1[0] -> L2[0]; the first word of an extended
/// L2 entry too).
fn host_of_guest_zero(file: &[u8]) -> usize {
    let be64 = |p: usize| u64::from_be_bytes(file[p..p + 8].try_into().unwrap());
    let mask = 0x00ff_ffff_ffff_fe00;
    let l1 = be64(40) as usize;
    let l2 = (be64(l1) & mask) as usize;
    let host = (be64(l2) & mask) as usize;
    assert_ne!(host, 0, "guest 0 is allocated");
    host
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn rekey_case(extra: &str, backed: bool) {
    let k = keys();
    make_image(&k, "img", extra, backed);
    let before = k.read(&chain_opts(&k, "img", "old", backed), "before.raw");
    let old_key = qcow2_volume_key(&k.sc, "img", "old");
    let old_file = k.sc.read("img");
    let (off, _) = qcow2_fde_region(&old_file);
    let old_header = old_file[off..off + 592].to_vec();
    // The ciphertext of the first data cluster (guest 0: qemu-io wrote 0x41 there).
    let host = host_of_guest_zero(&old_file);
    let old_cipher = old_file[host..host + 4096].to_vec();

    vmcrypt(&k.with_objects(
        &["rekey"],
        &[
            "--image-opts",
            &k.qcow2("img", "old"),
            "-o",
            "encrypt.key-secret=new,encrypt.iter-time=10",
        ],
    ))
    .ok()
    .stdout_has("under a new volume key");

    let o = chain_opts(&k, "img", "new", backed);
    qemu_img(&k.with_objects(&["check"], &["--image-opts", &o]))
        .ok()
        .stdout_has("No errors were found on the image.");
    assert_same_bytes("plaintext after rekey", &k.read(&o, "after.raw"), &before);
    k.qemu_io(&["read -P 0x41 0 1M", "read -P 0x43 3145728 200000"], &o);
    qemu_io(&k.with_objects(
        &["-c", "read 0 512", "--image-opts"],
        &[&chain_opts(&k, "img", "old", backed)],
    ))
    .failed()
    .stderr_has("Invalid password");
    let new_key = qcow2_volume_key(&k.sc, "img", "new");
    assert_ne!(old_key, new_key, "the volume key must change");
    let new_file = k.sc.read("img");
    assert!(
        !contains(&new_file, &old_header),
        "the old LUKS header is still in the file"
    );
    assert!(
        !contains(&new_file, &old_cipher),
        "old ciphertext is still in the file"
    );
    if backed {
        // The backing file is another layer with its own key: untouched.
        k.qemu_io(&["read -P 0x77 0 512"], &k.qcow2("base.qcow2", "base"));
    }
}

#[test]
fn rekey_standard_l2() {
    rekey_case("", false);
}

#[test]
fn rekey_extended_l2_small_clusters_over_an_encrypted_backing_file() {
    rekey_case(",extended_l2=on,cluster_size=16384", true);
}

#[test]
fn rekey_v3_512_byte_clusters() {
    rekey_case(",cluster_size=512", false);
}

fn open_mem(
    file: Arc<dyn BlockDriver>,
    pass: &[u8],
    writable: bool,
) -> vmcrypt_error::Result<Qcow2Driver> {
    let opts = OpenOptions {
        passphrase: Some(pass),
        writable,
        ..Default::default()
    };
    Qcow2Driver::open(file, &opts)
}

fn params(d: &Qcow2Driver) -> CreateParams {
    let mut p = CreateParams::luks1(*d.luks_volume().unwrap().spec());
    p.keyslot.iterations = Some(1000);
    p.layout = Layout::Qemu;
    p
}

/// Re-key the image in `fresh` through a faulty node that stops after `budget` writes.
fn rekey_mem(fresh: &[u8], budget: usize, torn: bool) -> (Arc<MemDriver>, bool, usize) {
    let mem = Arc::new(MemDriver::new(fresh.to_vec()));
    let faulty = Arc::new(if torn {
        FaultyDriver::torn(mem.clone(), budget)
    } else {
        FaultyDriver::new(mem.clone(), budget)
    });
    let d = open_mem(faulty.clone(), PASS, true).unwrap();
    let p = params(&d);
    let done = d.rekey(&p, PASS2, &mut |_, _| {}).is_ok();
    (mem, done, faulty.writes_done())
}

#[test]
fn interrupted_rekey_opens_with_one_key_and_reads_everything() {
    let k = keys();
    make_image(&k, "img", ",cluster_size=16384", false);
    let plain = k.read(&k.qcow2("img", "old"), "plain.raw");
    let fresh = k.sc.read("img");
    let (_, done, total) = rekey_mem(&fresh, usize::MAX, false);
    assert!(done && total > 10, "a complete run wrote {total} times");
    for torn in [false, true] {
        // Once the new key opens the image, the old one never does again.
        let mut switched_at = None;
        for budget in 0..=total {
            let (mem, done, _) = rekey_mem(&fresh, budget, torn);
            assert_eq!(done, budget == total, "budget {budget} torn {torn}");
            let image: Arc<dyn BlockDriver> = Arc::new(MemDriver::new(mem.snapshot()));
            let old = open_mem(image.clone(), PASS, false);
            let new = open_mem(image, PASS2, false);
            let (d, key) = match (old, new) {
                (Ok(d), Err(_)) => {
                    assert!(
                        switched_at.is_none(),
                        "budget {budget} torn {torn}: the old key opens after the switch"
                    );
                    (d, "old")
                }
                (Err(_), Ok(d)) => {
                    switched_at.get_or_insert(budget);
                    (d, "new")
                }
                (o, n) => panic!(
                    "budget {budget} torn {torn}: old key {:?}, new key {:?}",
                    o.err(),
                    n.err()
                ),
            };
            let mut got = vec![0u8; plain.len()];
            d.read_at(&mut got, 0).unwrap();
            assert_same_bytes(&format!("budget {budget} torn {torn}"), &got, &plain);
            let path = k.sc.write("crashed", &mem.snapshot());
            let out = qemu_img(&k.with_objects(
                &["check", "--output=json", "--image-opts"],
                &[&format!(
                    "driver=qcow2,file.filename={path},encrypt.key-secret={key}"
                )],
            ));
            let v = out.json();
            assert!(
                v.get("corruptions").is_none() && matches!(out.code, Some(0 | 3)),
                "budget {budget} torn {torn}: {}",
                out.describe()
            );
            if budget == total {
                assert_eq!(out.code, Some(0), "a complete rekey leaks nothing");
            }
        }
        // The switch comes after the new data and before the old is freed.
        assert!(
            switched_at.is_some_and(|s| s > 5 && s + 2 < total),
            "torn {torn}: switch at {switched_at:?} of {total}"
        );
    }
}

#[test]
fn refusals_leave_the_image_untouched() {
    let k = keys();
    make_image(&k, "img", "", false);
    let before = k.sc.read("img");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--image-opts", &k.qcow2("img", "old")],
            "encrypt.key-secret=ID",
        ),
        (
            &[
                "--image-opts",
                &k.qcow2("img", "new"),
                "-o",
                "encrypt.key-secret=new",
            ],
            "no key available with this passphrase",
        ),
        (
            &[
                "-f",
                "qcow2",
                &k.sc.p("img"),
                "-o",
                "encrypt.key-secret=new",
            ],
            "needs the current key",
        ),
        (
            &[
                "--image-opts",
                &k.qcow2("img", "old"),
                "-o",
                "encrypt.key-secret=new,cluster_size=512",
            ],
            "not 'cluster_size'",
        ),
        (
            &[
                "--image-opts",
                &k.qcow2("img", "old"),
                "-o",
                "encrypt.key-secret=new,encrypt.slot=1",
            ],
            "invalid option 'encrypt.slot'",
        ),
        (
            &[
                "--image-opts",
                &k.qcow2("img", "old"),
                "-o",
                "encrypt.key-secret=missing",
            ],
            "no secret with id 'missing'",
        ),
    ];
    for (args, msg) in cases {
        vmcrypt(&k.with_objects(&["rekey"], args))
            .failed()
            .stderr_has(msg);
        assert!(k.sc.read("img") == before, "{args:?} changed the image");
    }
    let plain = k.sc.p("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain, "1M"]).ok();
    vmcrypt(&k.with_objects(
        &["rekey", "--image-opts"],
        &[
            &format!("driver=qcow2,file.filename={plain},encrypt.key-secret=old"),
            "-o",
            "encrypt.key-secret=new",
        ],
    ))
    .failed()
    .stderr_has("not encrypted");
}

#[test]
fn luks1_rekey_by_copy_keeps_uuid_mode_and_data() {
    use std::os::unix::fs::PermissionsExt;
    let k = keys();
    let img = k.sc.p("img.luks");
    qemu_img(&k.with_objects(
        &["create", "-q", "-f", "luks"],
        &[
            "-o",
            "key-secret=old,iter-time=10,cipher-alg=aes-128,hash-alg=sha512",
            &img,
            SIZE,
        ],
    ))
    .ok();
    let old_opts = format!("driver=luks,file.filename={img},key-secret=old");
    k.qemu_io(&["write -P 0x5a 0 3M", "write -P 0x5b 5M 1M"], &old_opts);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = k.read(&old_opts, "before.raw");
    let old_dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    let old_key = dump_volume_key(&img, &k.sc.p("old"));
    vmcrypt(&k.with_objects(
        &["rekey", "--image-opts"],
        &[&old_opts, "-o", "key-secret=new,iter-time=10"],
    ))
    .ok()
    .stdout_has("under a new volume key");
    let new_opts = format!("driver=luks,file.filename={img},key-secret=new");
    assert_same_bytes(
        "plaintext after rekey",
        &k.read(&new_opts, "after.raw"),
        &before,
    );
    k.qemu_io(&["read -P 0x5a 0 3M", "read -P 0x5b 5M 1M"], &new_opts);
    qemu_io(&k.with_objects(&["-c", "read 0 512", "--image-opts"], &[&old_opts]))
        .failed()
        .stderr_has("Invalid password");
    let new_dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    for field in ["UUID", "Cipher name", "Cipher mode", "Hash spec", "MK bits"] {
        assert_eq!(
            dump_field(&new_dump, field),
            dump_field(&old_dump, field),
            "{field}"
        );
    }
    assert_ne!(dump_volume_key(&img, &k.sc.p("new")), old_key);
    let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the image's mode");
    assert!(!k.sc.path("img.luks.rekey-tmp").exists());

    // A leftover temporary file is refused; the image stays as it is.
    k.sc.write("img.luks.rekey-tmp", b"left over");
    let image = k.sc.read("img.luks");
    vmcrypt(&k.with_objects(
        &["rekey", "--image-opts"],
        &[&new_opts, "-o", "key-secret=old"],
    ))
    .failed()
    .stderr_has("img.luks.rekey-tmp' exists");
    assert!(
        k.sc.read("img.luks") == image,
        "a refused rekey changed the image"
    );
}

#[test]
fn luks2_rekey_points_at_luks_reencrypt() {
    let k = keys();
    let img = k.sc.p("img.luks2");
    vmcrypt(&k.with_objects(
        &["create", "-q", "-f", "luks2"],
        &["-o", "key-secret=old,pbkdf=pbkdf2,iter-time=10", &img, "1M"],
    ))
    .ok();
    let before = k.sc.read("img.luks2");
    vmcrypt(&k.with_objects(
        &["rekey", "--image-opts"],
        &[
            &format!("driver=luks,file.filename={img},key-secret=old"),
            "-o",
            "key-secret=new",
        ],
    ))
    .failed()
    .stderr_has("vmcrypt luks reencrypt");
    assert!(k.sc.read("img.luks2") == before);
}

#[test]
fn fde_extension_beyond_the_first_sector_is_refused() {
    let k = keys();
    make_image(&k, "img", "", false);
    // Put an unknown 512-byte header extension (QEMU skips those) before the others,
    // pushing the encryption header extension out of the first sector.
    let mut file = k.sc.read("img");
    let hl = u32::from_be_bytes(file[100..104].try_into().unwrap()) as usize;
    let mut ext = 0x1234_5678u32.to_be_bytes().to_vec();
    ext.extend(512u32.to_be_bytes());
    ext.extend([0u8; 512]);
    file.splice(hl..hl, ext.iter().copied());
    let shifted = file.split_off(65536);
    file.extend(&shifted[ext.len()..]);
    k.sc.write("img", &file);
    let o = k.qcow2("img", "old");
    k.qemu_io(&["read -P 0x41 0 1M"], &o);
    vmcrypt(&k.with_objects(
        &["rekey", "--image-opts"],
        &[&o, "-o", "encrypt.key-secret=new"],
    ))
    .failed()
    .stderr_has("not in the header's first sector");
    assert!(
        k.sc.read("img") == file,
        "a refused rekey changed the image"
    );
}
