//! Unit tests of the qcow2 checker on small hand-built images (512-byte clusters).
use super::*;
use crate::drivers::mem::MemDriver;
use vmcrypt_format::qcow2::CompressedDescriptor;
use vmcrypt_format::qcow2::table::COPIED;

const CS: u64 = 512;

/// A v3 image with 512-byte clusters and `1 << order`-bit refcounts: cluster 0 header,
/// 1 refcount table, 2 refcount block, 3 L1 (2 entries), 4 L2, 5 and 6 data (guest
/// clusters 0 and 1), every refcount 1 and COPIED set.
struct Img {
    bytes: Vec<u8>,
    order: u32,
}

impl Img {
    fn new(order: u32) -> Img {
        let mut b = vec![0u8; 7 * CS as usize];
        b[..4].copy_from_slice(b"QFI\xfb");
        put32(&mut b, 4, 3);
        put32(&mut b, 20, 9);
        put64(&mut b, 24, 64 << 10);
        put32(&mut b, 36, 2);
        put64(&mut b, 40, 3 * CS);
        put64(&mut b, 48, CS);
        put32(&mut b, 56, 1);
        put32(&mut b, 96, order);
        put32(&mut b, 100, 104);
        put64(&mut b, CS as usize, 2 * CS);
        put64(&mut b, 3 * CS as usize, COPIED | (4 * CS));
        put64(&mut b, 4 * CS as usize, COPIED | (5 * CS));
        put64(&mut b, 4 * CS as usize + 8, COPIED | (6 * CS));
        let mut img = Img { bytes: b, order };
        for c in 0..7 {
            img.set_rc(c, 1);
        }
        img
    }

    fn set_rc(&mut self, cluster: u64, v: u64) {
        let rb = &mut self.bytes[2 * CS as usize..3 * CS as usize];
        rc::set(rb, self.order, cluster as usize, v);
    }

    fn l2(&mut self, i: usize, v: u64) {
        put64(&mut self.bytes, 4 * CS as usize + 8 * i, v);
    }

    fn node(&self) -> MemDriver {
        MemDriver::new(self.bytes.clone())
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn run_check(img: &Img) -> CheckReport {
    check(&img.node()).expect("check runs")
}

#[test]
fn clean_image_has_no_errors_and_qemu_statistics() {
    for order in 0..=6 {
        let r = run_check(&Img::new(order));
        assert_eq!(r.messages, Vec::<String>::new(), "order {order}");
        assert_eq!(r.exit_code(), 0);
        assert_eq!(r.image_end_offset, 7 * CS);
        assert_eq!(r.total_clusters, 128);
        assert_eq!(r.allocated_clusters, 2);
        assert_eq!(r.fragmented_clusters, 0);
    }
}

#[test]
fn refcount_entries_round_trip_at_every_width() {
    for order in 0..=6u32 {
        let mut block = vec![0u8; 64];
        let max = if order == 6 {
            u64::MAX
        } else {
            (1 << (1 << order)) - 1
        };
        let n = (64 * 8) >> order;
        for i in 0..n {
            rc::set(&mut block, order, i as usize, (i * 7 + 3) & max);
        }
        for i in 0..n {
            assert_eq!(
                rc::get(&block, order, i as usize),
                (i * 7 + 3) & max,
                "order {order} idx {i}"
            );
        }
    }
    // Sub-byte entries fill a byte from its least significant bit (QEMU's layout).
    let mut b = [0u8; 1];
    rc::set(&mut b, 0, 1, 1);
    assert_eq!(b[0], 0b10);
    rc::set(&mut b, 2, 1, 0xa);
    assert_eq!(b[0], 0xa2);
}

#[test]
fn leak_is_reported_and_repaired() {
    let mut img = Img::new(4);
    img.set_rc(0, 3);
    img.set_rc(9, 1); // past the end of the file: not looked at, like qemu-img
    let r = run_check(&img);
    assert_eq!((r.leaks, r.corruptions, r.exit_code()), (1, 0, 3));
    assert_eq!(r.messages, ["Leaked cluster 0 refcount=3 reference=1"]);
    let node = img.node();
    let fixed = repair(&node, Repair::Leaks, &CheckLimits::default()).unwrap();
    assert_eq!(fixed.leaks_fixed, 1);
    assert_eq!(fixed.report.exit_code(), 0);
    assert!(fixed.report.messages.is_empty());
    assert_eq!(rc::get(&node.snapshot()[2 * CS as usize..], 4, 0), 1);
}

#[test]
fn unreferenced_cluster_with_refcount_is_a_leak() {
    let mut img = Img::new(1);
    img.bytes.resize(8 * CS as usize, 0);
    img.set_rc(7, 1);
    let r = run_check(&img);
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    assert_eq!(r.image_end_offset, 8 * CS);
}

#[test]
fn zero_refcount_of_used_l2_is_corruption_needing_all() {
    let mut img = Img::new(4);
    img.set_rc(4, 0);
    let r = run_check(&img);
    assert_eq!((r.corruptions, r.exit_code()), (2, 2), "{:?}", r.messages);
    assert!(
        r.messages
            .contains(&"ERROR cluster 4 refcount=0 reference=1".to_string())
    );
    assert!(
        r.messages
            .iter()
            .any(|m| m.starts_with("ERROR OFLAG_COPIED L2 cluster"))
    );
    let node = img.node();
    let e = repair(&node, Repair::Leaks, &CheckLimits::default()).unwrap_err();
    assert!(e.to_string().contains("rebuild"), "{e}");
    assert_eq!(
        node.snapshot(),
        img.bytes,
        "a refused repair writes nothing"
    );
    // -r all sets the refcount back to 1, which also makes OFLAG_COPIED right again.
    let fixed = repair(&node, Repair::All, &CheckLimits::default()).unwrap();
    assert_eq!(fixed.corruptions_fixed, 1);
    assert_eq!(fixed.report.exit_code(), 0, "{:?}", fixed.report.messages);
    // A misaligned data cluster is not a refcount error: -r all refuses.
    let mut bytes = qemu_like_4k();
    put64(&mut bytes, 4 * 4096, COPIED | (5 * 4096 + 512));
    let e = repair(&MemDriver::new(bytes), Repair::All, &CheckLimits::default()).unwrap_err();
    assert!(e.to_string().contains("not refcount errors"), "{e}");
}

#[test]
fn too_low_refcount_is_fixed_by_all() {
    let mut img = Img::new(4);
    img.l2(2, 6 * CS); // guest cluster 2 shares host cluster 6 (no COPIED)
    img.l2(1, 6 * CS);
    let r = run_check(&img);
    assert_eq!(r.corruptions, 3, "{:?}", r.messages);
    assert_eq!(r.messages[0], "ERROR cluster 6 refcount=1 reference=2");
    let node = img.node();
    let fixed = repair(&node, Repair::All, &CheckLimits::default()).unwrap();
    assert_eq!(fixed.corruptions_fixed, 1);
    assert_eq!(fixed.report.exit_code(), 0, "{:?}", fixed.report.messages);
}

#[test]
fn data_beyond_end_of_file_is_corruption() {
    let mut img = Img::new(4);
    img.l2(1, COPIED | (100 * CS));
    let r = run_check(&img);
    assert!(r.messages[0].starts_with("ERROR: counting reference for region exceeding"));
    assert_eq!(r.leaks, 1, "cluster 6 lost its reference: {:?}", r.messages);
}

#[test]
fn misaligned_data_cluster_is_named() {
    let mut bytes = qemu_like_4k();
    put64(&mut bytes, 4 * 4096, COPIED | (5 * 4096 + 512));
    let r = check(&MemDriver::new(bytes)).unwrap();
    assert!(
        r.messages.contains(
            &"ERROR offset=5200: Data cluster is not properly aligned; L2 entry corrupted."
                .to_string()
        ),
        "{:?}",
        r.messages
    );
}

/// Like `Img::new(4)` but with 4 KiB clusters and only guest cluster 0 mapped.
fn qemu_like_4k() -> Vec<u8> {
    let cs = 4096usize;
    let mut b = vec![0u8; 6 * cs];
    b[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut b, 4, 3);
    put32(&mut b, 20, 12);
    put64(&mut b, 24, 1 << 20);
    put32(&mut b, 36, 1);
    put64(&mut b, 40, 3 * cs as u64);
    put64(&mut b, 48, cs as u64);
    put32(&mut b, 56, 1);
    put32(&mut b, 96, 4);
    put32(&mut b, 100, 104);
    put64(&mut b, cs, 2 * cs as u64);
    put64(&mut b, 3 * cs, COPIED | (4 * cs as u64));
    put64(&mut b, 4 * cs, COPIED | (5 * cs as u64));
    for c in 0..6 {
        rc::set(&mut b[2 * cs..3 * cs], 4, c, 1);
    }
    b
}

#[test]
fn compressed_cluster_counts_every_cluster_it_touches() {
    let mut img = Img::new(4);
    let a = CompressedDescriptor {
        offset: 5 * CS + 300,
        size: 400,
    };
    let b = CompressedDescriptor {
        offset: 6 * CS + 200,
        size: 100,
    };
    img.l2(0, a.encode(9));
    img.l2(1, b.encode(9));
    img.set_rc(6, 2);
    let r = run_check(&img);
    assert_eq!(r.messages, Vec::<String>::new());
    assert_eq!((r.compressed_clusters, r.fragmented_clusters), (2, 2));
    img.set_rc(6, 1);
    assert_eq!(run_check(&img).corruptions, 1);
}

#[test]
fn refcount_overflow_with_one_bit_refcounts() {
    let mut img = Img::new(0);
    img.l2(1, 5 * CS);
    let r = run_check(&img);
    assert!(
        r.messages
            .iter()
            .any(|m| m.starts_with("ERROR: overflow cluster offset=0xa00")),
        "{:?}",
        r.messages
    );
}

#[test]
fn refcount_block_with_wrong_refcount_refuses_repair() {
    let mut img = Img::new(4);
    img.l2(1, COPIED | (2 * CS)); // data cluster on top of the refcount block
    let r = run_check(&img);
    assert!(
        r.messages
            .contains(&"ERROR refcount block 0 refcount=2".to_string())
    );
    let e = repair(&img.node(), Repair::All, &CheckLimits::default()).unwrap_err();
    assert!(e.to_string().contains("rebuild"), "{e}");
}

#[test]
fn hostile_sizes_hit_limits_not_memory() {
    let img = Img::new(4);
    let e = check_with(&img.node(), &CheckLimits { max_clusters: 4 }).unwrap_err();
    assert_eq!(e.kind(), vmcrypt_error::ErrorKind::LimitExceeded);
    let mut img = Img::new(4);
    put32(&mut img.bytes, 60, 1 << 20); // a million snapshots
    put64(&mut img.bytes, 64, 6 * CS);
    let e = check(&img.node()).unwrap_err();
    assert_eq!(e.kind(), vmcrypt_error::ErrorKind::LimitExceeded);
}

#[test]
fn snapshot_l1_references_are_counted() {
    let mut img = Img::new(4);
    img.bytes.resize(9 * CS as usize, 0);
    // Snapshot table at cluster 7, its L1 (a copy of the active one) at cluster 8.
    let mut e = vec![0u8; 40];
    put64(&mut e, 0, 8 * CS);
    put32(&mut e, 8, 2);
    e[13] = 1; // id "1"
    e[15] = 2; // name "s1"
    put32(&mut e, 36, 16); // extra data: large VM state size, disk size
    e.extend_from_slice(&[0u8; 8]);
    e.extend_from_slice(&(64u64 << 10).to_be_bytes());
    e.extend_from_slice(b"1s1");
    e.resize(64, 0);
    img.bytes[7 * CS as usize..7 * CS as usize + 64].copy_from_slice(&e);
    put64(&mut img.bytes, 8 * CS as usize, 4 * CS);
    put32(&mut img.bytes, 60, 1);
    put64(&mut img.bytes, 64, 7 * CS);
    img.set_rc(7, 1);
    img.set_rc(8, 1);
    img.set_rc(4, 2);
    img.set_rc(5, 2);
    img.set_rc(6, 2);
    put64(&mut img.bytes, 3 * CS as usize, 4 * CS);
    img.l2(0, 5 * CS);
    img.l2(1, 6 * CS);
    let r = run_check(&img);
    assert_eq!(r.messages, Vec::<String>::new());
    assert_eq!(
        r.allocated_clusters, 2,
        "snapshot clusters are not allocation stats"
    );
    img.set_rc(5, 1);
    let r = run_check(&img);
    assert_eq!(r.corruptions, 2, "{:?}", r.messages); // refcount + OFLAG_COPIED
}

#[test]
fn human_and_json_shapes() {
    let mut img = Img::new(4);
    img.set_rc(1, 2);
    let r = run_check(&img);
    assert_eq!(
        r.human(),
        "\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n2/128 = 1.56% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 3584\n"
    );
    let keys: Vec<String> = r.json("x").as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "image-end-offset",
            "total-clusters",
            "check-errors",
            "leaks",
            "allocated-clusters",
            "filename",
            "format"
        ]
    );
}

#[test]
fn repair_fixes_oflag_copied_like_qemu_img() {
    let mut img = Img::new(4);
    img.l2(1, 6 * CS); // refcount 1 but COPIED clear
    put64(&mut img.bytes, 3 * CS as usize, 4 * CS); // L1 entry likewise
    img.set_rc(0, 2); // and a leak
    let r = run_check(&img);
    assert_eq!((r.corruptions, r.leaks), (2, 1), "{:?}", r.messages);
    let node = img.node();
    let fixed = repair(&node, Repair::Leaks, &CheckLimits::default()).unwrap();
    assert_eq!(
        fixed.messages,
        [
            "Leaked cluster 0 refcount=2 reference=1",
            "Repairing cluster 0 refcount=2 reference=1",
            "Repairing OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=800 refcount=1",
            "Repairing OFLAG_COPIED data cluster: l2_entry=c00 refcount=1",
        ]
    );
    assert_eq!((fixed.leaks_fixed, fixed.corruptions_fixed), (1, 2));
    assert_eq!(fixed.report.exit_code(), 0, "{:?}", fixed.report.messages);
    let b = node.snapshot();
    assert_eq!(
        &b[3 * CS as usize..3 * CS as usize + 8],
        &(COPIED | (4 * CS)).to_be_bytes()
    );
    assert_eq!(
        &b[4 * CS as usize + 8..4 * CS as usize + 16],
        &(COPIED | (6 * CS)).to_be_bytes()
    );
}

#[test]
fn image_marked_corrupt_is_checked_but_not_repaired() {
    let mut img = Img::new(4);
    img.set_rc(0, 2);
    put64(&mut img.bytes, 72, 2); // incompatible feature: corrupt
    assert_eq!(run_check(&img).leaks, 1);
    let node = img.node();
    let e = repair(&node, Repair::Leaks, &CheckLimits::default()).unwrap_err();
    assert!(e.to_string().contains("marked corrupt"), "{e}");
    assert_eq!(node.snapshot(), img.bytes);
}
