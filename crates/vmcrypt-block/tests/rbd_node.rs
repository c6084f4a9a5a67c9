//! The `rbd` node through the library (graph opened from `--image-opts` specs), checked
//! against librbd itself (python3-rbd) on the one-node test cluster: zeroing and
//! discard on an encrypted image read as zeros in librbd too, writes that are not
//! whole sectors or land past the end of an object read back the same in both, many
//! threads writing at once into fresh objects lose nothing, and the plain node's
//! write_zeroes/discard/block_status. A missing Ceph fails these tests.
#[path = "support/ceph.rs"]
mod ceph;

use ceph::{TestImage, librbd, rbd_cli};
use std::sync::Arc;
use vmcrypt_block::driver::{Allocation, BlockDriver};
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::secrets::SecretStore;
use vmcrypt_block::spec::NodeSpec;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_crypto::argon::KdfLimits;

const MIB: u64 = 1 << 20;
const PASS: &[u8] = b"node pass";

fn secrets() -> SecretStore {
    let mut s = SecretStore::new();
    s.insert("s0", SecretBytes::from_slice(PASS)).unwrap();
    s
}

fn open(opts: &str, secrets: &SecretStore) -> Arc<dyn BlockDriver> {
    let m = vmcrypt_block::opts::parse_keyval(opts, None).unwrap();
    let spec = NodeSpec::from_options(&m).unwrap();
    let ctx = OpenContext {
        secrets,
        read_only: false,
        metadata_only: false,
        limits: KdfLimits::default(),
        writable_backing: false,
        force_share: false,
    };
    graph::open(&spec, &ctx).unwrap()
}

/// A fresh image of `size` bytes formatted by vmcrypt (cheap KDF) with `version`;
/// returns it and the passphrase file for librbd.
fn encrypted(
    test: &str,
    version: &str,
    size: &str,
    dir: &tempfile::TempDir,
) -> (TestImage, String) {
    let img = TestImage::new(test);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASS).unwrap();
    assert!(
        rbd_cli(&["create", "--size", size, &img.path()])
            .status
            .success()
    );
    let version = if version == "luks1" {
        vmcrypt_block::drivers::luks::Version::V1
    } else {
        vmcrypt_block::drivers::luks::Version::V2
    };
    let req = vmcrypt_block::jobs::rbd::EncryptionFormatRequest {
        image: vmcrypt_block::jobs::rbd::image_spec(&img.path(), Some(ceph::ceph_conf()), None)
            .unwrap(),
        version,
        aes_bits: 256,
        keyslot: vmcrypt_block::jobs::luks::slots::NewKeyslot {
            iter_time_ms: Some(10),
            memory_kib: Some(32768),
            ..Default::default()
        },
    };
    vmcrypt_block::jobs::rbd::encryption_format(&req, PASS).unwrap();
    (img, pw.to_string_lossy().into_owned())
}

fn librbd_all(img: &TestImage, version: &str, pw: &str) -> Vec<u8> {
    librbd(&["read", &img.name, version, pw, "0", "-1"])
}

fn node_all(d: &dyn BlockDriver) -> Vec<u8> {
    let mut v = vec![0u8; d.size() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn encrypted_writes_zeroes_and_discards_match_librbd() {
    for version in ["luks1", "luks2"] {
        let dir = tempfile::tempdir().unwrap();
        let (img, pw) = encrypted(&format!("node-{version}"), version, "40M", &dir);
        let s = secrets();
        let d = open(
            &img.opts("encrypt.format=luks-any,encrypt.key-secret=s0"),
            &s,
        );
        let mut want = vec![0u8; d.size() as usize];
        // A fresh image reads as zeros in both.
        assert!(node_all(d.as_ref()).iter().all(|&b| b == 0));
        // Whole data, then an unaligned write past the end of a written object, then
        // an unaligned write into a never-written object.
        for (off, len, seed) in [
            (0, 6 * MIB, 1),
            (6 * MIB + 777, 10_000, 2),
            (13 * MIB + 5, 100, 3),
        ] {
            let p = pattern(len as usize, seed);
            d.write_at(&p, off).unwrap();
            want[off as usize..(off + len) as usize].copy_from_slice(&p);
        }
        // Zero a range covering a whole object with unaligned edges, discard another
        // whole object (it reads as zeros afterwards, in librbd too).
        d.write_zeroes(MIB + 100, 4 * MIB).unwrap();
        want[(MIB + 100) as usize..(5 * MIB + 100) as usize].fill(0);
        // (Both data offsets are whole objects, so guest 4..8 MiB is one object.)
        d.discard(4 * MIB, 4 * MIB).unwrap();
        want[(4 * MIB) as usize..(8 * MIB) as usize].fill(0);
        d.flush().unwrap();
        let got = node_all(d.as_ref());
        drop(d);
        assert!(got == want, "{version}: vmcrypt reads what it wrote");
        let lib = librbd_all(&img, version, &pw);
        assert!(lib == want, "{version}: librbd reads what vmcrypt wrote");
        // Shrinking drops the last objects; grown again, they read as zeros.
        let d = open(
            &img.opts("encrypt.format=luks-any,encrypt.key-secret=s0"),
            &s,
        );
        let size = d.size();
        d.write_at(&pattern(8192, 7), size - 8192).unwrap();
        d.resize(size - 8 * MIB).unwrap();
        d.resize(size).unwrap();
        want[(size - 8 * MIB) as usize..].fill(0);
        assert!(
            node_all(d.as_ref()) == want,
            "{version}: zeros after shrink and grow"
        );
        drop(d);
        assert!(
            librbd_all(&img, version, &pw) == want,
            "{version}: librbd agrees"
        );
    }
}

#[test]
fn parallel_writes_into_fresh_objects_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (img, pw) = encrypted("node-par", "luks2", "48M", &dir);
    let s = secrets();
    let d = open(&img.opts("encrypt.format=luks2,encrypt.key-secret=s0"), &s);
    let size = d.size();
    // 8 threads, each 4 KiB writes at scattered offsets (interleaved inside objects).
    let blocks: Vec<u64> = (0..size / 4096).filter(|b| b % 7 == 3).collect();
    std::thread::scope(|sc| {
        for t in 0..8 {
            let d = d.clone();
            let blocks = &blocks;
            sc.spawn(move || {
                for b in blocks.iter().skip(t).step_by(8).rev() {
                    d.write_at(&pattern(4096, *b as u8), b * 4096).unwrap();
                }
            });
        }
    });
    d.flush().unwrap();
    let mut want = vec![0u8; size as usize];
    for b in &blocks {
        want[(b * 4096) as usize..((b + 1) * 4096) as usize]
            .copy_from_slice(&pattern(4096, *b as u8));
    }
    assert!(node_all(d.as_ref()) == want, "vmcrypt reads every write");
    drop(d);
    assert!(
        librbd_all(&img, "luks2", &pw) == want,
        "librbd reads every write"
    );
}

#[test]
fn plain_node_zeroes_discard_and_status() {
    let img = TestImage::new("node-plain");
    assert!(
        rbd_cli(&["create", "--size", "16M", &img.path()])
            .status
            .success()
    );
    let s = SecretStore::new();
    let d = open(&img.opts(""), &s);
    assert_eq!(d.driver_name(), "rbd");
    let e = d.block_status(0, 16 * MIB).unwrap();
    assert_eq!((e.allocation, e.length), (Allocation::Zero, 16 * MIB));
    d.write_at(&pattern(2 * MIB as usize, 9), 4 * MIB).unwrap();
    let e = d.block_status(0, 16 * MIB).unwrap();
    assert_eq!((e.allocation, e.length), (Allocation::Zero, 4 * MIB));
    let e = d.block_status(4 * MIB, 12 * MIB).unwrap();
    assert_eq!((e.allocation, e.length), (Allocation::Data, 4 * MIB));
    d.write_zeroes(4 * MIB + 10, 100).unwrap();
    let mut b = vec![1u8; 120];
    d.read_at(&mut b, 4 * MIB).unwrap();
    assert!(b[10..110].iter().all(|&x| x == 0) && b[..10].iter().all(|&x| x != 0));
    d.discard(4 * MIB, 4 * MIB).unwrap();
    let e = d.block_status(4 * MIB, 12 * MIB).unwrap();
    assert_eq!(
        e.allocation,
        Allocation::Zero,
        "a discarded whole object is gone"
    );
    // The image does not grow on write.
    let err = d.write_at(&[1], 16 * MIB).unwrap_err();
    assert_eq!(err.kind(), vmcrypt_error::ErrorKind::OutOfRange);
    d.resize(20 * MIB).unwrap();
    assert_eq!(d.size(), 20 * MIB);
    d.write_at(&[1], 16 * MIB).unwrap();
}

/// A clone that shares its parent's key (Pacific's `rbd clone` of an encrypted image):
/// vmcrypt reads it byte for byte as librbd does: the parent's data, its holes (never
/// written objects, the end of a partly written one) as zeros, and, from a fresh open,
/// an object the clone emptied (a discard keeps it as an empty object, which librbd
/// reads as zeros instead of falling through to the parent) as zeros.
#[test]
fn shared_key_clone_reads_as_librbd_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, pw) = encrypted("sk-parent", "luks1", "24M", &dir);
    let data = dir.path().join("data");
    for (off, len, seed) in [
        (0, 4 * MIB, 1),
        (5 * MIB, 64 << 10, 2),
        (12 * MIB, 64 << 10, 3),
    ] {
        std::fs::write(&data, pattern(len as usize, seed)).unwrap();
        let d = data.to_string_lossy();
        librbd(&["write", &parent.name, "luks1", &pw, &off.to_string(), &d]);
    }
    let snap = format!("{}@s", parent.path());
    let clone = TestImage::new("sk-clone");
    for args in [
        vec!["snap", "create", snap.as_str()],
        vec!["snap", "protect", snap.as_str()],
        vec!["clone", snap.as_str(), &clone.path()],
    ] {
        assert!(rbd_cli(&args).status.success(), "rbd {args:?}");
    }
    let s = secrets();
    let opts = clone.opts("encrypt.format=luks,encrypt.key-secret=s0");
    let d = open(&opts, &s);
    let got = node_all(d.as_ref());
    let lib = librbd_all(&clone, "luks1", &pw);
    assert!(got == lib, "the clone reads as librbd reads it");
    assert!(
        got[8 * MIB as usize..12 * MIB as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(got[..4 * MIB as usize] == pattern(4 * MIB as usize, 1)[..]);
    // Empty a whole object the parent holds, write into one the parent never wrote.
    d.discard(0, 4 * MIB).unwrap();
    d.write_at(&pattern(4096, 9), 9 * MIB).unwrap();
    d.flush().unwrap();
    drop(d);
    let got = node_all(open(&opts, &s).as_ref());
    let lib = librbd_all(&clone, "luks1", &pw);
    assert!(
        got[..4 * MIB as usize].iter().all(|&b| b == 0),
        "emptied object"
    );
    assert!(
        got == lib,
        "a fresh open reads the clone as librbd reads it"
    );
}
