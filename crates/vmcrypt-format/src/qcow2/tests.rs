//! Byte-level tests of the qcow2 codec: hand-built headers (each field commented) and
//! the headers of the QEMU-made images in `shared/vectors/qemu`.
use super::ext::*;
use super::header::*;
use super::table::*;
use super::v1::*;
use vmcrypt_error::ErrorKind;

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// A v3 header for a 1 GiB disk with 64 KiB clusters, plus extensions at 112.
fn v3_fixture() -> Vec<u8> {
    let mut b = vec![0u8; 65536];
    b[0..4].copy_from_slice(b"QFI\xfb"); // magic
    put32(&mut b, 4, 3); // version
    put64(&mut b, 8, 0x200); // backing_file_offset
    put32(&mut b, 16, 8); // backing_file_size ("base.img")
    put32(&mut b, 20, 16); // cluster_bits: 64 KiB
    put64(&mut b, 24, 1 << 30); // size: 1 GiB
    put32(&mut b, 32, 2); // crypt_method: LUKS
    put32(&mut b, 36, 2); // l1_size: 2 entries x 512 MiB each
    put64(&mut b, 40, 0x30000); // l1_table_offset
    put64(&mut b, 48, 0x10000); // refcount_table_offset
    put32(&mut b, 56, 1); // refcount_table_clusters
    put32(&mut b, 60, 0); // nb_snapshots
    put64(&mut b, 64, 0); // snapshots_offset
    put64(&mut b, 72, INCOMPAT_DIRTY); // incompatible_features
    put64(&mut b, 80, COMPAT_LAZY_REFCOUNTS); // compatible_features
    put64(&mut b, 88, AUTOCLEAR_BITMAPS); // autoclear_features
    put32(&mut b, 96, 4); // refcount_order: 16-bit refcounts
    put32(&mut b, 100, 112); // header_length
    b[104] = 0; // compression_type: zlib (105..111 padding)
    // Extension: backing format "raw" (3 bytes, padded to 8).
    put32(&mut b, 112, EXT_BACKING_FORMAT);
    put32(&mut b, 116, 3);
    b[120..123].copy_from_slice(b"raw");
    // Extension: FDE header at 0x40000, 2068480 bytes.
    put32(&mut b, 128, EXT_FDE);
    put32(&mut b, 132, 16);
    put64(&mut b, 136, 0x40000);
    put64(&mut b, 144, 2_068_480);
    // Extension: feature name table with one entry (incompatible bit 0 "dirty bit").
    put32(&mut b, 152, EXT_FEATURE_NAMES);
    put32(&mut b, 156, 48);
    b[160] = 0; // type: incompatible
    b[161] = 0; // bit
    b[162..171].copy_from_slice(b"dirty bit");
    // Extension: unknown type 0x12345678, 5 bytes.
    put32(&mut b, 208, 0x1234_5678);
    put32(&mut b, 212, 5);
    b[216..221].copy_from_slice(b"hello");
    // End of extensions at 224 (already zero). Backing file name at 0x200.
    b[0x200..0x208].copy_from_slice(b"base.img");
    b
}

#[test]
fn v3_header_fields() {
    let b = v3_fixture();
    let h = Header::decode(&b).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_size(), 65536);
    assert_eq!(h.size, 1 << 30);
    assert_eq!(h.crypt_method, CryptMethod::Luks);
    assert_eq!((h.l1_size, h.l1_table_offset), (2, 0x30000));
    assert!(h.is_dirty() && !h.is_corrupt() && h.lazy_refcounts());
    assert_eq!(h.refcount_bits(), 16);
    assert_eq!(h.header_length, 112);
    assert_eq!(h.compression_type, CompressionType::Zlib);
    assert_eq!(h.l2_bits(), 13);
    h.validate(1 << 20, &Limits::default()).unwrap();
    assert_eq!(h.extensions_end(), 0x200);
}

#[test]
fn extensions_typed_and_raw() {
    let b = v3_fixture();
    let h = Header::decode(&b).unwrap();
    let e = Extensions::decode(&b, u64::from(h.header_length), h.extensions_end()).unwrap();
    assert_eq!(e.backing_format.as_deref(), Some("raw"));
    assert_eq!(
        e.fde,
        Some(FdeRegion {
            offset: 0x40000,
            length: 2_068_480
        })
    );
    assert_eq!(
        e.feature_name(FeatureKind::Incompatible, 0),
        Some("dirty bit")
    );
    assert_eq!(e.unknown, vec![(0x1234_5678, b"hello".to_vec())]);
    assert!(e.data_file.is_none() && e.bitmaps.is_none());
}

#[test]
fn extension_overrunning_the_area_is_refused() {
    let mut b = v3_fixture();
    put32(&mut b, 212, 0x1000); // unknown extension claims 4 KiB, area ends at 0x200
    let h = Header::decode(&b).unwrap();
    let err = Extensions::decode(&b, 112, h.extensions_end()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("0x12345678"), "{err}");
}

#[test]
fn duplicate_fde_extension_is_refused() {
    let mut b = v3_fixture();
    put32(&mut b, 208, EXT_FDE); // second FDE pointer replaces the unknown extension
    put32(&mut b, 212, 16);
    let err = Extensions::decode(&b, 112, 0x200).unwrap_err();
    assert!(err.message().contains("twice"), "{err}");
}

#[test]
fn v2_header_defaults() {
    let mut b = v3_fixture();
    put32(&mut b, 4, 2); // version 2: fields from 72 on are not read
    let h = Header::decode(&b[..72]).unwrap();
    assert_eq!(h.header_length, 72);
    assert_eq!(h.refcount_order, 4);
    assert_eq!(h.incompatible_features, 0);
    assert_eq!(h.compression_type, CompressionType::Zlib);
}

#[test]
fn bad_headers_name_the_field() {
    let cases: Vec<(usize, u64, bool, &str)> = vec![
        (20, 8, false, "cluster_bits 8"),       // 256-byte clusters
        (20, 22, false, "cluster_bits 22"),     // 4 MiB clusters
        (36, 1, false, "too small"),            // one L1 entry for 1 GiB
        (40, 0x30001, true, "L1 table offset"), // unaligned L1
        (96, 7, false, "refcount_order 7"),
    ];
    for (off, val, wide, want) in cases {
        let mut b = v3_fixture();
        if wide {
            put64(&mut b, off, val);
        } else {
            put32(&mut b, off, val as u32);
        }
        let err = Header::decode(&b)
            .and_then(|h| h.validate(1 << 20, &Limits::default()))
            .unwrap_err();
        assert!(err.message().contains(want), "{want}: {err}");
    }
}

#[test]
fn caps_on_tables() {
    let mut b = v3_fixture();
    put32(&mut b, 36, 5_000_000); // 40 MB of L1 entries
    let h = Header::decode(&b).unwrap();
    let err = h.validate(u64::MAX, &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    let mut b = v3_fixture();
    put32(&mut b, 56, 1000); // 1000 refcount table clusters = 64 MB
    let h = Header::decode(&b).unwrap();
    assert_eq!(
        h.validate(u64::MAX, &Limits::default()).unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
    // L1 table beyond the end of the file.
    let h = Header::decode(&v3_fixture()).unwrap();
    let err = h.validate(0x30000, &Limits::default()).unwrap_err();
    assert!(err.message().contains("beyond the end"), "{err}");
}

#[test]
fn header_structure_errors() {
    let mut b = v3_fixture();
    b[3] = 0xfa; // magic
    assert!(Header::decode(&b).unwrap_err().message().contains("magic"));
    let mut b = v3_fixture();
    put32(&mut b, 4, 4); // version 4
    assert_eq!(
        Header::decode(&b).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    let mut b = v3_fixture();
    put32(&mut b, 100, 100); // header_length below 104
    assert!(
        Header::decode(&b)
            .unwrap_err()
            .message()
            .contains("header_length")
    );
    let mut b = v3_fixture();
    put32(&mut b, 32, 3); // crypt_method 3
    assert!(
        Header::decode(&b)
            .unwrap_err()
            .message()
            .contains("encryption method 3")
    );
    let mut b = v3_fixture();
    b[104] = 1; // zstd without the compression-type incompatible bit
    let h = Header::decode(&b).unwrap();
    assert!(h.validate(1 << 20, &Limits::default()).is_err());
    put64(&mut b, 72, INCOMPAT_COMPRESSION);
    let h = Header::decode(&b).unwrap();
    assert_eq!(h.compression_type, CompressionType::Zstd);
    h.validate(1 << 20, &Limits::default()).unwrap();
    let mut b = v3_fixture();
    put64(&mut b, 72, 1 << 40); // unknown incompatible feature
    assert_eq!(Header::decode(&b).unwrap().unknown_incompatible(), 1 << 40);
}

#[test]
fn l1_entries() {
    let cs = 65536;
    assert_eq!(l1_l2_offset(0, 0, cs).unwrap(), None);
    // COPIED + offset 0x50000.
    assert_eq!(
        l1_l2_offset(0x8000_0000_0005_0000, 0, cs).unwrap(),
        Some(0x50000)
    );
    // Offset not cluster-aligned (0x50200).
    assert!(l1_l2_offset(0x0000_0000_0005_0200, 3, cs).is_err());
    // Reserved bit 0.
    let err = l1_l2_offset(0x0000_0000_0005_0001, 7, cs).unwrap_err();
    assert!(err.message().contains("L1 entry 7"), "{err}");
}

#[test]
fn standard_l2_entries() {
    let d = |e| L2Entry::decode(e, None, 16, 0).unwrap();
    assert_eq!(d(0).mapping(0).unwrap(), Mapping::Backing);
    // COPIED | 0x250000: normal data cluster.
    let e = d(0x8000_0000_0025_0000);
    assert!(e.copied);
    assert_eq!(e.mapping(0).unwrap(), Mapping::Data(0x250000));
    // Zero flag without a host cluster, and with a preallocated one.
    assert_eq!(d(1).kind, ClusterKind::Zero(0));
    assert_eq!(d(0x8000_0000_0025_0001).mapping(0).unwrap(), Mapping::Zero);
    // Unaligned host offset.
    assert!(L2Entry::decode(0x0000_0000_0025_0200, None, 16, 4).is_err());
    // Reserved bit 1.
    assert!(L2Entry::decode(0x0000_0000_0025_0002, None, 16, 4).is_err());
}

#[test]
fn compressed_descriptor() {
    // 64 KiB clusters: x = 62 - 8 = 54. Offset 0x12345 (bits 0..53), 2 additional
    // sectors (bits 54..61): data spans sectors 0x91..0x93, i.e. 3*512 - 0x145 bytes.
    let entry = COMPRESSED | 0x12345 | (2u64 << 54);
    let e = L2Entry::decode(entry, None, 16, 0).unwrap();
    let want = CompressedDescriptor {
        offset: 0x12345,
        size: 3 * 512 - 0x145,
    };
    assert_eq!(e.kind, ClusterKind::Compressed(want));
    assert_eq!(want.encode(16), entry);
    // 512-byte clusters: x = 61, one bit of sector count.
    let d = CompressedDescriptor::decode(0x200 | (1u64 << 61), 9);
    assert_eq!((d.offset, d.size), (0x200, 1024));
    // COPIED on a compressed entry is corrupt.
    assert!(L2Entry::decode(entry | COPIED, None, 16, 0).is_err());
}

#[test]
fn extended_l2_subclusters() {
    // Host cluster 0x40000; subcluster 0 allocated, 1 zero, 2 unallocated.
    let bitmap = 1u64 | (1 << (32 + 1));
    let e = L2Entry::decode(0x40000, Some(bitmap), 16, 0).unwrap();
    assert_eq!(e.mapping(0).unwrap(), Mapping::Data(0x40000));
    assert_eq!(e.mapping(1).unwrap(), Mapping::Zero);
    assert_eq!(e.mapping(2).unwrap(), Mapping::Backing);
    // Allocated and zero at once.
    let e = L2Entry::decode(0x40000, Some(1 | 1 << 32), 16, 0).unwrap();
    assert!(e.mapping(0).is_err());
    // Allocated subcluster without a host cluster.
    let e = L2Entry::decode(0, Some(1), 16, 0).unwrap();
    assert!(e.mapping(0).is_err());
    // The zero flag is reserved with extended L2.
    assert!(L2Entry::decode(0x40001, Some(0), 16, 0).is_err());
}

/// The first 48 bytes of a qcow v1 image: 512 KiB, 4 KiB clusters, AES.
fn v1_fixture() -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0..4].copy_from_slice(b"QFI\xfb"); // magic
    put32(&mut b, 4, 1); // version
    put64(&mut b, 8, 0); // backing_file_offset
    put32(&mut b, 16, 0); // backing_file_size
    put32(&mut b, 20, 0x5f00_0000); // mtime
    put64(&mut b, 24, 512 * 1024); // size
    b[32] = 12; // cluster_bits
    b[33] = 9; // l2_bits
    put32(&mut b, 36, 1); // crypt_method: AES
    put64(&mut b, 40, 0x1000); // l1_table_offset
    b
}

#[test]
fn v1_header_and_entries() {
    let h = V1Header::decode(&v1_fixture()).unwrap();
    assert_eq!(h.crypt_method, CryptMethod::Aes);
    assert_eq!(h.cluster_size(), 4096);
    assert_eq!(h.l1_size(), 1); // one L2 table covers 2 MiB
    assert_eq!(h.l2_mapping(0), V1Mapping::Unallocated);
    assert_eq!(h.l2_mapping(0x3000), V1Mapping::Data(0x3000));
    // Compressed: size shift 63 - 12 = 51; 700 bytes at 0x3456.
    let e = (1u64 << 63) | (700u64 << 51) | 0x3456;
    assert_eq!(
        h.l2_mapping(e),
        V1Mapping::Compressed {
            offset: 0x3456,
            size: 700
        }
    );
    let mut b = v1_fixture();
    b[32] = 17;
    assert!(
        V1Header::decode(&b)
            .unwrap_err()
            .message()
            .contains("cluster_bits")
    );
    let mut b = v1_fixture();
    put32(&mut b, 4, 2);
    assert!(V1Header::decode(&b).is_err());
}

/// The headers QEMU wrote for the shared vectors (facts in METADATA.txt).
#[test]
fn qemu_made_headers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/qemu");
    let base = std::fs::read(dir.join("qcow2-luks-base.qcow2")).unwrap();
    let h = Header::decode(&base).unwrap();
    assert_eq!((h.version, h.cluster_bits, h.size), (3, 16, 2_097_152));
    assert_eq!(h.crypt_method, CryptMethod::Luks);
    h.validate(base.len() as u64, &Limits::default()).unwrap();
    let e = Extensions::decode(&base, u64::from(h.header_length), h.extensions_end()).unwrap();
    assert_eq!(
        e.fde,
        Some(FdeRegion {
            offset: 0x40000,
            length: 2_068_480
        })
    );
    let over = std::fs::read(dir.join("qcow2-luks-overlay.qcow2")).unwrap();
    let h = Header::decode(&over).unwrap();
    let name = &over[h.backing_file_offset as usize..][..h.backing_file_size as usize];
    assert_eq!(name, b"qcow2-luks-base.qcow2");
    let e = Extensions::decode(&over, u64::from(h.header_length), h.extensions_end()).unwrap();
    assert_eq!(e.backing_format.as_deref(), Some("qcow2"));
    let v1 = std::fs::read(dir.join("qcow1-legacy-aes.qcow")).unwrap();
    let h = V1Header::decode(&v1).unwrap();
    assert_eq!((h.cluster_bits, h.l2_bits, h.size), (12, 9, 524_288));
}
