//! Writing into a qcow2 image whose L2 entry names an invalid data offset (one the read
//! path refuses: not cluster-aligned, or far past any file) is refused with exit 4 before
//! a byte of guest data is written, and the image is marked corrupt as QEMU marks it;
//! qemu-io refuses the same image. (Before, `convert -n` wrote guest data at the bogus
//! unaligned offset over the next cluster, or tried to write at 72 PB.)
mod common;
use common::*;

const CLUSTER: u64 = 65536;
const COPIED: u64 = 1 << 63;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 4 MiB qcow2 (v3) with its first two clusters written by qemu-io, and the file
/// offset of the first cluster's L2 entry.
fn written_image(sc: &Scratch) -> (String, usize) {
    let img = sc.p("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "4M"]).ok();
    qemu_io(&[
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "write -P 0x22 64k 64k",
        "-f",
        "qcow2",
        &img,
    ])
    .ok();
    let bytes = read(img.as_ref());
    let l1 = be64(&bytes, 40) as usize;
    let l2 = (be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    (img, l2)
}

fn set_entry(path: &str, at: usize, entry: u64) -> Vec<u8> {
    let mut bytes = read(path.as_ref());
    bytes[at..at + 8].copy_from_slice(&entry.to_be_bytes());
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn refused_and_marked_corrupt(what: &str, bad_offset: u64, message: &str) {
    let sc = Scratch::new();
    let (img, l2) = written_image(&sc);
    let damaged = set_entry(&img, l2, COPIED | bad_offset);
    // QEMU refuses a write through this entry too.
    let copy = sc.write("qemu.qcow2", &damaged);
    qemu_io(&["-c", "write -P 0x44 0 512", "-f", "qcow2", &copy]).failed();

    let src = sc.write("src.raw", &vec![0x55u8; 4 << 20]);
    vmcrypt(&["convert", "-n", "-f", "raw", "-O", "qcow2", &src, &img])
        .code_is(4)
        .stderr_has(message)
        .stderr_has("marked corrupt");

    let after = read(img.as_ref());
    assert_eq!(after.len(), damaged.len(), "{what}: the file changed size");
    let flags = be64(&after, 72);
    assert_eq!(flags & 2, 2, "{what}: corrupt bit not set");
    let mut expect = damaged.clone();
    expect[72..80].copy_from_slice(&after[72..80]);
    assert!(
        after == expect,
        "{what}: bytes other than the feature flags changed"
    );

    qemu_img(&["info", "--output=json", &img])
        .ok()
        .stdout_has("\"corrupt\": true");
}

#[test]
fn unaligned_data_offset_is_refused_and_marks_the_image_corrupt() {
    refused_and_marked_corrupt("unaligned", 3 * CLUSTER + 0x200, "is not cluster-aligned");
}

#[test]
fn absurd_data_offset_is_refused_and_marks_the_image_corrupt() {
    refused_and_marked_corrupt("72 PB", 0x00ff_ffff_ffff_fe00, "is not cluster-aligned");
}
