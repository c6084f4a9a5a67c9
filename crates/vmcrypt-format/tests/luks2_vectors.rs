//! Every LUKS2 image made by cryptsetup 2.6.1 in the shared vectors: it loads from the
//! primary copy, its JSON equals `luksDump --dump-json-metadata`, both checksums
//! verify with an independent SHA-256, and re-encoding reproduces both copies exactly.
mod common;

use common::{head, sha2_hasher, vectors};
use serde_json::Value;
use sha2::Digest;
use vmcrypt_format::luks2::{
    self, CopyState, HeaderCopy, KeyslotKind, LoadOptions, Priority, SegmentSize,
};

const IMAGES: [&str; 8] = [
    "luks2-argon2id-aes-xts.img",
    "luks2-converted-from-luks1.img",
    "luks2-detached.hdr",
    "luks2-multislot.img",
    "luks2-pbkdf2-sha512-aes128-xts.img",
    "luks2-reencrypt-initialized.img",
    "luks2-sector4096-argon2i.img",
    "luks2-tokens.img",
];

fn load(name: &str) -> (luks2::Loaded, Vec<u8>) {
    let (buf, size) = head(&vectors().join(name));
    let l = luks2::load(
        &buf,
        &sha2_hasher,
        LoadOptions {
            device_size: Some(size),
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    (l, buf)
}

/// sha256(binary header with csum zeroed || JSON area) == stored csum, computed here
/// without the codec.
fn independent_checksum_ok(copy: &[u8]) -> bool {
    let mut zeroed = copy[..4096].to_vec();
    zeroed[448..512].fill(0);
    let mut h = sha2::Sha256::new();
    h.update(&zeroed);
    h.update(&copy[4096..]);
    h.finalize()[..] == copy[448..480]
}

#[test]
fn vectors_decode_validate_and_round_trip() {
    for name in IMAGES {
        let (l, buf) = load(name);
        assert_eq!(l.source, HeaderCopy::Primary, "{name}");
        assert_eq!(
            (&l.primary, &l.secondary),
            (&CopyState::Valid, &CopyState::Valid),
            "{name}"
        );
        assert!(!l.json_repaired, "{name}");
        let base = name.trim_end_matches(".img").trim_end_matches(".hdr");
        let meta: Value = serde_json::from_slice(
            &std::fs::read(vectors().join("meta").join(format!("{base}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(l.header.metadata.to_value(), meta, "{name}: JSON differs");
        let hs = l.header.hdr_size() as usize;
        assert!(independent_checksum_ok(&buf[..hs]), "{name}: primary csum");
        assert!(
            independent_checksum_ok(&buf[hs..2 * hs]),
            "{name}: secondary csum"
        );
        let again = l.header.encode_both(&sha2_hasher).unwrap();
        assert!(again == buf[..2 * hs], "{name}: re-encoding differs");
        // typed views parse everywhere
        l.header.metadata.keyslots().unwrap();
        l.header.metadata.segments().unwrap();
        l.header.metadata.tokens().unwrap();
        l.header.metadata.config().unwrap();
    }
}

#[test]
fn typed_views_match_the_dumps() {
    let (l, _) = load("luks2-multislot.img");
    let md = &l.header.metadata;
    assert_eq!(l.header.binary.label, "vm-disk-0");
    assert_eq!(l.header.binary.subsystem, "vmcrypt");
    assert_eq!(l.header.hdr_size(), 32768);
    let ids: Vec<u32> = md.keyslots().unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, [0, 2, 3, 7, 9, 12]);
    let k3 = md.keyslot(3).unwrap().unwrap();
    let KeyslotKind::Luks2(k3) = k3.kind else {
        panic!()
    };
    assert_eq!(k3.priority, Priority::Prefer);
    assert_eq!((k3.area_offset, k3.area_size), (839680, 258048));
    assert!(matches!(
        k3.kdf,
        luks2::Kdf::Argon2 {
            id: false,
            time: 4,
            memory: 1024,
            cpus: 1,
            ..
        }
    ));
    let k12 = md.digest_for_keyslot(12).unwrap().unwrap();
    assert!(k12.segments.is_empty(), "slot 12 is unbound");
    let seg = md.default_segment().unwrap();
    assert_eq!(
        (seg.offset, seg.size, seg.sector_size),
        (2097152, SegmentSize::Dynamic, 512)
    );
    assert_eq!(md.config().unwrap().keyslots_size, 2031616);
    assert_eq!(md.first_free_keyslot().unwrap(), Some(1));
    assert!(l.header.requirements().unwrap().mandatory.is_empty());

    let (l, _) = load("luks2-pbkdf2-sha512-aes128-xts.img");
    let d = &l.header.metadata.digests().unwrap()[0];
    assert_eq!(
        (d.hash.as_str(), d.digest.len(), d.salt.len()),
        ("sha512", 64, 32)
    );
    let (l, _) = load("luks2-converted-from-luks1.img");
    assert_eq!(l.header.metadata.digests().unwrap()[0].digest.len(), 20);
    let (l, _) = load("luks2-sector4096-argon2i.img");
    assert_eq!(
        l.header.metadata.default_segment().unwrap().sector_size,
        4096
    );
    let (l, _) = load("luks2-detached.hdr");
    assert_eq!(l.header.metadata.data_offset().unwrap(), 0);
}

#[test]
fn reencryption_header_is_read_only() {
    let (l, _) = load("luks2-reencrypt-initialized.img");
    let r = l.header.requirements().unwrap();
    assert!(r.reencryption_in_progress() && r.unknown.is_empty() && r.read_only());
    assert_eq!(r.reencryption, ["online-reencrypt-v2"]);
    let e = r.check_writable().unwrap_err();
    assert_eq!(e.kind(), vmcrypt_error::ErrorKind::ReadOnly);
    let md = &l.header.metadata;
    assert!(matches!(
        md.keyslot(2).unwrap().unwrap().kind,
        KeyslotKind::Reencrypt { .. }
    ));
    assert_eq!(md.regular_segment_count().unwrap(), 1);
    assert_eq!(md.default_segment().unwrap().id, 2, "backup-final segment");
}

#[test]
fn tokens_keep_unknown_fields() {
    let (l, buf) = load("luks2-tokens.img");
    let toks = l.header.metadata.tokens().unwrap();
    assert_eq!(toks.len(), 2);
    assert_eq!(toks[0].kind, "example-vm-kms");
    assert_eq!(toks[0].json["kms_key_id"], "kms/key/42");
    let want: Value = serde_json::from_slice(
        &std::fs::read(vectors().join("meta/luks2-tokens.token0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(Value::Object(toks[0].json.clone()), want);
    // Remove and re-import token 0: same bytes as before, field order preserved.
    let mut h = l.header.clone();
    let t0 = h.metadata.remove_token(0).unwrap();
    assert_eq!(
        h.metadata
            .add_token(Some(1), t0.clone(), false)
            .unwrap_err()
            .kind(),
        vmcrypt_error::ErrorKind::Busy
    );
    let mut md = h.metadata.clone();
    md.remove_token(1).unwrap();
    assert_eq!(md.add_token(None, t0.clone(), false).unwrap(), 0);
    md.add_token(None, toks[1].json.clone().into(), true)
        .unwrap();
    h.metadata = md;
    let hs = h.hdr_size() as usize;
    assert!(h.encode_both(&sha2_hasher).unwrap() == buf[..2 * hs]);
}
