//! Live interop of in-place LUKS1 <-> LUKS2 conversion with the real `cryptsetup`:
//! images vmcrypt converts are accepted by `cryptsetup luksDump` and
//! `open --test-passphrase` in their new version, images `cryptsetup convert` made open
//! in vmcrypt, and the data decrypts identically all the way.
//!
//! A missing cryptsetup fails these tests (see `common::require_tool`).
mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::LuksDriver;
use vmcrypt_block::drivers::luks::convert::{luks1_to_luks2, luks2_to_luks1};
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg};

const MIB: u64 = 1 << 20;
const DATA: usize = 512 * 1024;

fn file(path: &str, ro: bool) -> Arc<dyn BlockDriver> {
    Arc::new(FileDriver::open(Path::new(path), ro).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn luks(img: &str, pass: &[u8], ro: bool) -> LuksDriver {
    LuksDriver::open(file(img, ro), None, Some(pass), None, &KdfLimits::default())
        .unwrap_or_else(|e| panic!("vmcrypt cannot open {img}: {e}"))
}

fn vm_write(img: &str, pass: &[u8], data: &[u8]) {
    let d = luks(img, pass, false);
    d.write_at(data, 0).unwrap();
    d.flush().unwrap();
}

fn vm_read(img: &str, pass: &[u8], len: usize) -> Vec<u8> {
    let d = luks(img, pass, true);
    let mut buf = vec![0u8; len];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

fn cs_version(img: &str) -> String {
    dump_field(&cryptsetup(&["luksDump", img]).ok().stdout_str(), "Version")
}

fn cs_test_open(sc: &Scratch, img: &str, keyfile: &str) {
    cryptsetup(&[
        "open",
        "--test-passphrase",
        "--key-file",
        &sc.p(keyfile),
        img,
    ])
    .ok();
}

fn cs_convert(img: &str, to: &str) {
    cryptsetup(&["convert", "-q", "--type", to, img]).ok();
}

/// A cryptsetup LUKS1 image (2 MiB payload offset) with PASS in slot 0 and PASS2 in slot 1.
fn cs_luks1(sc: &Scratch, name: &str) -> String {
    sc.write("pw", PASS);
    sc.write("pw2", PASS2);
    let img = sc.sparse(name, 4 * MIB);
    cs_format(sc, "pw", &img, &["-c", "aes-xts-plain64", "-s", "512"]);
    cs_new_key(sc, "luksAddKey", "pw", &img, "pw2", &[]).ok();
    img
}

#[test]
fn a_cryptsetup_luks1_converted_by_vmcrypt_opens_in_cryptsetup_as_luks2() {
    let sc = Scratch::new();
    let img = cs_luks1(&sc, "a.img");
    let data = plaintext(DATA, "convert-a");
    vm_write(&img, PASS, &data);
    let r = luks1_to_luks2(file(&img, false), false, &KdfLimits::default()).unwrap();
    assert_eq!(r.to_version, 2);
    assert_eq!(cs_version(&img), "2");
    cs_test_open(&sc, &img, "pw");
    cs_test_open(&sc, &img, "pw2");
    // cryptsetup must find both header copies valid: a metadata change it writes works.
    cryptsetup(&["config", "--label", "converted", &img]).ok();
    assert_same_bytes("data after conversion", &vm_read(&img, PASS2, DATA), &data);
    // And back to LUKS1 with cryptsetup: the layout vmcrypt chose is convertible.
    cs_convert(&img, "luks1");
    assert_eq!(cs_version(&img), "1");
    assert_same_bytes(
        "data after cryptsetup back",
        &vm_read(&img, PASS, DATA),
        &data,
    );
}

#[test]
fn b_cryptsetup_convert_to_luks2_opens_in_vmcrypt() {
    let sc = Scratch::new();
    let img = cs_luks1(&sc, "b.img");
    let data = plaintext(DATA, "convert-b");
    vm_write(&img, PASS, &data);
    cs_convert(&img, "luks2");
    assert_eq!(cs_version(&img), "2");
    let d = luks(&img, PASS2, true);
    assert!(d.luks2().is_some());
    // Release our reader: converting needs the image to itself (image locking).
    drop(d);
    assert_same_bytes("data", &vm_read(&img, PASS2, DATA), &data);
    // vmcrypt takes it back to LUKS1; cryptsetup accepts the result.
    luks2_to_luks1(file(&img, false), false, &KdfLimits::default()).unwrap();
    assert_eq!(cs_version(&img), "1");
    cs_test_open(&sc, &img, "pw");
    cs_test_open(&sc, &img, "pw2");
    assert_same_bytes("data back in LUKS1", &vm_read(&img, PASS, DATA), &data);
}

#[test]
fn c_vmcrypt_luks2_converted_to_luks1_opens_in_cryptsetup() {
    let sc = Scratch::new();
    let img = vm_luks2_pbkdf2(&sc, "c.img");
    let data = plaintext(DATA, "convert-c");
    vm_write(&img, PASS, &data);
    cs_test_open(&sc, &img, "pw");
    luks2_to_luks1(file(&img, false), false, &KdfLimits::default()).unwrap();
    let dump = cryptsetup(&["luksDump", &img]).ok().stdout_str();
    assert_eq!(dump_field(&dump, "Version"), "1");
    assert_eq!(dump_field(&dump, "Payload offset"), "4096");
    cs_test_open(&sc, &img, "pw");
    assert_same_bytes("data", &vm_read(&img, PASS, DATA), &data);
    // A key slot cryptsetup adds to the converted header works in vmcrypt.
    sc.write("pw3", PASS3);
    cs_new_key(&sc, "luksAddKey", "pw", &img, "pw3", &[]).ok();
    assert_same_bytes("data via new slot", &vm_read(&img, PASS3, DATA), &data);
    // vmcrypt wrote cryptsetup's LUKS1 layout, so cryptsetup converts it to LUKS2 again.
    cs_convert(&img, "luks2");
    assert_eq!(cs_version(&img), "2");
    assert_same_bytes("data in LUKS2 again", &vm_read(&img, PASS3, DATA), &data);
}

type Op = fn(
    Arc<dyn BlockDriver>,
    bool,
    &KdfLimits,
) -> vmcrypt_error::Result<vmcrypt_block::drivers::luks::convert::ConvertReport>;

/// Interrupt `op` on a copy of `img` after every write in turn; cryptsetup must open
/// every intermediate image (as `from` or `to`) and vmcrypt must decrypt `data` from it.
/// Returns the versions cryptsetup saw, in order.
fn interrupted_states_open_in_cryptsetup(
    sc: &Scratch,
    img: &str,
    op: Op,
    data: &[u8],
) -> Vec<String> {
    use vmcrypt_block::drivers::mem::MemDriver;
    use vmcrypt_block::drivers::testing::FaultyDriver;
    let start = read(Path::new(img));
    let mut seen = Vec::new();
    for budget in 0..32 {
        let mem = Arc::new(MemDriver::new(start.clone()));
        let faulty: Arc<dyn BlockDriver> = Arc::new(FaultyDriver::new(mem.clone(), budget));
        let done = op(faulty, false, &KdfLimits::default()).is_ok();
        let state = sc.write("state.img", &mem.snapshot());
        let v = cs_version(&state);
        cs_test_open(sc, &state, "pw");
        assert_same_bytes(
            &format!("data after {budget} writes"),
            &vm_read(&state, PASS, DATA),
            data,
        );
        seen.push(v);
        if done {
            return seen;
        }
    }
    panic!("conversion never completed");
}

fn vm_luks2_pbkdf2(sc: &Scratch, name: &str) -> String {
    sc.write("pw", PASS);
    let img = sc.sparse(name, 3 * MIB);
    let mut p = CreateParams::luks2(CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap());
    p.sector_size = 512;
    p.data_offset = Some(2 * MIB);
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        hash: HashAlg::Sha256,
        iterations: Some(1000),
        ..Default::default()
    };
    Luks2Volume::create(file(&img, false), &p, PASS).unwrap();
    img
}

#[test]
fn interrupted_conversions_open_in_cryptsetup() {
    // LUKS2 -> LUKS1: after the LUKS1 header write the LUKS2 secondary copy is still
    // intact; cryptsetup must read LUKS1 at offset 0.
    let sc = Scratch::new();
    let img = vm_luks2_pbkdf2(&sc, "ci.img");
    let data = plaintext(DATA, "convert-ci");
    vm_write(&img, PASS, &data);
    let seen = interrupted_states_open_in_cryptsetup(&sc, &img, luks2_to_luks1, &data);
    assert!(
        seen.contains(&"2".to_string()) && seen.last().unwrap() == "1",
        "{seen:?}"
    );
    // LUKS1 -> LUKS2: the state with only the primary LUKS2 copy written must open too.
    let img = cs_luks1(&sc, "cj.img");
    let data = plaintext(DATA, "convert-cj");
    vm_write(&img, PASS, &data);
    let seen = interrupted_states_open_in_cryptsetup(&sc, &img, luks1_to_luks2, &data);
    assert!(
        seen.contains(&"1".to_string()) && seen.last().unwrap() == "2",
        "{seen:?}"
    );
}

#[test]
fn d_cryptsetup_convert_to_luks1_opens_in_vmcrypt() {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    let img = sc.sparse("d.img", 18 * MIB);
    cryptsetup(&[
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--sector-size",
        "512",
        "--key-file",
        &sc.p("pw"),
        &img,
    ])
    .ok();
    let data = plaintext(DATA, "convert-d");
    vm_write(&img, PASS, &data);
    cs_convert(&img, "luks1");
    assert_eq!(cs_version(&img), "1");
    let d = luks(&img, PASS, true);
    assert!(d.luks1().is_some());
    drop(d);
    assert_same_bytes("data", &vm_read(&img, PASS, DATA), &data);
    // And vmcrypt takes it to LUKS2 again; cryptsetup opens that.
    luks1_to_luks2(file(&img, false), false, &KdfLimits::default()).unwrap();
    assert_eq!(cs_version(&img), "2");
    cs_test_open(&sc, &img, "pw");
    assert_same_bytes("data in LUKS2", &vm_read(&img, PASS, DATA), &data);
}

#[test]
fn e_shared_vector_converts_back_to_luks1() {
    let sc = Scratch::new();
    let src = shared("vectors/cryptsetup/luks2-converted-from-luks1.img");
    let img = sc.write("e.img", &read(Path::new(&src)));
    let key_file = shared("vectors/cryptsetup/keys/l2c-slot0");
    sc.write("pw", &read(Path::new(&key_file)));
    luks2_to_luks1(file(&img, false), false, &KdfLimits::default()).unwrap();
    assert_eq!(cs_version(&img), "1");
    cs_test_open(&sc, &img, "pw");
    let key = read(Path::new(&key_file));
    assert_eq!(
        sha256_hex(&vm_read(&img, &key, 262144)),
        "54cf73fd6f1b4f559d10ced43191d8bc506977954428b4b5b7118e0601a10312"
    );
    // The volume key cryptsetup reports is the vector's.
    let vk = cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        &sc.p("pw"),
        &img,
    ])
    .ok()
    .stdout_str();
    assert!(vk.contains("6d 1d b7 87"), "{vk}");
}

#[test]
fn qemu_layout_is_refused_like_cryptsetup() {
    let sc = Scratch::new();
    let src = shared("vectors/cryptsetup/luks1-qemu-img-aes-xts.img");
    let img = sc.write("q.img", &read(Path::new(&src)));
    cryptsetup(&["convert", "-q", "--type", "luks2", &img]).failed();
    let e = luks1_to_luks2(file(&img, false), false, &KdfLimits::default()).unwrap_err();
    assert!(e.to_string().contains("not enough room"), "{e}");
    assert_same_bytes("refused image", &sc.read("q.img"), &read(Path::new(&src)));
}

/// The CLI: `vmcrypt luks convert --type luks2` then `--type luks1`, each checked by
/// cryptsetup, data unchanged; a bad --type is a usage error; a refusal is exit 4 with
/// its reason and no change.
#[test]
fn cli_convert_round_trip_checked_by_cryptsetup() {
    let sc = Scratch::new();
    let img = cs_luks1(&sc, "cli.img");
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    vm_write(&img, PASS, &data);
    vmcrypt(&["luks", "convert", "--type", "luks2", &img]).ok();
    assert_eq!(cs_version(&img), "2");
    cs_test_open(&sc, &img, "pw2");
    assert_eq!(vm_read(&img, PASS, data.len()), data);
    vmcrypt(&["luks", "convert", "--type", "luks1", &img]).ok();
    assert_eq!(cs_version(&img), "1");
    cs_test_open(&sc, &img, "pw");
    assert_eq!(vm_read(&img, PASS2, data.len()), data);
    vmcrypt(&["luks", "convert", "--type", "luks3", &img]).code_is(1);
    // A LUKS2 header with a token cannot become LUKS1.
    vmcrypt(&["luks", "convert", "--type", "luks2", &img]).ok();
    sc.write("t.json", br#"{"type":"x-test","keyslots":["0"]}"#);
    vmcrypt(&[
        "luks",
        "token",
        "import",
        "--json-file",
        &sc.p("t.json"),
        &img,
    ])
    .ok();
    let before = sha256_file(Path::new(&img));
    vmcrypt(&["luks", "convert", "--type", "luks1", &img])
        .code_is(4)
        .stderr_has("token");
    assert_eq!(sha256_file(Path::new(&img)), before);
}
