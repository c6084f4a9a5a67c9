//! Every LUKS1 vector in shared/vectors opens with its passphrase and decrypts to its
//! expected hash; killed/erased slots fail; hostile headers are rejected.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::{Luks1Volume, LuksDriver};
use vmcrypt_crypto::HashAlg;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;

fn vectors() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    assert!(p.is_dir(), "test vectors not found at {}", p.display());
    p
}

fn qemu(name: &str) -> PathBuf {
    vectors().join("qemu").join(name)
}

fn cs(name: &str) -> PathBuf {
    vectors().join("cryptsetup").join(name)
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(cs("keys").join(name)).unwrap()
}

fn file(p: &Path) -> Arc<dyn BlockDriver> {
    Arc::new(FileDriver::open(p, true).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn open(
    img: &Path,
    header: Option<&Path>,
    pass: &[u8],
    slot: Option<usize>,
) -> vmcrypt_error::Result<LuksDriver> {
    LuksDriver::open(
        file(img),
        header.map(file),
        Some(pass),
        slot.map(|s| s as u32),
        &KdfLimits::default(),
    )
}

fn read_all(d: &dyn BlockDriver) -> Vec<u8> {
    let mut buf = vec![0u8; d.size() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn assert_decrypts(img: &Path, header: Option<&Path>, pass: &[u8], slot: Option<usize>, sha: &str) {
    let d = open(img, header, pass, slot).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    assert_eq!(sha256_hex(&read_all(&d)), sha, "{}", img.display());
}

#[test]
fn qemu_vectors_decrypt() {
    let cases = [
        (
            "luks1-aes256-xts-plain64-sha256.luks",
            "vec-aes256-xts",
            "2d938a8b81ac99f4e0c76028b14fcc569c83e842e06256995cf10e4306aedc81",
        ),
        (
            "luks1-aes128-cbc-essiv_sha256-hsha1.luks",
            "vec-aes128-cbc-essiv",
            "d5aa96f2b443e2cd3441e0ca6d49441c48acc9480f40db2bb757ebb8709cfd27",
        ),
        (
            "luks1-cast5-cbc-plain64-sha256.luks",
            "vec-cast5",
            "07ecd6caf7660aec2fa24fdbaa78058efefc386f19d0dd31c9f553a493f66777",
        ),
        (
            "luks1-twofish256-xts-plain64-sha512.luks",
            "vec-twofish",
            "b807dfe16c93e99a32903d7653b1c3ca97959f96e42973f06353c4d7942cbcab",
        ),
        (
            "luks1-serpent128-cbc-plain-sha256.luks",
            "vec-serpent",
            "3d32c0dfee37f2cc9a3edd2dbc67b4111d766748b2c98e70c1a9527ca544b818",
        ),
        (
            "cryptsetup-luks1-aes-xts.img",
            "cryptsetup-pass",
            "8c952b9f0f359bfb849ef84cf1f4640cccdc0a4d31d9e0819ee5257a42da193f",
        ),
    ];
    for (name, pass, sha) in cases {
        assert_decrypts(&qemu(name), None, pass.as_bytes(), None, sha);
    }
}

#[test]
fn qemu_multislot_and_erased_slot() {
    let img = qemu("luks1-multislot-aes256-xts.luks");
    let sha = "f7f6c12ae6f092ac08cc5298a2aba20d570fe028f223a4abcbe29022502de70b";
    assert_decrypts(&img, None, b"slot0-pass", None, sha);
    assert_decrypts(&img, None, b"slot5-pass", None, sha);
    assert_eq!(
        open(&img, None, b"slot5-pass", None)
            .unwrap()
            .unlocked_slot(),
        Some(5)
    );
    let e = open(&img, None, b"slot1-pass", None)
        .err()
        .expect("erased slot must fail");
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    // Naming the wrong slot fails even with a valid passphrase.
    assert_eq!(
        open(&img, None, b"slot5-pass", Some(0))
            .err()
            .unwrap()
            .kind(),
        ErrorKind::WrongKey
    );
}

#[test]
fn qemu_detached_header() {
    assert_decrypts(
        &qemu("luks1-detached.data"),
        Some(&qemu("luks1-detached.hdr")),
        b"detached-pass",
        None,
        "ff8bf4dfe083c98bba659f45534554d87bc6536b7d845c44179d23a538256b9a",
    );
    // The header alone is not an image: payload offset 0 overlaps the header.
    let e = LuksDriver::open(
        file(&qemu("luks1-detached.hdr")),
        None,
        None,
        None,
        &KdfLimits::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("overlapping with the header"), "{e}");
}

#[test]
fn qemu_refuses_this_luks2_vector_but_we_open_it() {
    let img = qemu("luks2-cryptsetup-negative.img");
    let d = LuksDriver::open(
        file(&img),
        None,
        Some(b"luks2-pass"),
        None,
        &KdfLimits::default(),
    )
    .unwrap();
    assert!(d.luks2().is_some());
    let e = LuksDriver::open(
        file(&img),
        None,
        Some(b"wrong"),
        None,
        &KdfLimits::default(),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey);
}

const CS_PLAIN: &str = "54cf73fd6f1b4f559d10ced43191d8bc506977954428b4b5b7118e0601a10312";

#[test]
fn cryptsetup_vectors_decrypt() {
    let xts = cs("luks1-aes-xts-plain64-sha256.img");
    for (k, slot) in [("l1x-slot0", 0), ("binary.key", 2), ("l1x-slot5", 5)] {
        assert_decrypts(&xts, None, &key(k), None, CS_PLAIN);
        assert_decrypts(&xts, None, &key(k), Some(slot), CS_PLAIN);
    }
    let e = open(&xts, None, &key("l1x-slot1"), None)
        .err()
        .expect("killed slot must fail");
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    assert_eq!(
        open(&xts, None, &key("l1x-slot1"), Some(1))
            .err()
            .unwrap()
            .kind(),
        ErrorKind::WrongKey
    );
    assert_decrypts(
        &cs("luks1-aes-cbc-essiv-sha256-hash-sha1.img"),
        None,
        &key("l1e-slot0"),
        None,
        CS_PLAIN,
    );
    assert_decrypts(
        &cs("luks1-qemu-img-aes-xts.img"),
        None,
        &key("q1-slot0"),
        None,
        CS_PLAIN,
    );
}

#[test]
fn cryptsetup_vector_volume_keys_match() {
    for (img, k, vk) in [
        (
            "luks1-aes-xts-plain64-sha256.img",
            "l1x-slot0",
            "luks1-aes-xts-plain64-sha256.vk",
        ),
        (
            "luks1-aes-cbc-essiv-sha256-hash-sha1.img",
            "l1e-slot0",
            "luks1-aes-cbc-essiv-sha256-hash-sha1.vk",
        ),
        (
            "luks1-qemu-img-aes-xts.img",
            "q1-slot0",
            "luks1-qemu-img-aes-xts.vk",
        ),
    ] {
        let vol = Luks1Volume::open(file(&cs(img)), false, &KdfLimits::default()).unwrap();
        let u = vol.unlock(&key(k), None).unwrap();
        assert_eq!(u.volume_key.as_bytes(), &key(vk)[..], "{img}");
    }
}

/// Decompress `name.xz` from upstream/ into a temp dir.
fn unxz(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = cs("upstream").join(format!("{name}.xz"));
    let out = dir
        .path()
        .join(name.trim_end_matches(".img").to_string() + ".img");
    let data = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&src)
        .output()
        .expect("xz must be installed");
    assert!(data.status.success(), "xz -dc {}", src.display());
    std::fs::write(&out, data.stdout).unwrap();
    (dir, out)
}

#[test]
fn upstream_compat_images() {
    let (_d, img) = unxz("compatimage.img");
    assert_decrypts(
        &img,
        None,
        b"compatkey",
        None,
        "7428e8f2436882a07eb32765086f5c899474c08b5576f556b573d2aabdf923e8",
    );

    // cryptsetup 1.0: key material at sector 2, payload 1010, sha1 of the payload.
    let (_d, img) = unxz("compatv10image.img");
    let d = open(&img, None, b"compatkey", None).unwrap();
    assert_eq!(
        d.luks1().unwrap().header().keyslots[0].key_material_offset,
        2
    );
    let data = read_all(&d);
    assert_eq!(data.len(), 9_722_880);
    assert_eq!(
        hex::encode(HashAlg::Sha1.digest(&data)),
        "51b48c2471a7593ceaf14dc5e66bca86ed05f6cc"
    );
}

#[test]
fn upstream_luks1_images_unlock_to_fat() {
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(cs("upstream/luks1-images.tar.xz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar must be installed");
    assert!(st.success());
    let base = dir.path().join("luks1-images");
    let pass = std::fs::read(base.join("keyfile1")).unwrap();
    let known = [
        (
            "aes-cbc-essiv-sha256-sha1",
            "582a935a5bc5418a481a08644784206398846696680b8edfa55826b969bb4438",
        ),
        (
            "aes-xts-plain64-sha1",
            "8a30e57f29d9d0165e2964e68e12ca17e3b6703b48faee3acc9922388b5b019a",
        ),
        (
            "aes-xts-plain64-sha256",
            "b1c4a7c0f69cbfd1ef32ec65ada15a0aa41fa940ade5289911a64d31bcd07b30",
        ),
        (
            "twofish-xts-plain64-sha1",
            "000b9c55042387a226cf7d34cdbb44fb31153fc7248ebe0f98412538e9ac341a",
        ),
        (
            "twofish-xts-plain64-sha256",
            "d43c5544472b137086c0635c3977e1f097855c36f1f10a0b422e008c72f0ccf0",
        ),
        (
            "serpent-xts-plain64-sha1",
            "9c9c26714ae068c7a2c742d4805075d0a6d9dc0ed6334130f1a4f3e486626d66",
        ),
        (
            "serpent-xts-plain64-sha256",
            "9edef888899a5cfcd0564300ec5017c0999311934cf4c8076b87511fa50bd009",
        ),
    ];
    let others = [
        "aes-xts-plain64-whirlpool",
        "serpent-xts-plain64-whirlpool",
        "twofish-xts-plain64-whirlpool",
        "aes-xts-essiv-wp256-whirlpool",
        "aes-lrw-plain64-sha1",
    ];
    let names = known.iter().map(|(n, _)| *n).chain(others);
    for name in names {
        let img = base.join(format!("luks1_{name}.img"));
        let d = open(&img, None, &pass, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some((_, vk)) = known.iter().find(|(n, _)| *n == name) {
            let u = d.luks1().unwrap().unlock(&pass, None).unwrap();
            assert_eq!(hex::encode(u.volume_key.as_bytes()), *vk, "{name}");
        }
        let mut boot = [0u8; 512];
        d.read_at(&mut boot, 0).unwrap();
        assert_eq!(&boot[510..], &[0x55, 0xaa], "{name}: no boot signature");
        assert_eq!(&boot[54..59], b"FAT12", "{name}");
        assert_eq!(
            &boot[39..43],
            &[0xbe, 0xba, 0xad, 0xde],
            "{name}: volume serial DEAD-BABE"
        );
    }
}

#[test]
fn evil_headers_are_rejected_and_valid_header_opens() {
    let cases = [
        ("evil_hdr-keyslot_overlap", "keyslot"),
        ("evil_hdr-luks_hdr_damage", "keyslot 2 is invalid"),
        ("evil_hdr-payload_overwrite", "keyslot 3 is invalid"),
        ("evil_hdr-small_luks_device", "too small"),
        ("evil_hdr-stripes_payload_dmg", "keyslot 5 is invalid"),
    ];
    for (name, needle) in cases {
        let (_d, img) = unxz(name);
        let before = std::fs::read(&img).unwrap();
        let e = Luks1Volume::open(file(&img), false, &KdfLimits::default())
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{name}: {e}");
        assert!(e.to_string().contains(needle), "{name}: {e}");
        assert_eq!(std::fs::read(&img).unwrap(), before, "{name} was modified");
    }
    let (_d, img) = unxz("valid_header_file");
    let vol = Luks1Volume::open(file(&img), false, &KdfLimits::default()).unwrap();
    assert_eq!(vol.header().cipher_mode, "cbc-essiv:sha256");
    assert_eq!(vol.active_slots(), 0);
}
