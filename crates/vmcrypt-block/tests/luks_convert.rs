//! In-place LUKS1 <-> LUKS2 conversion: interrupted after every write, the image opens
//! with the old or the new format and every passphrase, and the data decrypts the same;
//! the completed conversion matches cryptsetup's metadata; every refusal names its
//! reason and leaves every byte unchanged.
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::convert::{ConvertReport, luks1_to_luks2, luks2_to_luks1};
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_block::drivers::luks::{Luks1Volume, LuksDriver, probe_version};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::Result;
use vmcrypt_format::luks1::Layout;
use vmcrypt_format::luks2::Metadata;

const KEYS: [&[u8]; 3] = [b"convert-A", b"convert-B", b"convert-C"];
const PLAIN: &str = "54cf73fd6f1b4f559d10ced43191d8bc506977954428b4b5b7118e0601a10312";
const DATA_LEN: usize = 96 * 1024;

fn limits() -> KdfLimits {
    KdfLimits::default()
}

fn cs(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/cryptsetup")
        .join(name);
    assert!(p.exists(), "test vector missing: {}", p.display());
    p
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(cs(name)).unwrap()
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(cs("keys").join(name)).unwrap()
}

/// Known plaintext: a counter pattern.
fn data() -> Vec<u8> {
    (0..DATA_LEN).map(|i| (i * 7 + i / 512) as u8).collect()
}

fn mem(img: &[u8]) -> Arc<MemDriver> {
    Arc::new(MemDriver::new(img.to_vec()))
}

fn write_data(m: &Arc<MemDriver>, pass: &[u8]) {
    let d = LuksDriver::open(m.clone(), None, Some(pass), None, &limits()).unwrap();
    d.write_at(&data(), 0).unwrap();
    d.flush().unwrap();
}

/// LUKS1 (cryptsetup layout, 512-bit XTS, 2 MiB payload) with KEYS in `slots`, data written.
fn luks1_image(slots: &[u32]) -> Vec<u8> {
    let m = Arc::new(MemDriver::new(vec![0u8; 3 << 20]));
    let kdf = KeyslotParams {
        iter_time_ms: 1,
        ..pbkdf2_params(HashAlg::Sha256)
    };
    let params = CreateParams {
        layout: Layout::default(),
        keyslot: kdf,
        uuid: Some("0d0c0f2e-1111-4222-8333-944455556666".into()),
        slot: slots[0],
        ..CreateParams::luks1(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap())
    };
    let (mut v, vk) = Luks1Volume::create(m.clone(), &params, KEYS[0]).unwrap();
    for (i, &s) in slots.iter().enumerate().skip(1) {
        v.add_key(&vk, KEYS[i % KEYS.len()], Some(s), &kdf).unwrap();
    }
    write_data(&m, KEYS[0]);
    m.snapshot()
}

fn pbkdf2_params(hash: HashAlg) -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        hash,
        iterations: Some(1000),
        ..Default::default()
    }
}

fn l2_params() -> CreateParams {
    let mut p = CreateParams::luks2(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap());
    p.sector_size = 512;
    p.keyslot = pbkdf2_params(HashAlg::Sha256);
    p.data_offset = Some(2 << 20);
    p
}

/// LUKS2 made by vmcrypt with `p` (plus KEYS[1] in slot 2 when `second`), data written.
fn luks2_image_with(p: &CreateParams, second: bool) -> (Vec<u8>, SecretBytes) {
    let size = p.data_offset.unwrap_or(2 << 20) + (1 << 20);
    let m = Arc::new(MemDriver::new(vec![0u8; size as usize]));
    let (mut v, vk) = Luks2Volume::create(m.clone(), p, KEYS[0]).unwrap();
    if second {
        v.add_key(&vk, KEYS[1], Some(2), &p.keyslot).unwrap();
    }
    write_data(&m, KEYS[0]);
    (m.snapshot(), vk)
}

/// The version and which of `keys` open `img`; every key that opens must decrypt
/// `expect` at the start of the data.
fn state(img: &[u8], keys: &[&[u8]], expect: &[u8]) -> (u16, Vec<bool>) {
    let m = mem(img);
    let version = probe_version(m.as_ref()).unwrap();
    let opened = keys
        .iter()
        .map(
            |k| match LuksDriver::open(m.clone(), None, Some(k), None, &limits()) {
                Ok(d) => {
                    let mut buf = vec![0u8; expect.len()];
                    d.read_at(&mut buf, 0).unwrap();
                    assert!(buf == expect, "data differs after conversion (v{version})");
                    true
                }
                Err(_) => false,
            },
        )
        .collect();
    (version, opened)
}

type Op = fn(Arc<dyn BlockDriver>, bool, &KdfLimits) -> Result<ConvertReport>;

/// Run `op` with a write budget of 0, 1, 2, ... until it completes; after every
/// interruption the image must open as `from` or `to` with exactly `keys_open`.
fn interrupt_everywhere(start: &[u8], op: Op, from: u16, to: u16, keys_open: &[bool]) -> usize {
    let expect = data();
    let mut versions = Vec::new();
    for budget in 0.. {
        let m = mem(start);
        let faulty: Arc<dyn BlockDriver> = Arc::new(FaultyDriver::new(m.clone(), budget));
        let res = op(faulty, false, &limits());
        let img = m.snapshot();
        let (v, set) = state(&img, &KEYS, &expect);
        assert_eq!(set, keys_open, "budget {budget}: key set changed (v{v})");
        assert!(v == from || v == to, "budget {budget}: version {v}");
        versions.push(v);
        match res {
            Ok(_) => {
                assert_eq!(v, to, "completed conversion left version {v}");
                assert!(versions.contains(&from) && versions.contains(&to));
                return budget;
            }
            Err(e) => assert!(
                e.message().contains("injected fault"),
                "budget {budget}: {e}"
            ),
        }
        assert!(budget < 64, "conversion never completes");
    }
    unreachable!()
}

/// cryptsetup's LUKS2 slot cells after a conversion (512-bit key, 16 KiB headers).
fn on_luks2_grid(off: u64) -> bool {
    off >= 32768 && (off - 32768).is_multiple_of(258048)
}

/// cryptsetup's LUKS1 slot cells (512-bit key).
fn on_luks1_grid(off: u64) -> bool {
    off >= 4096 && (off - 4096).is_multiple_of(258048)
}

#[test]
fn luks1_to_luks2_survives_interruption_after_every_write() {
    // Slots 0, 3 and 7: all move into cryptsetup's LUKS2 cells clear of their material.
    let start = luks1_image(&[0, 3, 7]);
    let writes = interrupt_everywhere(&start, luks1_to_luks2, 1, 2, &[true, true, true]);
    // 3 material copies, primary, secondary, 3 wipes of old material.
    assert_eq!(writes, 8);
    let m = mem(&start);
    let r = luks1_to_luks2(m.clone(), false, &limits()).unwrap();
    assert_eq!(r.keyslots.len(), 3);
    for s in &r.keyslots {
        assert!(s.moved() && on_luks2_grid(s.new_offset), "{s:?}");
    }
    let v2 = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    assert!(!v2.needs_repair(), "both LUKS2 copies must be valid");
    let cfg = v2.header().metadata.config().unwrap();
    assert_eq!(
        (cfg.json_size, cfg.keyslots_size),
        (12288, (2 << 20) - 32768)
    );
}

#[test]
fn luks1_to_luks2_fallback_placement_survives_interruption() {
    // Slots 0, 2, 4, 6 leave only one free cryptsetup cell: slots 2, 4 and 6 keep their
    // material in place and slot 0 moves to the first free 4 KiB-aligned area.
    let start = luks1_image(&[0, 2, 4, 6]);
    let writes = interrupt_everywhere(&start, luks1_to_luks2, 1, 2, &[true, true, true]);
    assert_eq!(writes, 4);
    let r = luks1_to_luks2(mem(&start), false, &limits()).unwrap();
    let moved: Vec<bool> = r.keyslots.iter().map(|s| s.moved()).collect();
    assert_eq!(moved, [true, false, false, false]);
}

#[test]
fn luks2_to_luks1_survives_interruption_after_every_write() {
    let (start, _) = luks2_image_with(&l2_params(), true);
    let writes = interrupt_everywhere(&start, luks2_to_luks1, 2, 1, &[true, true, false]);
    // 2 material copies, the LUKS1 header, zeros over the LUKS2 headers, 2 wipes.
    assert_eq!(writes, 6);
    let m = mem(&start);
    let r = luks2_to_luks1(m.clone(), false, &limits()).unwrap();
    for s in &r.keyslots {
        assert!(s.moved() && on_luks1_grid(s.new_offset), "{s:?}");
    }
    // No LUKS2 signature is left: the secondary header area is zero.
    let img = m.snapshot();
    assert!(img[16384..32768].iter().all(|&b| b == 0));
    let v1 = Luks1Volume::open(m, false, &KdfLimits::default()).unwrap();
    let h = v1.header();
    assert_eq!(h.payload_offset, 4096);
    assert_eq!(v1.active_slots(), 2);
    // cryptsetup's LUKS1 layout: every slot on a cell, the first at sector 8.
    assert!(
        h.keyslots
            .iter()
            .all(|k| on_luks1_grid(k.material_offset_bytes()))
    );
    assert_eq!(
        h.keyslots.iter().map(|k| k.key_material_offset).min(),
        Some(8)
    );
}

#[test]
fn luks2_to_luks1_keeps_material_in_place_when_no_cell_is_free() {
    // Eight keyslots fill the LUKS2 area: no cryptsetup cell is free, every slot keeps
    // its area and the conversion is a single header switch.
    let (base, vk) = luks2_image_with(&l2_params(), false);
    let m = mem(&base);
    let mut v = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    for s in 1..8 {
        v.add_key(
            &vk,
            KEYS[s % 2],
            Some(s as u32),
            &pbkdf2_params(HashAlg::Sha256),
        )
        .unwrap();
    }
    let start = m.snapshot();
    let writes = interrupt_everywhere(&start, luks2_to_luks1, 2, 1, &[true, true, false]);
    assert_eq!(writes, 2);
    let r = luks2_to_luks1(mem(&start), false, &limits()).unwrap();
    assert!(r.keyslots.iter().all(|s| !s.moved()));
    assert_eq!(r.keyslots.len(), 8);
}

#[test]
fn round_trip_keeps_keys_and_data() {
    let start = luks1_image(&[0, 1]);
    let m = mem(&start);
    let before = Luks1Volume::open(m.clone(), false, &KdfLimits::default())
        .unwrap()
        .header()
        .clone();
    luks1_to_luks2(m.clone(), false, &limits()).unwrap();
    luks2_to_luks1(m.clone(), false, &limits()).unwrap();
    let after = Luks1Volume::open(m.clone(), false, &KdfLimits::default())
        .unwrap()
        .header()
        .clone();
    assert_eq!(
        (&before.uuid, before.mk_digest, before.mk_digest_iter),
        (&after.uuid, after.mk_digest, after.mk_digest_iter)
    );
    for s in 0..2 {
        assert_eq!(before.keyslots[s].salt, after.keyslots[s].salt);
        assert_eq!(before.keyslots[s].iterations, after.keyslots[s].iterations);
    }
    luks1_to_luks2(m.clone(), false, &limits()).unwrap();
    let (v, set) = state(&m.snapshot(), &KEYS, &data());
    assert_eq!((v, set), (2, vec![true, true, false]));
}

/// The vector cryptsetup converted: our LUKS1 -> LUKS2 gives the same metadata, except
/// where the keyslot area sits (cryptsetup moves it to 32768 by an overlapping copy).
#[test]
fn matches_cryptsetup_convert_metadata() {
    let orig = vector("luks2-converted-from-luks1.img");
    // Back to LUKS1 with vmcrypt; the volume key and data must survive.
    let m = mem(&orig);
    luks2_to_luks1(m.clone(), false, &limits()).unwrap();
    let k = key("l2c-slot0");
    let plain_hash = |m: &Arc<MemDriver>| {
        let d = LuksDriver::open(m.clone(), None, Some(&k), None, &limits()).unwrap();
        let mut buf = vec![0u8; 262144];
        d.read_at(&mut buf, 0).unwrap();
        hex::encode(Sha256::digest(&buf))
    };
    assert_eq!(plain_hash(&m), PLAIN);
    // And to LUKS2 again: compare with cryptsetup's JSON.
    luks1_to_luks2(m.clone(), false, &limits()).unwrap();
    assert_eq!(plain_hash(&m), PLAIN);
    let ours = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    let theirs = Luks2Volume::open(mem(&orig), false, &limits()).unwrap();
    let strip = |v: &Luks2Volume| {
        let mut j = v.header().metadata.to_value();
        j["keyslots"]["0"]["area"]["offset"] = json!("X");
        j
    };
    assert_eq!(strip(&ours), strip(&theirs));
    assert_eq!(ours.header().binary.uuid, theirs.header().binary.uuid);
    assert_eq!(ours.header().hdr_size(), 16384);
}

#[test]
fn cryptsetup_vectors_convert_both_ways() {
    for (img, k) in [
        ("luks1-aes-xts-plain64-sha256.img", "l1x-slot0"),
        ("luks1-aes-cbc-essiv-sha256-hash-sha1.img", "l1e-slot0"),
    ] {
        let m = mem(&vector(img));
        let r = luks1_to_luks2(m.clone(), false, &limits()).unwrap();
        assert_eq!(r.to_version, 2, "{img}");
        let k = key(k);
        let d = LuksDriver::open(m.clone(), None, Some(&k), None, &limits()).unwrap();
        let mut buf = vec![0u8; 262144];
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&buf)), PLAIN, "{img}");
        luks2_to_luks1(m.clone(), false, &limits()).unwrap();
        assert_eq!(probe_version(m.as_ref()).unwrap(), 1);
        let d = LuksDriver::open(m.clone(), None, Some(&k), None, &limits()).unwrap();
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&buf)),
            PLAIN,
            "{img} back to LUKS1"
        );
    }
    // Slots 0, 2 and 5 of the XTS vector: the free cryptsetup cells clear of all three
    // slots' material are 3, 6 and 7.
    let m = mem(&vector("luks1-aes-xts-plain64-sha256.img"));
    let r = luks1_to_luks2(m, false, &limits()).unwrap();
    let ids: Vec<(u32, u64)> = r.keyslots.iter().map(|s| (s.slot, s.new_offset)).collect();
    let cell = |k: u64| 32768 + k * 258048;
    assert_eq!(ids, [(0, cell(3)), (2, cell(6)), (5, cell(7))]);
}

/// `op` on `img` must fail with a message containing `needle` and change no byte.
fn assert_refused(img: &[u8], op: Op, needle: &str) {
    let m = mem(img);
    let e = op(m.clone(), false, &limits()).expect_err("conversion must be refused");
    let msg = e.to_string();
    assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    assert!(
        m.snapshot() == img,
        "a refused conversion changed the image ({msg})"
    );
}

/// A change to LUKS2 metadata JSON.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// Rewrite the LUKS2 metadata of `img` (both copies, via the normal header writer).
fn edit_luks2(img: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let m = mem(img);
    let mut v = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    let mut next = v.header().clone();
    let mut j = next.metadata.to_value();
    f(&mut j);
    next.metadata = Metadata::from_value(j).unwrap();
    v.write_header(next).unwrap();
    m.snapshot()
}

#[test]
fn luks2_to_luks1_refusals_name_their_reason() {
    let (base, vk) = luks2_image_with(&l2_params(), false);
    let to1 = luks2_to_luks1 as Op;
    assert_refused(&vector("luks2-argon2id-aes-xts.img"), to1, "only PBKDF2");
    assert_refused(&vector("luks2-tokens.img"), to1, "token");
    assert_refused(&vector("luks2-multislot.img"), to1, "digests");
    assert_refused(
        &vector("luks2-reencrypt-initialized.img"),
        to1,
        "reencryption",
    );
    assert_refused(
        &vector("luks2-pbkdf2-sha512-aes128-xts.img"),
        to1,
        "not enough room",
    );
    assert_refused(&luks1_image(&[0]), to1, "already LUKS1");

    let mut p = l2_params();
    p.sector_size = 4096;
    assert_refused(&luks2_image_with(&p, false).0, to1, "512-byte sectors");

    let mut p = l2_params();
    p.slot = 9;
    assert_refused(&luks2_image_with(&p, false).0, to1, "only slots 0-7");

    // A second keyslot with another hash.
    let m = mem(&base);
    let mut v = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    v.add_key(&vk, KEYS[1], Some(1), &pbkdf2_params(HashAlg::Sha512))
        .unwrap();
    assert_refused(&m.snapshot(), to1, "LUKS1 has one hash");

    // A token.
    let m = mem(&base);
    let mut v = Luks2Volume::open(m.clone(), false, &limits()).unwrap();
    v.token_import(None, r#"{"type":"x-test","keyslots":["0"]}"#)
        .unwrap();
    assert_refused(&m.snapshot(), to1, "1 token(s)");

    let edits: Vec<(Edit, &str)> = vec![
        (
            Box::new(|j| j["keyslots"]["0"]["af"]["hash"] = json!("sha1")),
            "AF hash",
        ),
        (
            Box::new(|j| j["digests"]["0"]["hash"] = json!("sha512")),
            "digest uses hash",
        ),
        (
            Box::new(|j| j["segments"]["0"]["size"] = json!("1048576")),
            "fixed size",
        ),
        (
            Box::new(|j| j["segments"]["0"]["iv_tweak"] = json!("8")),
            "iv_tweak",
        ),
        (
            Box::new(|j| j["keyslots"]["0"]["area"]["encryption"] = json!("serpent-xts-plain64")),
            "differs from the data cipher",
        ),
        (
            Box::new(|j| j["config"]["requirements"] = json!({"mandatory": ["future-thing"]})),
            "requirements",
        ),
    ];
    for (f, needle) in edits {
        assert_refused(&edit_luks2(&base, f), to1, needle);
    }

    // Not enough room for eight LUKS1 slot areas before the data.
    let mut p = l2_params();
    p.keyslots_size = Some(2 * 258048);
    p.data_offset = Some(32768 + 2 * 258048);
    assert_refused(&luks2_image_with(&p, false).0, to1, "not enough room");

    // A damaged secondary copy must be repaired first.
    let mut img = base.clone();
    img[16384 + 200] ^= 1;
    assert_refused(&img, to1, "repair the header first");
}

#[test]
fn luks1_to_luks2_refusals_name_their_reason() {
    let to2 = luks1_to_luks2 as Op;
    assert_refused(
        &vector("luks1-qemu-img-aes-xts.img"),
        to2,
        "not enough room before the data",
    );
    assert_refused(&vector("luks2-argon2id-aes-xts.img"), to2, "already LUKS2");
    // All eight slots in use: slot 0 has nowhere to go without overwriting material.
    assert_refused(
        &luks1_image(&[0, 1, 2, 3, 4, 5, 6, 7]),
        to2,
        "no room to move the key material of LUKS1 slot 0",
    );
    // luksmeta data after the key material.
    let mut img = luks1_image(&[0]);
    img[2068480..2068488].copy_from_slice(b"LUKSMETA");
    assert_refused(&img, to2, "LUKSMETA");
}

/// Open a detached-header volume and read the start of its data.
fn detached_read(hdr: &[u8], data_dev: &Arc<MemDriver>, pass: &[u8]) -> Option<Vec<u8>> {
    let d = LuksDriver::open(
        data_dev.clone(),
        Some(mem(hdr)),
        Some(pass),
        None,
        &limits(),
    )
    .ok()?;
    let mut buf = vec![0u8; DATA_LEN];
    d.read_at(&mut buf, 0).unwrap();
    Some(buf)
}

#[test]
fn detached_headers_convert_both_ways_crash_safely() {
    let mut p = l2_params();
    p.detached = true;
    p.data_offset = None;
    p.keyslots_size = Some(8 * 258048);
    let hdr = Arc::new(MemDriver::new(vec![0u8; 32768 + 8 * 258048]));
    let data_dev = Arc::new(MemDriver::new(vec![0u8; 1 << 20]));
    Luks2Volume::create(hdr.clone(), &p, KEYS[0]).unwrap();
    let d = LuksDriver::open(
        data_dev.clone(),
        Some(hdr.clone()),
        Some(KEYS[0]),
        None,
        &limits(),
    )
    .unwrap();
    d.write_at(&data(), 0).unwrap();
    let mut img = hdr.snapshot();
    for (op, to) in [(luks2_to_luks1 as Op, 1u16), (luks1_to_luks2 as Op, 2)] {
        for budget in 0.. {
            let m = mem(&img);
            let faulty: Arc<dyn BlockDriver> = Arc::new(FaultyDriver::new(m.clone(), budget));
            let done = op(faulty, true, &limits()).is_ok();
            let snap = m.snapshot();
            assert_eq!(
                detached_read(&snap, &data_dev, KEYS[0]).as_deref(),
                Some(&data()[..]),
                "detached, to v{to}, after {budget} writes"
            );
            if done {
                assert_eq!(probe_version(mem(&snap).as_ref()).unwrap(), to);
                img = snap;
                break;
            }
            assert!(budget < 32);
        }
    }
}
