//! Every LUKS2 vector in shared/vectors/cryptsetup opens with its passphrase and decrypts
//! to its expected hash; killed/removed slots fail; priorities are honoured; the
//! reencryption header is served through both segments; upstream compat/mda/requirements images open.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::LuksDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;

const PLAIN: &str = "54cf73fd6f1b4f559d10ced43191d8bc506977954428b4b5b7118e0601a10312";

fn cs(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/cryptsetup")
        .join(name);
    assert!(p.exists(), "test vector missing: {}", p.display());
    p
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(cs("keys").join(name)).unwrap()
}

fn file(p: &Path, ro: bool) -> Arc<dyn BlockDriver> {
    Arc::new(FileDriver::open(p, ro).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn open(
    img: &Path,
    hdr: Option<&Path>,
    pass: &[u8],
    slot: Option<u32>,
) -> vmcrypt_error::Result<LuksDriver> {
    LuksDriver::open(
        file(img, true),
        hdr.map(|h| file(h, true)),
        Some(pass),
        slot,
        &KdfLimits::default(),
    )
}

fn sha(d: &dyn BlockDriver) -> String {
    let mut buf = vec![0u8; d.size() as usize];
    d.read_at(&mut buf, 0).unwrap();
    hex::encode(Sha256::digest(&buf))
}

fn decrypts(img: &str, hdr: Option<&str>, k: &str, slot: Option<u32>) -> u32 {
    let d = open(&cs(img), hdr.map(cs).as_deref(), &key(k), slot)
        .unwrap_or_else(|e| panic!("{img} {k}: {e}"));
    assert_eq!(d.size(), 262_144, "{img}");
    assert_eq!(sha(&d), PLAIN, "{img} with {k}");
    d.unlocked_slot().unwrap()
}

#[test]
fn single_slot_vectors() {
    decrypts("luks2-argon2id-aes-xts.img", None, "l2a-slot0", None);
    decrypts(
        "luks2-pbkdf2-sha512-aes128-xts.img",
        None,
        "l2p-slot0",
        None,
    );
    let d = open(
        &cs("luks2-sector4096-argon2i.img"),
        None,
        &key("l2s-slot0"),
        None,
    )
    .unwrap();
    assert_eq!(d.sector_size(), 4096);
    decrypts("luks2-sector4096-argon2i.img", None, "l2s-slot0", Some(0));
    decrypts(
        "luks2-detached.data",
        Some("luks2-detached.hdr"),
        "l2d-slot0",
        None,
    );
    decrypts("luks2-converted-from-luks1.img", None, "l2c-slot0", None);
    assert_eq!(decrypts("luks2-tokens.img", None, "l2t-slot1", None), 1);
}

#[test]
fn multislot_priorities_and_dead_slots() {
    let img = "luks2-multislot.img";
    assert_eq!(decrypts(img, None, "l2m-slot0", None), 0);
    assert_eq!(decrypts(img, None, "binary.key", None), 2);
    assert_eq!(decrypts(img, None, "l2m-slot3", None), 3);
    assert_eq!(decrypts(img, None, "l2m-slot9", None), 9);
    // Priority "ignore": only when named.
    let e = open(&cs(img), None, &key("l2m-slot7"), None).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    assert_eq!(decrypts(img, None, "l2m-slot7", Some(7)), 7);
    for dead in ["l2m-slot1", "l2m-slot4"] {
        assert_eq!(
            open(&cs(img), None, &key(dead), None).err().unwrap().kind(),
            ErrorKind::WrongKey,
            "{dead}"
        );
    }
    assert_eq!(
        open(&cs(img), None, &key("l2m-slot0"), Some(1))
            .err()
            .unwrap()
            .kind(),
        ErrorKind::WrongKey
    );
    // Slot 12 holds an unbound key: it unlocks when named but cannot open the data.
    let vol = Luks2Volume::open(file(&cs(img), true), false, &KdfLimits::default()).unwrap();
    let u = vol.unlock(&key("l2m-slot0"), Some(12)).unwrap();
    assert!(!u.bound);
    assert_eq!(
        u.volume_key.as_bytes(),
        &key("luks2-multislot.unbound.key")[..]
    );
    let e = open(&cs(img), None, &key("l2m-slot0"), Some(12))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not bound"), "{e}");
}

/// A header in reencryption state (cryptsetup --init-only) serves its data through the
/// old and new segments (online reencryption) and reports the reencryption.
#[test]
fn reencryption_header_serves_data_and_is_readable() {
    let img = cs("luks2-reencrypt-initialized.img");
    let d = open(&img, None, &key("l2r-slot0"), None).unwrap();
    assert!(d.as_reencryption().is_some());
    assert_eq!(sha(&d), PLAIN, "data through the reencryption segments");
    let meta = LuksDriver::open(file(&img, true), None, None, None, &KdfLimits::default()).unwrap();
    assert!(
        meta.luks2()
            .unwrap()
            .requirements()
            .unwrap()
            .reencryption_in_progress()
    );
}

fn unpack(archive: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(cs(&format!("upstream/{archive}")))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar must be installed");
    assert!(st.success(), "unpacking {archive}");
    dir
}

fn unxz(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("xz")
        .arg("-dc")
        .arg(cs(&format!("upstream/{name}.xz")))
        .output()
        .unwrap();
    assert!(out.status.success());
    let p = dir.path().join(name);
    std::fs::write(&p, out.stdout).unwrap();
    (dir, p)
}

#[test]
fn upstream_luks2_images() {
    let (_d, img) = unxz("compatimage2.img");
    let vol = Luks2Volume::open(file(&img, true), false, &KdfLimits::default()).unwrap();
    let u = vol.unlock(b"compatkey", None).unwrap();
    assert_eq!(
        hex::encode(u.volume_key.as_bytes()),
        "d47ee2cdc40f39be9a3e8d72a149cc4d"
    );

    let dir = unpack("luks2_mda_images.tar.xz");
    let mut n = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file()
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("test_image_")
        {
            let vol = Luks2Volume::open(file(&p, true), false, &KdfLimits::default()).unwrap();
            vol.unlock(b"Qx3qn46vq0v", None)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert_eq!(n, 9, "every metadata size");
}

#[test]
fn unknown_requirements_make_the_header_read_only() {
    let dir = unpack("luks2_header_requirements.tar.xz");
    let p = dir.path().join("luks2_header_requirements");
    let before = std::fs::read(&p).unwrap();
    let mut vol = Luks2Volume::open(file(&p, false), false, &KdfLimits::default()).unwrap();
    assert!(vol.requirements().unwrap().read_only());
    let e = vol
        .token_import(None, r#"{"type":"x","keyslots":[]}"#)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    let next = vol.header().clone();
    assert_eq!(
        vol.write_header(next).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "a read-only header was changed"
    );
    let free = dir.path().join("luks2_header_requirements_free");
    let vol = Luks2Volume::open(file(&free, true), false, &KdfLimits::default()).unwrap();
    assert!(!vol.requirements().unwrap().read_only());
}

#[test]
fn ambiguous_signature_is_not_repaired() {
    let (_d, img) = unxz("blkid-luks2-pv.img");
    let before = std::fs::read(&img).unwrap();
    let r = Luks2Volume::open(file(&img, false), false, &KdfLimits::default());
    match r {
        Err(e) => assert!(e.to_string().contains("ambiguous"), "{e}"),
        Ok(mut v) => {
            let e = v.repair().unwrap_err();
            assert!(e.to_string().contains("ambiguous"), "{e}");
        }
    }
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn hostile_kdf_costs_are_refused_unless_the_limit_is_raised() {
    let img = cs("luks2-argon2id-aes-xts.img"); // argon2id m=1024 KiB t=4
    let tight = KdfLimits {
        max_memory_kib: 512,
        ..KdfLimits::default()
    };
    let vol = Luks2Volume::open(file(&img, true), false, &tight).unwrap();
    let e = vol.unlock(&key("l2a-slot0"), None).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(e.to_string().contains("--max-kdf-memory"), "{e}");
    let tight = KdfLimits {
        max_time: 3,
        ..KdfLimits::default()
    };
    let vol = Luks2Volume::open(file(&img, true), false, &tight).unwrap();
    assert_eq!(
        vol.unlock(&key("l2a-slot0"), None).err().unwrap().kind(),
        ErrorKind::LimitExceeded
    );
    let pb = cs("luks2-pbkdf2-sha512-aes128-xts.img"); // pbkdf2 1000 iterations
    let tight = KdfLimits {
        max_pbkdf2_iterations: 999,
        ..KdfLimits::default()
    };
    let vol = Luks2Volume::open(file(&pb, true), false, &tight).unwrap();
    assert_eq!(
        vol.unlock(&key("l2p-slot0"), None).err().unwrap().kind(),
        ErrorKind::LimitExceeded
    );
}

#[test]
fn a_detached_header_alone_is_not_an_image() {
    let hdr = cs("luks2-detached.hdr");
    let e = LuksDriver::open(file(&hdr, true), None, None, None, &KdfLimits::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("detached header"), "{e}");
}
