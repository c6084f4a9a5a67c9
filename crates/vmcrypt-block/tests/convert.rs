//! The copy loop: holes of a sparse source stay holes in a fresh raw target, data is
//! copied exactly, and zero-filled data blocks are left out too.
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::jobs::convert::convert;

#[test]
fn sparse_source_gives_sparse_identical_target() {
    let dir = tempfile::tempdir().unwrap();
    let (sp, tp) = (dir.path().join("src.raw"), dir.path().join("dst.raw"));
    let size = 9u64 << 20;
    let src = FileDriver::create(&sp, size).unwrap();
    let a = vec![0xa5u8; 8192];
    src.write_at(&a, 4096).unwrap(); // data at the start
    src.write_at(&a, (5 << 20) + 100).unwrap(); // data after a 5 MiB hole (crosses chunks)
    src.write_at(&vec![0u8; 1 << 20], 7 << 20).unwrap(); // allocated zeros
    src.write_at(&a, size - 8192).unwrap(); // data at the very end
    src.flush().unwrap();
    let dst: Arc<dyn BlockDriver> = Arc::new(FileDriver::create(&tp, size).unwrap());
    let stats = convert(&src, dst.as_ref(), true, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&sp).unwrap(), std::fs::read(&tp).unwrap());
    assert!(
        stats.bytes_written < (1 << 20),
        "wrote {} bytes",
        stats.bytes_written
    );
    let allocated = std::fs::metadata(&tp).unwrap().blocks() * 512;
    assert!(
        allocated < (1 << 20),
        "target is not sparse: {allocated} bytes allocated"
    );
    // A target that is not known to be zero gets every byte.
    let dst2 = FileDriver::create(&dir.path().join("dst2.raw"), size).unwrap();
    dst2.write_at(&vec![0xffu8; 1 << 20], 2 << 20).unwrap();
    convert(&src, &dst2, false, &mut |_, _| {}).unwrap();
    assert_eq!(
        std::fs::read(&sp).unwrap(),
        std::fs::read(dir.path().join("dst2.raw")).unwrap()
    );
}

/// A source that fails every read touching `[bad, ..)`.
struct FailingSource {
    inner: vmcrypt_block::drivers::mem::MemDriver,
    bad: u64,
}

impl BlockDriver for FailingSource {
    fn driver_name(&self) -> &'static str {
        "failing"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmcrypt_error::Result<()> {
        if offset + buf.len() as u64 > self.bad {
            vmcrypt_error::bail!(Io, "injected read fault");
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> vmcrypt_error::Result<()> {
        vmcrypt_error::bail!(ReadOnly, "read-only");
    }
    fn flush(&self) -> vmcrypt_error::Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8 | 1).collect();
    // Zero runs inside data: one grain-aligned, one not.
    v[(1 << 20)..(1 << 20) + 3 * 4096].fill(0);
    v[(9 << 20) + 100..(9 << 20) + 9000].fill(0);
    v
}

#[test]
fn many_chunks_copy_exactly_with_ordered_progress() {
    use vmcrypt_block::drivers::mem::MemDriver;
    let len = 2 * vmcrypt_block::jobs::convert::CHUNK + 12_345;
    let data = pattern(len);
    let src = MemDriver::new(data.clone());
    for zeroed in [true, false] {
        let dst = MemDriver::new(vec![if zeroed { 0 } else { 0xee }; len]);
        let mut seen = vec![];
        let stats = convert(&src, &dst, zeroed, &mut |d, t| seen.push((d, t))).unwrap();
        assert!(dst.snapshot() == data, "zeroed={zeroed}");
        assert_eq!(stats.bytes_written + stats.bytes_skipped, len as u64);
        // Three grains of the first run and the one whole grain inside the second.
        assert_eq!(stats.bytes_skipped, if zeroed { 4 * 4096 } else { 0 });
        assert_eq!(seen.first(), Some(&(0, len as u64)));
        assert_eq!(seen.last(), Some(&(len as u64, len as u64)));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    }
}

#[test]
fn errors_name_the_side_and_offset_and_do_not_hang() {
    use vmcrypt_block::drivers::mem::MemDriver;
    use vmcrypt_block::drivers::testing::FaultyDriver;
    let chunk = vmcrypt_block::jobs::convert::CHUNK;
    let len = 3 * chunk;
    let src = FailingSource {
        inner: MemDriver::new(pattern(len)),
        bad: (2 * chunk) as u64,
    };
    let dst = MemDriver::new(vec![0; len]);
    let e = convert(&src, &dst, false, &mut |_, _| {}).unwrap_err();
    let msg = e.display_chain();
    assert!(
        msg.contains(&format!("reading source at offset {}", 2 * chunk)),
        "{msg}"
    );
    assert!(dst.snapshot()[..2 * chunk] == pattern(len)[..2 * chunk]);

    let good = MemDriver::new(pattern(len));
    let faulty = FaultyDriver::new(Arc::new(MemDriver::new(vec![0; len])), 1);
    let e = convert(&good, &faulty, false, &mut |_, _| {}).unwrap_err();
    let msg = e.display_chain();
    assert!(
        msg.contains(&format!("writing target at offset {chunk}")),
        "{msg}"
    );
}

/// A hole is one piece for a target that reads zeros (a 1 TiB hole was 131072 pieces of
/// one chunk each, seconds of channel round trips), and chunk-sized pieces of zeros for
/// one that does not.
#[test]
fn a_hole_is_one_piece_for_a_zeroed_target() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1u64 << 40;
    let src = FileDriver::create(&dir.path().join("src.raw"), size).unwrap();
    src.write_at(&[7u8; 4096], size - 4096).unwrap();
    let dst = FileDriver::create(&dir.path().join("dst.raw"), size).unwrap();
    let mut steps = 0u32;
    convert(&src, &dst, true, &mut |_, _| steps += 1).unwrap();
    assert!(
        steps <= 4,
        "{steps} progress steps for one hole and one block"
    );
    let mut tail = [0u8; 4096];
    dst.read_at(&mut tail, size - 4096).unwrap();
    assert_eq!(tail, [7u8; 4096]);
    let small = 64u64 << 20;
    let src = FileDriver::create(&dir.path().join("s2.raw"), small).unwrap();
    let dst = FileDriver::create(&dir.path().join("d2.raw"), small).unwrap();
    let mut steps = 0u32;
    convert(&src, &dst, false, &mut |_, _| steps += 1).unwrap();
    assert_eq!(steps, 1 + 8, "one initial report, then one per 8 MiB chunk");
}

/// A file target is written by several workers, out of order: the bytes, the counts
/// and the progress (rising, ending at the total) are as with the ordered copy, and a
/// failing read stops every worker with the offset named.
#[test]
fn parallel_copy_to_a_file_is_exact_and_stops_on_error() {
    use vmcrypt_block::drivers::mem::MemDriver;
    let chunk = vmcrypt_block::jobs::convert::CHUNK;
    let len = 5 * chunk + 12_345;
    let data = pattern(len);
    let dir = tempfile::tempdir().unwrap();
    for zeroed in [true, false] {
        let tp = dir.path().join(format!("dst-{zeroed}.raw"));
        let dst = FileDriver::create(&tp, len as u64).unwrap();
        if !zeroed {
            dst.write_at(&vec![0xee; len], 0).unwrap();
        }
        let mut seen = vec![];
        let stats = convert(&MemDriver::new(data.clone()), &dst, zeroed, &mut |d, t| {
            seen.push((d, t))
        })
        .unwrap();
        assert!(std::fs::read(&tp).unwrap() == data, "zeroed={zeroed}");
        assert_eq!(stats.bytes_written + stats.bytes_skipped, len as u64);
        assert_eq!(stats.bytes_skipped, if zeroed { 4 * 4096 } else { 0 });
        assert_eq!(seen.first(), Some(&(0, len as u64)));
        assert_eq!(seen.last(), Some(&(len as u64, len as u64)));
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    }
    let src = FailingSource {
        inner: MemDriver::new(data),
        bad: (3 * chunk) as u64,
    };
    let dst = FileDriver::create(&dir.path().join("bad.raw"), len as u64).unwrap();
    let e = convert(&src, &dst, true, &mut |_, _| {}).unwrap_err();
    let msg = e.display_chain();
    assert!(
        msg.contains(&format!("reading source at offset {}", 3 * chunk)),
        "{msg}"
    );
}
