//! The key-management jobs without the CLI: the same calls on a LUKS1 and a LUKS2 image
//! add, test, change, kill and remove key slots; LUKS2-only jobs refuse LUKS1 with its
//! message; the last slot is only removed when allowed.
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::{CreateParams, KdfKind, KeyslotParams, LAST_SLOT, Volume};
use vmcrypt_block::jobs::luks::header::{DumpReport, dump, uuid};
use vmcrypt_block::jobs::luks::slots::{
    NewKeyslot, add_key, change_key, kill_slot, remove_key, test_key,
};
use vmcrypt_block::jobs::luks::{KeySource, Target, luks2};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::{ErrorKind, Result};

/// Hands out fixed passphrases.
struct Keys {
    existing: &'static [u8],
    new: &'static [u8],
}

impl KeySource for Keys {
    fn existing(&mut self) -> Result<SecretBytes> {
        Ok(SecretBytes::new(self.existing.to_vec()))
    }
    fn new_passphrase(&mut self) -> Result<SecretBytes> {
        Ok(SecretBytes::new(self.new.to_vec()))
    }
}

fn keys(existing: &'static [u8], new: &'static [u8]) -> Keys {
    Keys { existing, new }
}

/// Fast PBKDF2 for every new slot.
fn fast() -> NewKeyslot {
    NewKeyslot {
        kdf: Some("pbkdf2".into()),
        iterations: Some(1000),
        ..NewKeyslot::default()
    }
}

/// A LUKS image of `version` (1 or 2) in `dir` with passphrase "a" in slot 0.
fn image(dir: &tempfile::TempDir, version: u16) -> Target {
    let path = dir.path().join(format!("v{version}.img"));
    let spec = CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap();
    let mut p = match version {
        1 => CreateParams::luks1(spec),
        _ => CreateParams::luks2(spec),
    };
    p.keyslot = KeyslotParams {
        kdf: KdfKind::Pbkdf2,
        hash: HashAlg::Sha256,
        iterations: Some(1000),
        ..KeyslotParams::default()
    };
    p.sector_size = 512;
    p.data_offset = Some(2 << 20);
    let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::create(&path, 3 << 20).unwrap());
    Volume::create(file, &p, b"a").unwrap();
    Target {
        device: path.display().to_string(),
        header: None,
        limits: KdfLimits::default(),
    }
}

#[test]
fn key_slot_jobs_are_version_blind() {
    let dir = tempfile::tempdir().unwrap();
    for version in [1, 2] {
        let t = image(&dir, version);
        let added = add_key(&t, Some(3), &fast(), &mut keys(b"a", b"b")).unwrap();
        assert_eq!(added, 3, "LUKS{version}");
        assert_eq!(test_key(&t, None, &mut keys(b"b", b"")).unwrap(), 3);
        let e = test_key(&t, None, &mut keys(b"nope", b"")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey);
        let c = change_key(&t, Some(3), &fast(), &mut keys(b"b", b"c")).unwrap();
        assert_eq!(c.from, 3);
        let now = c.to.unwrap_or(c.from);
        assert_eq!(test_key(&t, None, &mut keys(b"c", b"")).unwrap(), now);
        kill_slot(&t, now, true, false, &mut keys(b"a", b"")).unwrap();
        let last = remove_key(&t, false, &mut keys(b"a", b"")).unwrap_err();
        assert_eq!(last.kind(), ErrorKind::Busy);
        assert_eq!(last.message(), LAST_SLOT);
        if version == 1 {
            // (LUKS2 refuses a header without keyslots: its digest would go too.)
            assert_eq!(remove_key(&t, true, &mut keys(b"a", b"")).unwrap().slot, 0);
        }
    }
}

#[test]
fn header_jobs_and_luks2_only_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = image(&dir, 1);
    let v2 = image(&dir, 2);
    let u = "0d0c0f2e-1111-4222-8333-944455556666";
    for t in [&v1, &v2] {
        assert_eq!(uuid(t, Some(u)).unwrap(), None);
        assert_eq!(uuid(t, None).unwrap().as_deref(), Some(u));
        let d = dump(t, false, true, None, &mut keys(b"a", b"")).unwrap();
        assert!(matches!(d, DumpReport::Text(s) if s.contains(u)));
    }
    let e = luks2::repair(&v1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(
        e.message(),
        format!("{} is LUKS1; this command needs LUKS2", v1.device)
    );
    assert!(!luks2::repair(&v2).unwrap());
}
