//! Known answers from cryptsetup's own LUKS1 test images
//! (shared/vectors/cryptsetup/upstream/luks1-images.tar.xz): unlock key slot 0 with
//! `keyfile1` (the whole 25000-byte file is the passphrase), then decrypt payload sector 0,
//! which must be the boot sector of the FAT12 filesystem those images carry (volume serial
//! DEAD-BABE). Covers LRW (aes-lrw-plain64), ESSIV over the kernel's truncated Whirlpool
//! (xts-essiv:wp256) and PBKDF2-Whirlpool key slots.
//!
//! The tarball is unpacked once per target directory (CARGO_TARGET_TMPDIR) with `tar -xJf`.
mod common;

use common::luks1::{parse_header, spec_of, unlock};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use vmcrypt_crypto::SectorCipher;

/// The unpacked `luks1-images` directory.
fn images_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("luks1-upstream");
        let dir = root.join("luks1-images");
        let done = root.join(".unpacked");
        if !done.exists() {
            let tarball =
                common::shared_data::shared_path("vectors/cryptsetup/upstream/luks1-images.tar.xz");
            // Unpack next to the final place, then rename, so a half-written tree from
            // an interrupted run (or a concurrent one) is never used.
            let tmp = root.join(format!("tmp-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            let status = Command::new("tar")
                .arg("-xJf")
                .arg(&tarball)
                .arg("-C")
                .arg(&tmp)
                .status()
                .expect("running tar");
            assert!(
                status.success(),
                "tar -xJf {} failed: {status}",
                tarball.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::rename(tmp.join("luks1-images"), &dir).is_err() {
                // Another process won the race; its tree is complete.
                assert!(dir.join("keyfile1").exists());
            }
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::write(&done, b"").unwrap();
        }
        dir
    })
}

/// Unlock slot 0 of `name` with keyfile1 and return payload sector 0, decrypted.
fn first_payload_sector(name: &str, cipher: &str, mode: &str, hash: &str) -> Vec<u8> {
    let image = read_image(name);
    let pass = read_image("keyfile1");
    assert_eq!(pass.len(), 25000);
    let h = parse_header(&image);
    assert_eq!(
        (
            h.cipher_name.as_str(),
            h.cipher_mode.as_str(),
            h.hash_spec.as_str()
        ),
        (cipher, mode, hash),
        "{name} header"
    );
    assert_eq!((h.payload_offset, h.key_bytes), (4096, 32), "{name} header");
    let mk = unlock(&image, &h, 0, &pass).unwrap_or_else(|| panic!("{name}: digest mismatch"));
    let start = h.payload_offset as usize * 512;
    let mut sector = image[start..start + 512].to_vec();
    SectorCipher::new(&spec_of(&h), mk.as_bytes())
        .unwrap()
        .decrypt(0, 512, &mut sector)
        .unwrap();
    sector
}

/// The FAT12 boot sector with volume serial DEAD-BABE.
fn assert_fat_boot_sector(name: &str, s: &[u8]) {
    assert_eq!(&s[510..512], &[0x55, 0xaa], "{name}: boot signature");
    assert_eq!(&s[54..59], b"FAT12", "{name}: file system type");
    assert_eq!(
        &s[39..43],
        &[0xbe, 0xba, 0xad, 0xde],
        "{name}: volume serial"
    );
}

fn check(name: &str, cipher: &str, mode: &str, hash: &str) {
    let sector = first_payload_sector(name, cipher, mode, hash);
    assert_fat_boot_sector(name, &sector);
}

#[test]
fn aes_lrw_plain64_sha1() {
    check(
        "luks1_aes-lrw-plain64-sha1.img",
        "aes",
        "lrw-plain64",
        "sha1",
    );
}

#[test]
fn aes_xts_essiv_wp256_whirlpool() {
    check(
        "luks1_aes-xts-essiv-wp256-whirlpool.img",
        "aes",
        "xts-essiv:wp256",
        "whirlpool",
    );
}

#[test]
fn aes_xts_plain64_whirlpool() {
    check(
        "luks1_aes-xts-plain64-whirlpool.img",
        "aes",
        "xts-plain64",
        "whirlpool",
    );
}

#[test]
fn serpent_xts_plain64_whirlpool() {
    check(
        "luks1_serpent-xts-plain64-whirlpool.img",
        "serpent",
        "xts-plain64",
        "whirlpool",
    );
}

#[test]
fn twofish_xts_plain64_whirlpool() {
    check(
        "luks1_twofish-xts-plain64-whirlpool.img",
        "twofish",
        "xts-plain64",
        "whirlpool",
    );
}

#[test]
fn aes_cbc_essiv_sha256_sha1() {
    check(
        "luks1_aes-cbc-essiv-sha256-sha1.img",
        "aes",
        "cbc-essiv:sha256",
        "sha1",
    );
}

#[test]
fn wrong_passphrase_fails_lrw_unlock() {
    let image = read_image("luks1_aes-lrw-plain64-sha1.img");
    let mut pass = read_image("keyfile1");
    pass[24999] ^= 1;
    assert!(unlock(&image, &parse_header(&image), 0, &pass).is_none());
}

#[test]
fn the_spec_names_round_trip() {
    let h = parse_header(&read_image("luks1_aes-xts-essiv-wp256-whirlpool.img"));
    let s = spec_of(&h);
    assert_eq!(s.luks_cipher_mode(), "xts-essiv:wp256");
    assert_eq!(s.luks2_encryption(), "aes-xts-essiv:wp256");
    let h = parse_header(&read_image("luks1_aes-lrw-plain64-sha1.img"));
    let s = spec_of(&h);
    assert_eq!(s.luks2_encryption(), "aes-lrw-plain64");
    assert_eq!(s.cipher_key_bytes(), 16);
}

fn read_image(name: &str) -> Vec<u8> {
    std::fs::read(images_dir().join(name)).unwrap()
}
