//! LUKS2 metadata edits (keyslots, priorities, digests, tokens), their validation, and
//! hostile input: truncated buffers, absurd sizes, broken or deeply nested JSON, and
//! thousands of random JSON-area mutations must give errors, never panics.
mod common;

use common::{head, sha2_hasher, vectors};
use serde_json::{Value, json};
use vmcrypt_error::ErrorKind;
use vmcrypt_format::luks2::{
    self, BinaryHeader, HeaderCopy, Kdf, KeyslotKind, LoadOptions, Luks2Keyslot, Metadata,
    Priority, json::parse_json_area,
};

fn loaded(name: &str) -> (luks2::Loaded, Vec<u8>) {
    let (buf, _) = head(&vectors().join(name));
    (
        luks2::load(&buf, &sha2_hasher, LoadOptions::default()).unwrap(),
        buf,
    )
}

fn new_slot(offset: u64) -> Luks2Keyslot {
    Luks2Keyslot {
        key_size: 64,
        af_stripes: 4000,
        af_hash: "sha256".into(),
        area_offset: offset,
        area_size: 258048,
        area_encryption: "aes-xts-plain64".into(),
        area_key_size: 64,
        kdf: Kdf::Pbkdf2 {
            hash: "sha256".into(),
            iterations: 1000,
            salt: vec![7; 32],
        },
        priority: Priority::Normal,
    }
}

#[test]
fn add_bind_prioritise_and_remove_keyslots() {
    let (l, _) = loaded("luks2-tokens.img");
    let mut h = l.header.clone();
    let json_len = h.binary.json_area_len();
    let md = &mut h.metadata;
    assert_eq!(md.first_free_keyslot().unwrap(), Some(2));
    // Overlapping slot 1's area is refused by validation.
    md.add_keyslot(2, new_slot(290816).to_json()).unwrap();
    md.bind_digest(2, 0).unwrap();
    let e = md.validate(json_len).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    md.remove_keyslot(2).unwrap();
    // A free area right after slot 1 works; unbound it fails (needs exactly 1 digest).
    md.add_keyslot(2, new_slot(548864).to_json()).unwrap();
    let e = md.validate(json_len).unwrap_err();
    assert!(e.to_string().contains("0 digests"), "{e}");
    md.bind_digest(2, 0).unwrap();
    md.validate(json_len).unwrap();
    assert_eq!(
        md.add_keyslot(2, new_slot(0).to_json()).unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(
        md.add_keyslot(32, new_slot(0).to_json())
            .unwrap_err()
            .kind(),
        ErrorKind::Usage
    );
    md.set_priority(2, Priority::Prefer).unwrap();
    let KeyslotKind::Luks2(k) = md.keyslot(2).unwrap().unwrap().kind else {
        panic!()
    };
    assert_eq!(
        k,
        Luks2Keyslot {
            priority: Priority::Prefer,
            ..new_slot(548864)
        }
    );
    md.set_priority(2, Priority::Normal).unwrap();
    assert!(md.as_map()["keyslots"]["2"].get("priority").is_none());
    assert_eq!(
        md.digest_for_keyslot(2).unwrap().unwrap().keyslots,
        [0, 1, 2]
    );

    // Survives encode + load with the same JSON.
    let bytes = h.encode_both(&sha2_hasher).unwrap();
    let back = luks2::load(&bytes, &sha2_hasher, LoadOptions::default()).unwrap();
    assert_eq!(back.header.metadata, h.metadata);

    // Removing slot 1 drops it from the digest and from token 1.
    let md = &mut h.metadata;
    md.remove_keyslot(1).unwrap();
    assert_eq!(md.digests().unwrap()[0].keyslots, [0, 2]);
    assert!(md.tokens().unwrap()[1].keyslots.is_empty());
    assert_eq!(
        md.remove_keyslot(1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    md.validate(json_len).unwrap();
    // A digest left without keyslots is erased like cryptsetup does before writing.
    md.remove_keyslot(0).unwrap();
    md.remove_keyslot(2).unwrap();
    assert_eq!(md.erase_unused_digests().unwrap(), [0]);
    assert!(
        md.validate(json_len).is_err(),
        "segment 0 now has no digest"
    );
}

#[test]
fn token_rules() {
    let (l, _) = loaded("luks2-multislot.img");
    let mut md = l.header.metadata.clone();
    let kr = json!({"type": "luks2-keyring", "keyslots": ["0"], "key_description": "x"});
    assert_eq!(
        md.add_token(None, kr.clone(), false).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(md.add_token(None, kr, true).unwrap(), 0);
    let t = json!({"type": "vm-kms", "keyslots": ["1"]});
    assert_eq!(
        md.add_token(None, t, false).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let t = json!({"type": "vm-kms", "keyslots": ["3"], "extra": {"x": [1, 2]}});
    assert_eq!(md.add_token(None, t.clone(), false).unwrap(), 1);
    assert_eq!(md.tokens().unwrap()[1].json, *t.as_object().unwrap());
    assert!(md.add_token(None, json!({"keyslots": []}), false).is_err());
    md.validate(l.header.binary.json_area_len()).unwrap();
    md.remove_token(0).unwrap();
    assert_eq!(md.remove_token(0).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn json_area_too_small_is_refused() {
    let (l, _) = loaded("luks2-multislot.img");
    let text = l.header.metadata.to_json_text();
    assert!(
        l.header.metadata.to_json_area(text.len()).is_err(),
        "needs a NUL"
    );
    let area = l.header.metadata.to_json_area(text.len() + 1).unwrap();
    assert_eq!(*area.last().unwrap(), 0);
    // Filling the area through a token makes validation and encoding fail.
    let mut h = l.header.clone();
    let big = "x".repeat(h.binary.json_area_len() as usize);
    h.metadata
        .add_token(None, json!({"type": "t", "keyslots": [], "b": big}), false)
        .unwrap();
    assert!(h.encode_copy(HeaderCopy::Primary, &sha2_hasher).is_err());
}

#[test]
fn json_area_parsing_rules() {
    let ok = |s: &[u8]| parse_json_area(s);
    assert!(ok(b"{}\0").is_ok());
    assert!(ok(b"{}").is_err(), "no trailing NUL");
    assert!(ok(b" {}\0").is_err(), "must start with {{");
    assert!(ok(b"{} \0").is_err(), "space after the object");
    assert!(ok(b"{}\0\0x\0").is_err(), "garbage after NULs");
    assert!(ok(b"[]\0").is_err());
    assert!(ok(b"{\"a\":\0\0").is_err(), "not terminated");
    assert!(ok(b"{\"a\":\"\0\0").is_err());
    assert!(ok(b"\0\0").is_err());
    assert!(ok(b"").is_err());
    let nest = |n: usize| {
        let mut s = "{\"a\":".to_string() + &"[".repeat(n) + &"]".repeat(n) + "}";
        s.push('\0');
        s.into_bytes()
    };
    assert!(ok(&nest(30)).is_ok());
    assert!(ok(&nest(32)).is_err(), "deeper than json-c's 32 levels");
    assert!(ok(&nest(100_000)).is_err());
    let mut deep = "{\"a\":".to_string() + &"[".repeat(1_000_000);
    deep.push('\0');
    assert!(ok(deep.as_bytes()).is_err());
    assert!(Metadata::from_value(json!([1])).is_err());
}

#[test]
fn truncated_and_absurd_headers_are_errors() {
    let (_, buf) = loaded("luks2-argon2id-aes-xts.img");
    let opts = LoadOptions::default();
    for n in [0, 1, 6, 8, 4095, 4096, 8192, 16383] {
        assert!(
            luks2::load(&buf[..n], &sha2_hasher, opts).is_err(),
            "{n} bytes"
        );
    }
    // Primary alone is enough; the secondary is then reported damaged.
    let l = luks2::load(&buf[..16384 + 100], &sha2_hasher, opts).unwrap();
    assert_eq!(l.copy_needing_repair(), Some(HeaderCopy::Secondary));
    // Device-size check.
    let e = luks2::load(
        &buf,
        &sha2_hasher,
        LoadOptions {
            device_size: Some(40000),
        },
    );
    assert!(e.unwrap_err().to_string().contains("too small"));
    // hdr_size u64::MAX / 4 MiB+1 / 0 in both copies: refused without allocating.
    for size in [u64::MAX, 0x40_0001, 0, 16383] {
        let mut b = buf[..32768].to_vec();
        b[8..16].copy_from_slice(&size.to_be_bytes());
        b[16384 + 8..16384 + 16].copy_from_slice(&size.to_be_bytes());
        assert!(luks2::load(&b, &sha2_hasher, opts).is_err(), "{size}");
        assert!(BinaryHeader::decode(&b, HeaderCopy::Primary, 0).is_err());
    }
    // Unknown checksum algorithm.
    let mut b = buf[..32768].to_vec();
    b[72..78].copy_from_slice(b"nohash");
    b[16384 + 72..16384 + 78].copy_from_slice(b"nohash");
    assert!(luks2::load(&b, &sha2_hasher, opts).is_err());
    // LUKS1 magic with version 1.
    let mut b = buf[..32768].to_vec();
    b[7] = 1;
    b[16384..16390].fill(0);
    assert!(luks2::load(&b, &sha2_hasher, opts).is_err());
}

#[test]
fn newer_copy_wins_and_stale_copy_is_reported() {
    let (l, buf) = loaded("luks2-argon2id-aes-xts.img");
    let mut h = l.header.clone();
    h.binary.seqid += 1;
    h.metadata.set_priority(0, Priority::Ignore).unwrap();
    let secondary = h.encode_copy(HeaderCopy::Secondary, &sha2_hasher).unwrap();
    let mut img = buf[..32768].to_vec();
    img[16384..].copy_from_slice(&secondary);
    let got = luks2::load(&img, &sha2_hasher, LoadOptions::default()).unwrap();
    assert_eq!(got.source, HeaderCopy::Secondary);
    assert_eq!(
        got.primary,
        luks2::CopyState::Outdated {
            seqid: l.header.binary.seqid
        }
    );
    assert_eq!(got.copy_needing_repair(), Some(HeaderCopy::Primary));
    assert_eq!(got.header.metadata, h.metadata);
    assert_eq!(got.header.primary_salt, l.header.primary_salt);
}

#[test]
fn random_json_mutations_never_panic() {
    let (l, buf) = loaded("luks2-multislot.img");
    let hs = l.header.hdr_size() as usize;
    let text_len = l.header.metadata.to_json_text().len();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"{}[]\",:0123456789-.eE \0abcdefghijklmnopqrstuvwxyz\\";
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..3000 {
        let mut copy = buf[..hs].to_vec();
        for _ in 0..(1 + next() % 4) {
            let pos = 4096 + (next() as usize % (text_len + 2));
            copy[pos] = alphabet[next() as usize % alphabet.len()];
        }
        let mut bin = BinaryHeader::decode(&copy, HeaderCopy::Primary, 0).unwrap();
        let sealed = bin.seal(&copy[4096..], &sha2_hasher).unwrap();
        copy[..4096].copy_from_slice(&sealed);
        match luks2::load(&copy, &sha2_hasher, LoadOptions::default()) {
            Ok(got) => {
                ok += 1;
                // Whatever loads must survive the typed views and re-encoding.
                let md = &got.header.metadata;
                let _ = (md.keyslots(), md.segments(), md.digests(), md.tokens());
                let _ = got.header.encode_both(&sha2_hasher);
            }
            Err(_) => bad += 1,
        }
    }
    assert!(ok > 0 && bad > 0, "ok {ok}, bad {bad}");
    let _: Value = l.header.metadata.to_value();
}
