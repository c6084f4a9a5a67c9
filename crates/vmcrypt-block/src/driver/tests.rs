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

/// A memory node that records each copy asked of it, then does it.
struct CopySpy {
    mem: MemDriver,
    copies: std::sync::Mutex<Vec<(u64, u64, u64)>>,
}

impl BlockDriver for CopySpy {
    fn driver_name(&self) -> &'static str {
        "spy"
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn copy_from(&self, src: &dyn BlockDriver, from: u64, to: u64, len: u64) -> Result<()> {
        self.copies.lock().unwrap().push((from, to, len));
        copy::copy_buffered(src, from, to, len, &mut |b, at| self.write_at(b, at))
    }
}

/// A raw window at 4096 (3 MiB, fixed size) over a recording node of 4 MiB.
fn window_over_spy() -> (Arc<CopySpy>, RawDriver, Vec<u8>) {
    let orig = pattern(4 << 20, 11);
    let spy = Arc::new(CopySpy {
        mem: MemDriver::new(orig.clone()),
        copies: Default::default(),
    });
    let raw = RawDriver::new(spy.clone(), 4096, Some(3 << 20)).unwrap();
    (spy, raw, orig)
}

#[test]
fn a_copy_into_a_raw_window_is_its_childs_copy_at_the_translated_offset() {
    let (spy, raw, orig) = window_over_spy();
    let src = MemDriver::new(pattern(1 << 20, 12));
    raw.copy_from(&src, 100, 512, 8192).unwrap();
    assert_eq!(*spy.copies.lock().unwrap(), [(100, 4096 + 512, 8192)]);
    let mut want = orig;
    want[4608..4608 + 8192].copy_from_slice(&src.snapshot()[100..100 + 8192]);
    assert!(spy.mem.snapshot() == want);
}

#[test]
fn a_copy_beyond_a_raw_window_or_its_source_is_refused_whole() {
    let (spy, raw, orig) = window_over_spy();
    let src = MemDriver::new(pattern(4 << 20, 13));
    // Ends 512 KiB past the window: the first 1 MiB piece would fit, nothing lands.
    let (from, to, len) = (2 << 20, 3 << 19, 2 << 20);
    let e = raw.copy_from(&src, from, to, len).unwrap_err();
    assert_eq!(e.kind(), vmcrypt_error::ErrorKind::OutOfRange);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("bytes {to}..{}", to + len)) && msg.contains("window"),
        "{msg}"
    );
    // A source range past the source's end.
    let e = raw.copy_from(&src, (4 << 20) - 512, 0, 1024).unwrap_err();
    assert_eq!(e.kind(), vmcrypt_error::ErrorKind::OutOfRange);
    assert!(e.to_string().contains("source"), "{e}");
    assert!(spy.copies.lock().unwrap().is_empty());
    assert!(spy.mem.snapshot() == orig, "a refused copy wrote");
}

#[test]
fn a_raw_window_over_a_file_copies_into_it_and_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, other) = (dir.path().join("f"), dir.path().join("g"));
    let orig = pattern(4 << 20, 14);
    let src = pattern(1 << 20, 15);
    std::fs::write(&other, &src).unwrap();
    let base = 1usize << 20;
    // From another file (the kernel copy beneath), and within the window both ways
    // over overlapping ranges: window offsets, not a mix of window and file offsets,
    // must decide the order (the shift to the left is less than the window's offset).
    let (len, lo, hi) = ((1 << 20) + 4096, 4096usize, (1 << 19) + 4096);
    for (from, to) in [(lo, hi), (hi, lo)] {
        std::fs::write(&path, &orig).unwrap();
        let f = Arc::new(FileDriver::open(&path, false).unwrap());
        let raw = RawDriver::new(f, base as u64, Some(3 << 20)).unwrap();
        let g = FileDriver::open(&other, true).unwrap();
        raw.copy_from(&g, 512, 0, 4096).unwrap();
        raw.copy_from(&raw, from as u64, to as u64, len as u64)
            .unwrap();
        drop(raw);
        let mut want = orig.clone();
        want[base..base + 4096].copy_from_slice(&src[512..512 + 4096]);
        want.copy_within(base + from..base + from + len, base + to);
        assert!(std::fs::read(&path).unwrap() == want, "{from} -> {to}");
    }
}
