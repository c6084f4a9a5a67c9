//! The copy loop: holes of a sparse source stay holes in a fresh raw target, data is
//! copied exactly, and zero-filled data blocks are left out too.
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::convert::convert;
use vmcrypt_block::file::FileDriver;

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
