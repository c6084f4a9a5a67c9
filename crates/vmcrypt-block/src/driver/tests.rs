//! The capability accessors and the free functions that answer for any node.
use super::*;
use crate::drivers::file::FileDriver;
use crate::drivers::mem::MemDriver;
use crate::drivers::raw::RawDriver;
use crate::drivers::testing::FaultyDriver;

#[test]
fn a_memory_node_has_no_optional_capability() {
    let mem = MemDriver::new(vec![0u8; 4096]);
    assert!(mem.as_backing().is_none());
    assert!(mem.as_commit().is_none());
    assert!(mem.as_check().is_none());
    assert!(mem.as_introspect().is_none());
    assert!(mem.as_host_map().is_none());
    assert_eq!(allocated_size(&mem), None);
}

#[test]
fn without_a_host_map_a_node_reports_its_own_allocation() {
    let mem = MemDriver::new(vec![0u8; 4096]);
    let e = map_extent(&mem, 512, 1024).unwrap();
    let own = MapExtent {
        offset: 512,
        length: 1024,
        allocation: Allocation::Data,
        present: true,
        depth: 0,
        compressed: false,
        host: None,
    };
    assert_eq!(e, own);
}

#[test]
fn a_file_maps_to_itself_and_knows_its_disk_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.raw");
    std::fs::write(&path, vec![1u8; 8192]).unwrap();
    let file = Arc::new(FileDriver::open(&path, true).unwrap());
    let e = map_extent(file.as_ref(), 4096, 4096).unwrap();
    let host = HostRange {
        offset: 4096,
        file: path.display().to_string(),
    };
    assert_eq!((e.length, e.host), (4096, Some(host)));
    assert!(allocated_size(file.as_ref()).is_some());
    // A raw window maps through to the file, shifted by its offset; its disk usage is
    // its file's.
    let raw = RawDriver::new(file.clone(), 4096, None).unwrap();
    assert!(raw.as_host_map().is_some());
    let e = map_extent(&raw, 0, 4096).unwrap();
    assert_eq!(e.offset, 0);
    assert_eq!(e.host.map(|h| h.offset), Some(4096));
    assert_eq!(allocated_size(&raw), allocated_size(file.as_ref()));
}

#[test]
fn allocated_size_is_unknown_when_a_child_does_not_know() {
    let faulty = FaultyDriver::new(Arc::new(MemDriver::new(vec![0u8; 512])), 1);
    assert_eq!(faulty.children().len(), 1);
    assert_eq!(allocated_size(&faulty), None);
}

/// `n` pseudo-random bytes (xorshift from `seed`): no two places alike.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_copy_between_files_lands_the_bytes_and_grows_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let src = pattern(3 << 20, 1);
    std::fs::write(&a, &src).unwrap();
    std::fs::write(&b, vec![0u8; 4096]).unwrap();
    let fa = FileDriver::open(&a, true).unwrap();
    let fb = FileDriver::open(&b, false).unwrap();
    // Past the target's end: it grows, and its size says so.
    fb.copy_from(&fa, 4096, 8192, (2 << 20) + 512).unwrap();
    assert_eq!(fb.size(), 8192 + (2 << 20) + 512);
    let got = std::fs::read(&b).unwrap();
    assert!(got[8192..] == src[4096..4096 + (2 << 20) + 512]);
    assert!(got[..8192].iter().all(|&x| x == 0));
    // A source range beyond the source's end is refused, a read-only target too.
    assert!(fb.copy_from(&fa, (3 << 20) - 512, 0, 1024).is_err());
    assert!(fa.copy_from(&fb, 0, 0, 512).is_err());
    assert!(std::fs::read(&a).unwrap() == src);
}

#[test]
fn a_copy_within_one_file_or_node_may_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let orig = pattern(4 << 20, 7);
    let (len, lo, hi) = ((2 << 20) + 4096, 4096u64, (1 << 20) + 8192);
    for (from, to) in [(lo, hi), (hi, lo), (0, 3 << 20)] {
        let len = if to == 3 << 20 { 1 << 20 } else { len };
        std::fs::write(&path, &orig).unwrap();
        let f = FileDriver::open(&path, false).unwrap();
        f.copy_from(&f, from, to, len as u64).unwrap();
        drop(f);
        let mut want = orig.clone();
        want.copy_within(from as usize..from as usize + len, to as usize);
        assert!(want != orig);
        assert!(std::fs::read(&path).unwrap() == want, "{from} -> {to}");
        // The default copy (a memory node) handles the same overlap.
        let mem = MemDriver::new(orig.clone());
        mem.copy_from(&mem, from, to, len as u64).unwrap();
        assert!(mem.snapshot() == want, "memory {from} -> {to}");
    }
}

#[test]
fn a_copy_into_a_fault_injecting_node_goes_through_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let src = pattern(3 << 20, 3);
    std::fs::write(&path, &src).unwrap();
    let file = FileDriver::open(&path, true).unwrap();
    let mem = Arc::new(MemDriver::new(vec![0u8; 4 << 20]));
    // Two 1 MiB pieces land, the third write fails: nothing of it reaches the memory.
    let faulty = FaultyDriver::new(mem.clone(), 2);
    assert!(faulty.copy_from(&file, 0, 0, 3 << 20).is_err());
    assert_eq!(faulty.writes_done(), 2);
    let got = mem.snapshot();
    assert!(got[..2 << 20] == src[..2 << 20]);
    assert!(got[2 << 20..].iter().all(|&x| x == 0));
    // A file target copying from a fault-injecting source reads through it.
    let out = dir.path().join("out");
    std::fs::write(&out, vec![0u8; 1 << 20]).unwrap();
    let target = FileDriver::open(&out, false).unwrap();
    target.copy_from(&faulty, 4096, 0, 8192).unwrap();
    assert!(std::fs::read(&out).unwrap()[..8192] == src[4096..12288]);
}
