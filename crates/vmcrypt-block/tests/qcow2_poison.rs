//! Damage found while writing stops every later write through the same open image, as
//! QEMU stops using a node it has marked corrupt: the first refused write sets the
//! corrupt bit on disk, and a following write to a healthy cluster the image owns is
//! refused too, naming the earlier damage, with nothing written.
mod common;
use common::run;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::qcow2::{OpenOptions, Qcow2Driver};

const CLUSTER: u64 = 65536;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 4 MiB qcow2 v3 image (qemu-img) with clusters 0 and 1 written (qemu-io), and the
/// file offsets of its L1 table and of cluster 0's L2 entry.
fn written_image() -> (Vec<u8>, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("p.qcow2");
    let img_s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", img_s, "4M"]);
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0x22 64k 64k",
            "-f",
            "qcow2",
            img_s,
        ],
    );
    let bytes = std::fs::read(&img).unwrap();
    let l1 = be64(&bytes, 40) as usize;
    let l2 = (be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    (bytes, l1, l2)
}

/// Point cluster 0's L2 entry (COPIED) at `target`, open the image writable, write to
/// cluster 0 (refused with `first`), then to cluster 1 (refused as poisoned).
fn poisoned_after(target: impl Fn(usize) -> u64, first: &str) {
    let (mut bytes, l1, l2) = written_image();
    let entry = (1u64 << 63) | target(l1);
    bytes[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
    let mem = Arc::new(MemDriver::new(bytes.clone()));
    let opts = OpenOptions {
        writable: true,
        ..Default::default()
    };
    let d = Qcow2Driver::open(mem.clone(), &opts).unwrap();

    let err = d.write_at(&[0x33; 4096], 0).unwrap_err().to_string();
    assert!(err.contains(first), "first write: {err}");
    assert!(err.contains("marked corrupt"), "first write: {err}");
    let after_first = mem.snapshot();
    assert_eq!(be64(&after_first, 72) & 2, 2, "corrupt bit not set");

    let err = d.write_at(&[0x44; 4096], CLUSTER).unwrap_err().to_string();
    assert!(err.contains("no more writes"), "second write: {err}");
    let err = d.write_zeroes(CLUSTER, CLUSTER).unwrap_err().to_string();
    assert!(err.contains("no more writes"), "zeroing: {err}");
    assert_eq!(
        mem.snapshot(),
        after_first,
        "a refused write changed the image"
    );
    let mut back = vec![0u8; 4096];
    d.read_at(&mut back, CLUSTER).unwrap();
    assert_eq!(back, vec![0x22; 4096], "cluster 1 changed");
}

#[test]
fn an_entry_pointing_at_metadata_poisons_the_open_image() {
    poisoned_after(|l1| l1 as u64, "would overwrite metadata");
}

#[test]
fn an_unaligned_entry_poisons_the_open_image() {
    poisoned_after(|_| 3 * CLUSTER + 0x200, "not cluster-aligned");
}
