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
