//! Fuzz entry points for the pure codecs of `vmcrypt-format`: the LUKS1 header, LUKS2
//! load (checksums recomputed so the JSON parser is reached) and JSON metadata, and the
//! qcow2 header, extensions, L1/L2 entries and refcount blocks.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/`) and by
//! `crates/vmcrypt-format/tests/fuzz_replay.rs` (included with `#[path]`), which replays
//! the committed corpora and regression inputs through the same functions. Each entry
//! takes any bytes and must return without panicking; the `assert!`s are properties of
//! the codecs (what decodes also re-encodes to the same value).
use crate::common::sha2_hasher as hasher;
use crate::luks2_csum::fix_checksum;
use crate::replay::Target;
use vmcrypt_format::luks1::{self, Luks1Header};
use vmcrypt_format::luks2::binary::HeaderCopy;
use vmcrypt_format::luks2::{self, BIN_HEADER_SIZE, HDR_SIZES, LoadOptions, Metadata};
use vmcrypt_format::qcow2::table::{CompressedDescriptor, L1Entry, L2Entry, RawL2Entry};
use vmcrypt_format::qcow2::{self, Extensions, Header, Limits, V1Header, refcount};

/// Every target in this file, by name (the corpus directory names).
pub const TARGETS: &[Target] = &[
    ("luks1_header", luks1_header),
    ("luks2_load", luks2_load),
    ("luks2_json", luks2_json),
    ("qcow2_header", qcow2_header),
    ("qcow2_tables", qcow2_tables),
];

/// LUKS1: decode, validate as attached and detached, and re-encode.
pub fn luks1_header(data: &[u8]) {
    let _ = luks1::version_of(data);
    let Ok(h) = Luks1Header::decode(data) else {
        return;
    };
    let limits = luks1::Limits::default();
    let _ = h.validate(data.len() as u64, false, &limits);
    let _ = h.validate(data.len() as u64, true, &limits);
    let _ = (h.payload_offset_bytes(), h.header_area_end());
    for slot in 0..luks1::NUM_KEYSLOTS {
        let _ = h.material_len(slot);
    }
    let again = Luks1Header::decode(&h.encode()).expect("an encoded LUKS1 header decodes");
    assert_eq!(again, h, "LUKS1 header changed in a round trip");
}

/// LUKS2: the input is the start of a header device. Checksums of the primary and of
/// every possible secondary are made correct first, so mutations reach the JSON parser
/// and validator instead of stopping at the checksum. A loaded header must re-encode
/// into one that loads again.
pub fn luks2_load(data: &[u8]) {
    let mut buf = data.to_vec();
    fix_checksum(&mut buf, 0, HeaderCopy::Primary, &hasher);
    for off in HDR_SIZES {
        fix_checksum(&mut buf, off as usize, HeaderCopy::Secondary, &hasher);
    }
    let opts = LoadOptions {
        device_size: Some(buf.len() as u64),
    };
    let Ok(loaded) = luks2::load(&buf, &hasher, opts) else {
        return;
    };
    let _ = loaded.copy_needing_repair();
    let header = loaded.header;
    let _ = header.requirements().map(|r| r.check_writable());
    exercise_metadata(&header.metadata);
    if let Ok(both) = header.encode_both(&hasher) {
        let opts = LoadOptions { device_size: None };
        let again = luks2::load(&both, &hasher, opts).expect("a re-encoded LUKS2 header loads");
        assert_eq!(again.header.metadata, header.metadata);
    }
}

/// Every typed view of LUKS2 metadata; errors are fine, panics are not.
fn exercise_metadata(m: &Metadata) {
    let _ = m.keyslots();
    let _ = m.digests();
    let _ = m.segments();
    let _ = m.tokens();
    let _ = m.config();
    let _ = m.data_offset();
    let _ = m.default_segment();
    let _ = m.regular_segment_count();
    let _ = m.hdr_and_areas_size();
    let _ = m.first_free_keyslot();
    for id in 0..luks2::KEYSLOTS_MAX {
        let _ = m.keyslot(id);
        let _ = m.digest_for_keyslot(id);
    }
}

/// LUKS2 JSON area: parse, validate against a 12 KiB area, view, and re-encode.
pub fn luks2_json(data: &[u8]) {
    let Ok((m, _repaired)) = Metadata::from_json_area(data) else {
        return;
    };
    let _ = m.validate(luks2::HDR_SIZE_MIN - BIN_HEADER_SIZE as u64);
    exercise_metadata(&m);
    let len = (data.len() + 4096).next_multiple_of(4096);
    if let Ok(area) = m.to_json_area(len) {
        let (again, _) = Metadata::from_json_area(&area).expect("re-encoded LUKS2 JSON parses");
        assert_eq!(again, m, "LUKS2 metadata changed in a round trip");
    }
}

/// qcow2 and qcow v1 headers: decode, validate, extensions, re-encode.
pub fn qcow2_header(data: &[u8]) {
    let _ = qcow2::version_of(data);
    let _ = V1Header::decode(data).map(|h| (h.cluster_size(), h.l1_size()));
    let Ok(h) = Header::decode(data) else {
        return;
    };
    let _ = h.validate(data.len() as u64, &Limits::default());
    if h.cluster_bits <= qcow2::header::MAX_CLUSTER_BITS {
        let ext = Extensions::decode(data, u64::from(h.header_length), h.extensions_end());
        if let Ok(ext) = ext {
            let bytes = ext.encode();
            let again = Extensions::decode(&bytes, 0, bytes.len() as u64);
            assert!(again.is_ok(), "encoded extensions do not decode: {again:?}");
        }
    }
    let again = Header::decode(&h.encode()).expect("an encoded qcow2 header decodes");
    assert_eq!(again, h, "qcow2 header changed in a round trip");
}

/// Read a big-endian u64 from the front of `data`, padding with zeros.
fn take_u64(data: &mut &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    u64::from_be_bytes(b)
}

/// L1/L2 entries and refcount blocks. The first byte picks cluster bits and refcount
/// order, the rest is a table of entries (standard and extended L2) and a refcount
/// block to read and write.
pub fn qcow2_tables(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let cluster_bits = 9 + u32::from(sel & 0x0f) % 13;
    let order = u32::from(sel >> 4) % 7;
    let cluster_size = 1u64 << cluster_bits;
    let mut index = 0;
    while rest.len() >= 8 {
        let raw = take_u64(&mut rest);
        let bitmap = take_u64(&mut rest);
        let _ = L1Entry::from_raw(raw).l2_table(index, cluster_size);
        let _ = qcow2::table::l1_l2_offset(raw, index, cluster_size);
        let entry = RawL2Entry::from_raw(raw);
        let _ = (
            entry.is_owned(false),
            entry.is_owned(true),
            entry.host_offset(),
        );
        for bm in [None, Some(bitmap)] {
            if let Ok(e) = L2Entry::decode(raw, bm, cluster_bits, index) {
                l2_round_trip(&e, cluster_bits, index);
            }
        }
        let _ = CompressedDescriptor::decode(raw, cluster_bits);
        index += 1;
    }
    refcounts(data, cluster_bits, order);
}

/// A decoded L2 entry re-encodes to one that decodes the same and maps every
/// subcluster without panicking.
fn l2_round_trip(e: &L2Entry, cluster_bits: u32, index: usize) {
    let (raw, bits) = e.encode(cluster_bits);
    let bm = e.bitmap.map(|_| bits);
    let again = raw
        .decode(bm, cluster_bits, index)
        .expect("re-encoded L2 entry decodes");
    assert_eq!(&again, e, "L2 entry changed in a round trip");
    for sub in 0..qcow2::table::SUBCLUSTERS {
        let _ = e.mapping(sub);
    }
}

/// Read every entry of `block` as a refcount block, and write each back.
fn refcounts(block: &[u8], cluster_bits: u32, order: u32) {
    if refcount::check_order(order).is_err() {
        return;
    }
    let _ = refcount::entries_bits(cluster_bits, order);
    let max = refcount::max_refcount(order);
    let mut copy = block.to_vec();
    let entries = (block.len() * 8) >> order;
    for i in 0..entries {
        let v = refcount::get(block, order, i);
        assert!(v <= max, "refcount above its maximum");
        refcount::set(&mut copy, order, i, v);
    }
    assert_eq!(copy, block, "refcount block changed when rewritten");
}
