//! LUKS2 fault injection: every key-slot, token, priority and repair operation is
//! interrupted after each of its writes in turn (and, separately, in the middle of a
//! write); the image left behind must load and open with exactly the old or the new key
//! set and token set, never neither. Also: a damaged header copy opens from the other
//! one and `repair()` restores both; refused operations change no byte.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams};
use vmcrypt_block::drivers::mem::MemDriver;
use vmcrypt_block::drivers::testing::FaultyDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, SecretBytes};
use vmcrypt_error::{ErrorKind, Reason, Result, bail};
use vmcrypt_format::luks2::{CopyState, HeaderCopy, Metadata, Priority};

const KEYS: [&[u8]; 3] = [b"key-A", b"key-B", b"key-C"];
const HDR: u64 = 16 << 10;
/// Four 64-byte-key slots fit (252 KiB each).
const KEYSLOTS: u64 = 1 << 20;
const DATA: u64 = 2 * HDR + KEYSLOTS;

fn pbkdf2() -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        iterations: Some(1000),
        ..Default::default()
    }
}

/// The cheapest Argon2id cryptsetup accepts (1 pass, 64 KiB, 1 lane).
fn argon2id() -> KeyslotParams {
    KeyslotParams {
        kdf: KdfKind::Argon2id,
        iterations: Some(1),
        memory_kib: Some(64),
        parallel: Some(1),
        ..Default::default()
    }
}

fn base_image() -> (Vec<u8>, SecretBytes) {
    let mem = Arc::new(MemDriver::new(vec![0u8; DATA as usize + 4096]));
    let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
    p.keyslot = pbkdf2();
    p.keyslots_size = Some(KEYSLOTS);
    p.data_offset = Some(DATA);
    let (_, vk) = Luks2Volume::create(mem.clone(), &p, KEYS[0]).unwrap();
    (mem.snapshot(), vk)
}

fn open_mem(mem: Arc<MemDriver>) -> Result<Luks2Volume> {
    Luks2Volume::open(mem, false, &KdfLimits::default())
}

/// What an image opens with: which of KEYS unlock it (without naming a slot) and the
/// tokens (id, JSON). Every key that unlocks must give the original volume key.
#[derive(Clone, Debug, PartialEq)]
struct State {
    keys: Vec<bool>,
    tokens: Vec<(u32, String)>,
}

fn state(image: Vec<u8>, vk: &SecretBytes) -> State {
    let vol = open_mem(Arc::new(MemDriver::new(image)))
        .expect("an interrupted image must still have a valid header");
    let keys = KEYS
        .iter()
        .map(|k| match vol.unlock(k, None) {
            Ok(u) => {
                assert_eq!(u.volume_key, *vk, "a key opened a different volume key");
                assert!(u.bound);
                true
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::WrongKey, "unlock failed oddly: {e}");
                false
            }
        })
        .collect();
    let tokens = vol
        .header()
        .metadata
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.id, serde_json::to_string(&t.json).unwrap()))
        .collect();
    State { keys, tokens }
}

type Op<'a> = &'a dyn Fn(&mut Luks2Volume) -> Result<()>;

/// A node that, after `budget` whole writes, writes only the first 512-byte sector of the
/// next one and then fails: a torn write (a header copy then has a new binary header and
/// checksum over an old JSON area, so it is invalid).
struct TornDriver {
    inner: Arc<MemDriver>,
    budget: usize,
    writes: AtomicUsize,
}

impl BlockDriver for TornDriver {
    fn driver_name(&self) -> &'static str {
        "torn"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n < self.budget {
            return self.inner.write_at(buf, offset);
        }
        if n == self.budget {
            self.inner.write_at(&buf[..buf.len().min(512)], offset)?;
        }
        bail!(Io, "injected torn write #{}", n + 1)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write_at(&vec![0u8; len as usize], offset)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

/// Run `op` with a write budget of 0, 1, 2, ... until it completes (once with clean
/// stops, once with torn writes); after every interruption the state must be one of
/// `allowed`, the image must be repairable without changing that state, and the op
/// must then complete on the repaired image. Returns the number of writes.
fn interrupt_everywhere(start: &[u8], vk: &SecretBytes, allowed: &[State], op: Op) -> usize {
    let mut writes = 0;
    for torn in [false, true] {
        for budget in 0.. {
            let mem = Arc::new(MemDriver::new(start.to_vec()));
            let dev: Arc<dyn BlockDriver> = if torn {
                Arc::new(TornDriver {
                    inner: mem.clone(),
                    budget,
                    writes: AtomicUsize::new(0),
                })
            } else {
                Arc::new(FaultyDriver::new(mem.clone(), budget))
            };
            let mut vol = Luks2Volume::open(dev, false, &KdfLimits::default()).unwrap();
            let res = op(&mut vol);
            let set = state(mem.snapshot(), vk);
            match res {
                Ok(()) => {
                    assert_eq!(
                        &set,
                        allowed.last().unwrap(),
                        "completed op gave the wrong state"
                    );
                    writes = budget;
                    break;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Io, "unexpected error: {e}");
                    assert!(
                        allowed.contains(&set),
                        "interrupted after {budget} writes (torn: {torn}): state {set:?} \
                         not in {allowed:?}"
                    );
                    recover_and_retry(&mem, vk, &set, allowed, op);
                }
            }
        }
    }
    writes
}

/// After an interruption: repair keeps the state and leaves both copies valid, and the
/// operation then completes (unless it already took effect and cannot be repeated).
fn recover_and_retry(mem: &MemDriver, vk: &SecretBytes, set: &State, allowed: &[State], op: Op) {
    let m = Arc::new(MemDriver::new(mem.snapshot()));
    let mut vol = open_mem(m.clone()).unwrap();
    vol.repair().unwrap();
    let reopened = open_mem(m.clone()).unwrap();
    assert!(
        !reopened.needs_repair(),
        "repair left {:?}",
        reopened.copy_states()
    );
    assert_eq!(&state(m.snapshot(), vk), set, "repair changed the state");
    if set != allowed.last().unwrap() {
        op(&mut vol).unwrap_or_else(|e| panic!("op after recovery failed: {e}"));
        assert_eq!(&state(m.snapshot(), vk), allowed.last().unwrap());
    }
}

fn keys(k: [bool; 3]) -> State {
    State {
        keys: k.to_vec(),
        tokens: Vec::new(),
    }
}

/// `start` with KEYS[i] added for each i in `add`.
fn with_keys(image: Vec<u8>, vk: &SecretBytes, add: &[usize]) -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(image));
    let mut vol = open_mem(mem.clone()).unwrap();
    for &k in add {
        vol.add_key(vk, KEYS[k], None, &pbkdf2()).unwrap();
    }
    mem.snapshot()
}

const TOKEN: &str = r#"{"type":"vmcrypt-test","keyslots":["0"],"note":"x"}"#;

fn with_token(image: Vec<u8>) -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(image));
    open_mem(mem.clone())
        .unwrap()
        .token_import(Some(3), TOKEN)
        .unwrap();
    mem.snapshot()
}

fn token_state(k: [bool; 3], tokens: &[u32]) -> State {
    let json: serde_json::Value = serde_json::from_str(TOKEN).unwrap();
    State {
        keys: k.to_vec(),
        tokens: tokens
            .iter()
            .map(|&id| (id, serde_json::to_string(&json).unwrap()))
            .collect(),
    }
}

#[test]
fn add_key_is_crash_safe() {
    let (start, vk) = base_image();
    let old = keys([true, false, false]);
    let new = keys([true, true, false]);
    for params in [pbkdf2(), argon2id()] {
        let writes = interrupt_everywhere(&start, &vk, &[old.clone(), new.clone()], &|vol| {
            vol.add_key(&vk, KEYS[1], None, &params).map(|_| ())
        });
        assert!(
            writes >= 3,
            "add-key should write material, then two header copies ({writes} writes)"
        );
    }
}

#[test]
fn kill_slot_is_crash_safe() {
    let (base, vk) = base_image();
    let start = with_keys(base, &vk, &[1]);
    let old = keys([true, true, false]);
    let new = keys([true, false, false]);
    let writes = interrupt_everywhere(&start, &vk, &[old, new], &|vol| {
        vol.kill_slot(1, false).map(|_| ())
    });
    assert!(
        writes >= 3,
        "two header copies and a wipe ({writes} writes)"
    );
}

#[test]
fn kill_slot_drops_its_tokens_crash_safely() {
    let (base, vk) = base_image();
    let start = with_token(with_keys(base, &vk, &[1]));
    let old = token_state([true, true, false], &[3]);
    let new = keys([false, true, false]);
    interrupt_everywhere(&start, &vk, &[old, new], &|vol| {
        let r = vol.kill_slot(0, false)?;
        assert_eq!(r.dropped_tokens, vec![3]);
        Ok(())
    });
}

#[test]
fn remove_key_is_crash_safe() {
    let (base, vk) = base_image();
    let start = with_keys(base, &vk, &[1]);
    let old = keys([true, true, false]);
    let new = keys([false, true, false]);
    interrupt_everywhere(&start, &vk, &[old, new], &|vol| {
        vol.remove_key(KEYS[0], false).map(|_| ())
    });
}

#[test]
fn change_key_is_crash_safe_and_keeps_slot_priority_and_tokens() {
    let (base, vk) = base_image();
    let start = {
        let mem = Arc::new(MemDriver::new(with_token(base)));
        open_mem(mem.clone())
            .unwrap()
            .set_priority(0, Priority::Prefer)
            .unwrap();
        mem.snapshot()
    };
    let old = token_state([true, false, false], &[3]);
    let new = token_state([false, false, true], &[3]);
    for params in [pbkdf2(), argon2id()] {
        interrupt_everywhere(&start, &vk, &[old.clone(), new.clone()], &|vol| {
            let slot = vol.change_key(KEYS[0], KEYS[2], None, &params)?;
            assert_eq!(slot, 0, "change-key must keep the slot id");
            Ok(())
        });
    }
    // The finished change: same id, same priority, token still bound, old area wiped.
    let mem = Arc::new(MemDriver::new(start.clone()));
    let mut vol = open_mem(mem.clone()).unwrap();
    let before = vol.header().metadata.keyslot(0).unwrap().unwrap();
    vol.change_key(KEYS[0], KEYS[2], Some(0), &pbkdf2())
        .unwrap();
    let vol = open_mem(mem.clone()).unwrap();
    let after = vol.header().metadata.keyslot(0).unwrap().unwrap();
    assert_ne!(
        after.area_offset, before.area_offset,
        "new material, new area"
    );
    let vmcrypt_format::luks2::KeyslotKind::Luks2(l) = after.kind else {
        panic!("not a luks2 keyslot")
    };
    assert_eq!(l.priority, Priority::Prefer);
    assert_eq!(vol.header().metadata.tokens().unwrap()[0].keyslots, [0]);
    assert_eq!(vol.unlock(KEYS[2], Some(0)).unwrap().volume_key, vk);
    let img = mem.snapshot();
    let (a, n) = (before.area_offset as usize, before.area_size as usize);
    assert_ne!(img[a..a + n], start[a..a + n], "old key material not wiped");
}

#[test]
fn token_import_and_remove_are_crash_safe() {
    let (start, vk) = base_image();
    let old = keys([true, false, false]);
    let new = token_state([true, false, false], &[3]);
    let writes = interrupt_everywhere(&start, &vk, &[old.clone(), new.clone()], &|vol| {
        assert_eq!(vol.token_import(Some(3), TOKEN)?, 3);
        Ok(())
    });
    assert!(writes >= 2, "two header copies ({writes} writes)");
    let with = with_token(start);
    interrupt_everywhere(&with, &vk, &[new, old], &|vol| vol.token_remove(3));
}

#[test]
fn set_priority_is_crash_safe() {
    let (base, vk) = base_image();
    let start = with_keys(base, &vk, &[1]);
    // An ignore-priority slot is not tried unless named.
    let old = keys([true, true, false]);
    let new = keys([true, false, false]);
    interrupt_everywhere(&start, &vk, &[old, new], &|vol| {
        vol.set_priority(1, Priority::Ignore)
    });
}

/// Flip a byte of the JSON area of one copy (its checksum then fails).
fn damage(img: &mut [u8], copy: HeaderCopy) {
    let base = match copy {
        HeaderCopy::Primary => 0,
        HeaderCopy::Secondary => HDR as usize,
    };
    img[base + 4096 + 2] ^= 0x55;
}

fn copy_state(vol: &Luks2Volume, copy: HeaderCopy) -> CopyState {
    let (p, s) = vol.copy_states();
    match copy {
        HeaderCopy::Primary => p.clone(),
        HeaderCopy::Secondary => s.clone(),
    }
}

#[test]
fn damaged_copy_opens_from_the_other_and_repair_restores_both() {
    let (start, vk) = base_image();
    for bad in [HeaderCopy::Primary, HeaderCopy::Secondary] {
        let mut img = start.clone();
        damage(&mut img, bad);
        let mem = Arc::new(MemDriver::new(img));
        let mut vol = open_mem(mem.clone()).unwrap();
        assert!(matches!(copy_state(&vol, bad), CopyState::Invalid { .. }));
        assert_eq!(copy_state(&vol, bad.other()), CopyState::Valid);
        assert!(vol.needs_repair());
        assert_eq!(vol.unlock(KEYS[0], None).unwrap().volume_key, vk);
        // Opening alone does not write.
        let damaged = mem.snapshot();
        assert!(vol.repair().unwrap(), "repair must report work done");
        assert_ne!(mem.snapshot(), damaged);
        assert!(!open_mem(mem.clone()).unwrap().needs_repair());
        // Now the *other* copy can be lost: the repaired one carries the volume.
        let mut img = mem.snapshot();
        damage(&mut img, bad.other());
        let vol = open_mem(Arc::new(MemDriver::new(img))).unwrap();
        assert_eq!(
            copy_state(&vol, bad),
            CopyState::Valid,
            "{bad:?} not repaired"
        );
        assert!(matches!(
            copy_state(&vol, bad.other()),
            CopyState::Invalid { .. }
        ));
        assert_eq!(vol.unlock(KEYS[0], None).unwrap().volume_key, vk);
    }
}

#[test]
fn destroyed_primary_binary_header_is_found_by_scanning_and_repaired() {
    let (start, vk) = base_image();
    let mut img = start.clone();
    img[..4096].fill(0);
    let mem = Arc::new(MemDriver::new(img));
    let mut vol = open_mem(mem.clone()).unwrap();
    assert!(vol.repair().unwrap());
    let mut img = mem.snapshot();
    assert_eq!(&img[..6], b"LUKS\xba\xbe");
    damage(&mut img, HeaderCopy::Secondary);
    let vol = open_mem(Arc::new(MemDriver::new(img))).unwrap();
    assert_eq!(vol.unlock(KEYS[0], None).unwrap().volume_key, vk);
}

#[test]
fn both_copies_damaged_is_an_error_not_a_panic() {
    let (mut img, _) = base_image();
    damage(&mut img, HeaderCopy::Primary);
    damage(&mut img, HeaderCopy::Secondary);
    let err = open_mem(Arc::new(MemDriver::new(img))).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

fn assert_kind<T>(r: Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded, expected {kind:?}"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
    }
}

#[test]
fn refusals_write_nothing() {
    let (base, vk) = base_image();
    let start = with_token(base);
    let mem = Arc::new(MemDriver::new(start.clone()));
    let mut vol = open_mem(mem.clone()).unwrap();
    let p = pbkdf2();
    assert_kind(vol.kill_slot(0, false), ErrorKind::Busy, "kill last slot");
    let last = vol.kill_slot(0, false).err().unwrap();
    assert_eq!(last.reason(), Some(Reason::LastKeySlot), "{last}");
    assert_kind(
        vol.kill_slot(5, true),
        ErrorKind::NotFound,
        "kill free slot",
    );
    assert_kind(vol.kill_slot(32, true), ErrorKind::Usage, "kill slot 32");
    assert_kind(vol.remove_key(b"nope", true), ErrorKind::WrongKey, "remove");
    assert_kind(
        vol.change_key(b"nope", b"x", None, &p),
        ErrorKind::WrongKey,
        "change with a wrong key",
    );
    assert_kind(
        vol.change_key(KEYS[0], b"x", Some(1), &p),
        ErrorKind::WrongKey,
        "change in a free slot",
    );
    assert_kind(
        vol.add_key(&vk, b"x", Some(0), &p),
        ErrorKind::Busy,
        "add in use",
    );
    assert_kind(
        vol.add_key(&vk, b"x", Some(32), &p),
        ErrorKind::Usage,
        "add slot 32",
    );
    let wrong = SecretBytes::zeroed(64);
    assert_kind(
        vol.add_key(&wrong, b"x", None, &p),
        ErrorKind::WrongKey,
        "add with a wrong volume key",
    );
    let bad_kdf = KeyslotParams {
        iterations: Some(10),
        ..p
    };
    assert_kind(
        vol.add_key(&vk, b"x", None, &bad_kdf),
        ErrorKind::Usage,
        "too few iterations",
    );
    assert_kind(
        vol.set_priority(7, Priority::Prefer),
        ErrorKind::NotFound,
        "priority of a free slot",
    );
    assert_kind(
        vol.token_import(None, "{not json"),
        ErrorKind::Usage,
        "bad token JSON",
    );
    assert_kind(
        vol.token_import(None, r#"{"type":"luks2-keyring","keyslots":[]}"#),
        ErrorKind::Usage,
        "builtin token type",
    );
    assert_kind(
        vol.token_import(None, r#"{"type":"t","keyslots":["9"]}"#),
        ErrorKind::NotFound,
        "token for a free slot",
    );
    assert_kind(
        vol.token_import(Some(3), r#"{"type":"t","keyslots":[]}"#),
        ErrorKind::Busy,
        "token id in use",
    );
    assert_kind(
        vol.token_remove(4),
        ErrorKind::NotFound,
        "remove free token",
    );
    assert!(!vol.repair().unwrap(), "nothing to repair");
    assert!(
        mem.snapshot() == start,
        "a refused operation changed the image"
    );
}

/// `image` with an unknown mandatory requirement (as a newer cryptsetup might set).
fn with_requirement(image: Vec<u8>) -> Vec<u8> {
    let mem = Arc::new(MemDriver::new(image));
    let mut vol = open_mem(mem.clone()).unwrap();
    let mut next = vol.header().clone();
    let mut v = next.metadata.to_value();
    v["config"]["requirements"] = serde_json::json!({ "mandatory": ["vmcrypt-test-future"] });
    next.metadata = Metadata::from_value(v).unwrap();
    vol.write_header(next).unwrap();
    mem.snapshot()
}

#[test]
fn unknown_requirements_and_read_only_devices_refuse_every_change() {
    let (base, vk) = base_image();
    let with_req = with_requirement(with_token(with_keys(base.clone(), &vk, &[1])));
    let plain = with_token(with_keys(base, &vk, &[1]));
    for (img, read_only) in [(with_req, false), (plain, true)] {
        let mem = Arc::new(if read_only {
            MemDriver::read_only(img.clone())
        } else {
            MemDriver::new(img.clone())
        });
        let mut vol = open_mem(mem.clone()).unwrap();
        // Reading still works.
        assert_eq!(vol.unlock(KEYS[1], None).unwrap().volume_key, vk);
        let p = pbkdf2();
        let ro = ErrorKind::ReadOnly;
        assert_kind(vol.add_key(&vk, KEYS[2], None, &p), ro, "add");
        assert_kind(vol.kill_slot(1, false), ro, "kill");
        assert_kind(vol.remove_key(KEYS[1], false), ro, "remove");
        assert_kind(vol.change_key(KEYS[1], KEYS[2], None, &p), ro, "change");
        assert_kind(vol.set_priority(1, Priority::Prefer), ro, "priority");
        assert_kind(
            vol.token_import(None, r#"{"type":"t","keyslots":[]}"#),
            ro,
            "token import",
        );
        assert_kind(vol.token_remove(3), ro, "token remove");
        let next = vol.header().clone();
        assert_kind(vol.write_header(next), ro, "write_header");
        assert!(
            mem.snapshot() == img,
            "read-only={read_only}: image changed"
        );
    }
}

#[test]
fn repair_is_crash_safe() {
    let (start, vk) = base_image();
    let only = keys([true, false, false]);
    for bad in [HeaderCopy::Primary, HeaderCopy::Secondary] {
        let mut img = start.clone();
        damage(&mut img, bad);
        let writes = interrupt_everywhere(&img, &vk, std::slice::from_ref(&only), &|vol| {
            assert!(vol.repair()?, "a damaged copy needs repair");
            Ok(())
        });
        assert!(writes >= 1, "repair of {bad:?} wrote nothing");
    }
}

#[test]
fn changes_to_a_header_with_one_damaged_copy_are_crash_safe() {
    // The damaged copy must be rewritten first: tearing the write of the only good copy
    // would otherwise leave no valid header at all.
    let (start, vk) = base_image();
    let old = keys([true, false, false]);
    let new = keys([true, true, false]);
    for bad in [HeaderCopy::Primary, HeaderCopy::Secondary] {
        let mut img = start.clone();
        damage(&mut img, bad);
        interrupt_everywhere(&img, &vk, &[old.clone(), new.clone()], &|vol| {
            vol.add_key(&vk, KEYS[1], None, &pbkdf2()).map(|_| ())
        });
        let mut outdated = start.clone();
        // An outdated (valid, lower seqid) copy: the other copy after one more write.
        let mem = Arc::new(MemDriver::new(start.clone()));
        let mut vol = open_mem(mem.clone()).unwrap();
        let next = vol.header().clone();
        vol.write_header(next).unwrap();
        let newer = mem.snapshot();
        let (a, b) = match bad {
            HeaderCopy::Primary => (0, HDR as usize),
            HeaderCopy::Secondary => (HDR as usize, 2 * HDR as usize),
        };
        outdated[..2 * HDR as usize].copy_from_slice(&newer[..2 * HDR as usize]);
        outdated[a..b].copy_from_slice(&start[a..b]);
        let vol = open_mem(Arc::new(MemDriver::new(outdated.clone()))).unwrap();
        assert!(matches!(copy_state(&vol, bad), CopyState::Outdated { .. }));
        interrupt_everywhere(&outdated, &vk, &[old.clone(), new.clone()], &|vol| {
            vol.add_key(&vk, KEYS[1], None, &pbkdf2()).map(|_| ())
        });
    }
}

/// A node whose writes numbered in `fail` (0-based) are torn (first sector only) and
/// fail; all other writes go through: transient errors on a device that stays in use.
struct FlakyDriver {
    inner: Arc<MemDriver>,
    fail: Vec<usize>,
    writes: AtomicUsize,
}

impl BlockDriver for FlakyDriver {
    fn driver_name(&self) -> &'static str {
        "flaky"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail.contains(&n) {
            self.inner.write_at(&buf[..buf.len().min(512)], offset)?;
            bail!(Io, "injected transient fault on write #{}", n + 1);
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

#[test]
fn retrying_on_the_same_volume_after_a_failed_header_write_keeps_a_valid_copy() {
    // The first change writes one copy and tears the other (or tears the first); the
    // next change on the same open volume must start with the torn copy, so tearing its
    // first write too still leaves a valid header.
    let (base, vk) = base_image();
    let start = with_keys(base, &vk, &[1]);
    let orig = keys([true, true, false]);
    let ignored = keys([true, false, false]);
    let token = token_state([true, true, false], &[3]);
    for first_fail in [1, 0] {
        let mem = Arc::new(MemDriver::new(start.clone()));
        let dev = Arc::new(FlakyDriver {
            inner: mem.clone(),
            fail: vec![first_fail, first_fail + 1],
            writes: AtomicUsize::new(0),
        });
        let mut vol = Luks2Volume::open(dev, false, &KdfLimits::default()).unwrap();
        assert_kind(
            vol.set_priority(1, Priority::Ignore),
            ErrorKind::Io,
            "first",
        );
        let after_first = state(mem.snapshot(), &vk);
        assert_eq!(
            after_first,
            if first_fail == 1 { &ignored } else { &orig }.clone()
        );
        assert!(vol.needs_repair(), "a torn copy must be reported");
        assert_kind(vol.token_import(Some(3), TOKEN), ErrorKind::Io, "second");
        let s = state(mem.snapshot(), &vk);
        assert!([&orig, &ignored, &token].contains(&&s), "{s:?}");
        // The object still knows a copy is damaged: repair and further changes work.
        // (It rewrites the header this object holds: the one before the failed changes.)
        assert!(vol.repair().unwrap());
        assert_eq!(state(mem.snapshot(), &vk), orig);
        vol.set_priority(1, Priority::Normal).unwrap();
        let vol = open_mem(mem.clone()).unwrap();
        assert!(!vol.needs_repair(), "{:?}", vol.copy_states());
        assert_eq!(state(mem.snapshot(), &vk).keys, [true, true, false]);
    }
}

/// Run cryptsetup on `img`; (success, stdout + stderr).
fn cryptsetup(args: &[&str], img: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("cryptsetup")
        .args(args)
        .arg(img)
        .output()
        .expect("cryptsetup must be installed (cryptsetup-bin)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn cryptsetup_accepts_the_headers_these_operations_write() {
    // Every write path once (add, change, kill, priority, token, repair of a damaged
    // copy), then the real tool must read the result as a clean LUKS2 header.
    let (base, vk) = base_image();
    let mem = Arc::new(MemDriver::new(base));
    let mut vol = open_mem(mem.clone()).unwrap();
    vol.add_key(&vk, KEYS[1], None, &argon2id()).unwrap();
    vol.add_key(&vk, b"temporary", Some(5), &pbkdf2()).unwrap();
    vol.change_key(KEYS[1], KEYS[2], None, &pbkdf2()).unwrap();
    vol.kill_slot(5, false).unwrap();
    vol.set_priority(0, Priority::Ignore).unwrap();
    vol.token_import(Some(3), TOKEN).unwrap();
    let mut img = mem.snapshot();
    damage(&mut img, HeaderCopy::Secondary);
    let mem = Arc::new(MemDriver::new(img));
    assert!(open_mem(mem.clone()).unwrap().repair().unwrap());
    let img = mem.snapshot();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, &img).unwrap();
    let keyfile = |k: &[u8]| {
        let p = dir.path().join(format!("key{}", k.len()));
        std::fs::write(&p, k).unwrap();
        p
    };
    let (ok, dump) = cryptsetup(&["luksDump"], &path);
    assert!(ok, "{dump}");
    let has = |line: &str| dump.lines().any(|l| l.trim_end() == line);
    assert!(has("Version:       \t2"), "{dump}");
    assert!(has("  0: luks2") && has("  1: luks2"), "{dump}");
    assert!(!has("  5: luks2"), "killed slot still listed: {dump}");
    assert!(dump.contains("Priority:   ignored"), "{dump}");
    for (key, slot, opens) in [
        (KEYS[2], None, true),
        (KEYS[1], None, false),
        (b"temporary".as_slice(), None, false),
        // Slot 0 has priority ignore: only tried when named.
        (KEYS[0], None, false),
        (KEYS[0], Some("0"), true),
    ] {
        let k = keyfile(key);
        let mut args = vec![
            "open",
            "--test-passphrase",
            "--key-file",
            k.to_str().unwrap(),
        ];
        if let Some(s) = slot {
            args.extend(["--key-slot", s]);
        }
        let (ok, out) = cryptsetup(&args, &path);
        assert_eq!(ok, opens, "cryptsetup {args:?} with {key:?}: {out}");
    }
    let (ok, tok) = cryptsetup(&["token", "export", "--token-id", "3"], &path);
    assert!(ok, "{tok}");
    let got: serde_json::Value = serde_json::from_str(tok.trim()).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(TOKEN).unwrap()
    );
    // cryptsetup rewrites a header it finds damaged or outdated: it must not have.
    assert!(
        std::fs::read(&path).unwrap() == img,
        "cryptsetup repaired our header"
    );
}
