//! Clones with their own keys (Ceph Reef's layered encryption, done by vmcrypt on the
//! Pacific test cluster): golden image -> clone A (own key) -> clone B of A (own key).
//! Each reads its own data and what it inherits (decrypted with each ancestor's key),
//! writes re-encrypt inherited objects under the clone's key without touching the
//! parent, no two share a volume key, one's passphrase does not open another, the clone
//! header carries Reef's `RBDL` magic, and after `flatten` under the clone's key the
//! image is plain librbd encryption that librbd itself (python3-rbd) opens and reads.
#[path = "support/ceph.rs"]
mod ceph;

use ceph::{TestImage, librbd, rbd_cli};
use std::sync::Arc;
use vmcrypt_block::driver::BlockDriver;
use vmcrypt_block::drivers::luks::Version;
use vmcrypt_block::drivers::rbd::crypt::RbdCryptDriver;
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::jobs::luks::slots::NewKeyslot;
use vmcrypt_block::jobs::rbd::{
    CloneRequest, EncryptionFormatRequest, clone, encryption_format, image_spec,
};
use vmcrypt_block::secrets::SecretStore;
use vmcrypt_block::spec::{NodeSpec, RbdSpec};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::ErrorKind;

const MIB: usize = 1 << 20;

fn cheap() -> NewKeyslot {
    NewKeyslot {
        iter_time_ms: Some(10),
        memory_kib: Some(32768),
        ..Default::default()
    }
}

fn secrets() -> SecretStore {
    let mut s = SecretStore::new();
    for (id, p) in [("g", "gold pass"), ("a", "pass of A"), ("b", "pass of B")] {
        s.insert(id, SecretBytes::from_slice(p.as_bytes())).unwrap();
    }
    s
}

fn spec(opts: &str) -> RbdSpec {
    let m = vmcrypt_block::opts::parse_keyval(opts, None).unwrap();
    match NodeSpec::from_options(&m).unwrap() {
        NodeSpec::Rbd(r) => r,
        other => panic!("not an rbd spec: {other:?}"),
    }
}

fn ctx(s: &SecretStore, read_only: bool) -> OpenContext<'_> {
    OpenContext {
        secrets: s,
        read_only,
        metadata_only: false,
        limits: KdfLimits::default(),
        writable_backing: false,
        force_share: false,
    }
}

fn open(opts: &str, s: &SecretStore) -> Arc<RbdCryptDriver> {
    graph::open_rbd_encrypted(&spec(opts), &ctx(s, false)).unwrap()
}

fn all(d: &dyn BlockDriver) -> Vec<u8> {
    let mut v = vec![0u8; d.size() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed) ^ 0x5a)
        .collect()
}

fn volume_key(d: &RbdCryptDriver, pass: &str) -> Vec<u8> {
    let u = d.luks().header().unlock(pass.as_bytes(), None).unwrap();
    u.volume_key.as_bytes().to_vec()
}

fn write(d: &dyn BlockDriver, want: &mut [u8], off: usize, data: &[u8]) {
    d.write_at(data, off as u64).unwrap();
    want[off..off + data.len()].copy_from_slice(data);
}

#[test]
fn three_generations_each_with_its_own_key() {
    let conf = ceph::ceph_conf();
    let (gold, a, b) = (
        TestImage::new("gold"),
        TestImage::new("cloneA"),
        TestImage::new("cloneB"),
    );
    // Dropped in reverse order: B, then A, then gold (clones before their parents).
    let s = secrets();
    let pass = |id: &str| s.get(id).unwrap().as_bytes().to_vec();

    // Golden image: LUKS1, data everywhere.
    assert!(
        rbd_cli(&["create", "--size", "40M", &gold.path()])
            .status
            .success()
    );
    let req = EncryptionFormatRequest {
        image: image_spec(&gold.path(), Some(conf), None).unwrap(),
        version: Version::V1,
        aes_bits: 256,
        keyslot: cheap(),
    };
    encryption_format(&req, &pass("g")).unwrap();
    let gopts = gold.opts("encrypt.format=luks,encrypt.key-secret=g");
    let g = open(&gopts, &s);
    let gdata = pattern(g.size() as usize, 1);
    g.write_at(&gdata, 0).unwrap();
    g.flush().unwrap();
    drop(g);

    // Clone A of gold@s1 with its own key (LUKS2).
    let clone_req = |parent: &TestImage, child: &TestImage, v| CloneRequest {
        parent: image_spec(&format!("{}@s1", parent.path()), Some(conf), None).unwrap(),
        child: image_spec(&child.path(), Some(conf), None).unwrap(),
        version: v,
        aes_bits: 256,
        keyslot: cheap(),
    };
    clone(&clone_req(&gold, &a, Version::V2), &pass("a")).unwrap();
    let aopts = a.opts(
        "encrypt.format=luks2,encrypt.key-secret=a,\
         encrypt.parent.format=luks,encrypt.parent.key-secret=g",
    );
    let ad = open(&aopts, &s);
    assert_eq!(
        ad.size() as usize,
        24 * MIB,
        "A: 40 MiB minus its 16 MiB LUKS2 header"
    );
    let mut want_a = gdata[..24 * MIB].to_vec();
    assert!(all(ad.as_ref()) == want_a, "A reads the golden data");
    write(ad.as_ref(), &mut want_a, 5 * MIB + 3, &pattern(100, 2));
    write(ad.as_ref(), &mut want_a, 9 * MIB, &pattern(64 << 10, 3));
    ad.write_zeroes((13 * MIB) as u64, (4 * MIB) as u64)
        .unwrap();
    want_a[13 * MIB..17 * MIB].fill(0);
    ad.flush().unwrap();
    drop(ad);
    let ad = open(&aopts, &s);
    assert!(
        all(ad.as_ref()) == want_a,
        "A reads its own and inherited data"
    );
    let g = open(&gopts, &s);
    assert!(all(g.as_ref()) == gdata, "the golden image is untouched");

    // Clone B of A@s1 with its own key (LUKS1).
    clone(&clone_req(&a, &b, Version::V1), &pass("b")).unwrap();
    let bopts = b.opts(
        "encrypt.format=luks,encrypt.key-secret=b,\
         encrypt.parent.format=luks2,encrypt.parent.key-secret=a,\
         encrypt.parent.parent.format=luks,encrypt.parent.parent.key-secret=g",
    );
    let bd = open(&bopts, &s);
    assert_eq!(bd.size() as usize, 36 * MIB);
    let mut want_b = want_a.clone();
    want_b.resize(36 * MIB, 0);
    assert!(all(bd.as_ref()) == want_b, "B reads A's and gold's data");
    write(bd.as_ref(), &mut want_b, 5 * MIB, &pattern(4096, 4));
    write(bd.as_ref(), &mut want_b, 30 * MIB + 512, &pattern(1000, 5));
    bd.flush().unwrap();
    drop(bd);
    let bd = open(&bopts, &s);
    let got = all(bd.as_ref());
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want_b[i]).collect();
    assert!(
        diff.is_empty(),
        "B reads its own and inherited data: {} bytes differ, first {:?} last {:?}",
        diff.len(),
        diff.first(),
        diff.last()
    );
    let ad = open(&aopts, &s);
    assert!(all(ad.as_ref()) == want_a, "A is untouched by B's writes");

    // Own keys: three different volume keys; one passphrase opens only its own image.
    let keys = [
        volume_key(&g, "gold pass"),
        volume_key(&ad, "pass of A"),
        volume_key(&bd, "pass of B"),
    ];
    assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    let wrong = b.opts(
        "encrypt.format=luks,encrypt.key-secret=a,\
         encrypt.parent.format=luks2,encrypt.parent.key-secret=a,\
         encrypt.parent.parent.format=luks,encrypt.parent.parent.key-secret=g",
    );
    let e = graph::open_rbd_encrypted(&spec(&wrong), &ctx(&s, true))
        .err()
        .expect("A's passphrase must not open B");
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
    // Without the parent's encryption a clone with its own key is refused by name.
    let e = graph::open_rbd_encrypted(
        &spec(&b.opts("encrypt.format=luks,encrypt.key-secret=b")),
        &ctx(&s, true),
    )
    .err()
    .expect("a clone needs its parent's key");
    assert!(e.to_string().contains("encrypt.parent"), "{e}");
    // Reef's clone magic on disk.
    let raw = librbd(&["read", &b.name, "none", "-", "0", "16"]);
    assert_eq!(&raw[..6], b"RBDL\xba\xbe");
    drop((g, ad, bd));

    // Flatten B under its own key: then plain librbd encryption, which librbd loads.
    vmcrypt_block::jobs::rbd::flatten(
        &spec(&bopts),
        &vmcrypt_block::jobs::Env::new(
            vec![
                "secret,id=g,data=gold pass".into(),
                "secret,id=a,data=pass of A".into(),
                "secret,id=b,data=pass of B".into(),
            ],
            KdfLimits::default(),
        ),
    )
    .unwrap();
    let info = rbd_cli(&["info", &b.path()]);
    assert!(
        !String::from_utf8_lossy(&info.stdout).contains("parent:"),
        "B is flattened"
    );
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "pass of B").unwrap();
    let lib = librbd(&[
        "read",
        &b.name,
        "luks1",
        pw.path().to_str().unwrap(),
        "0",
        "-1",
    ]);
    assert!(
        lib == want_b,
        "librbd reads the flattened clone with the clone's key"
    );
    let bd = open(&b.opts("encrypt.format=luks,encrypt.key-secret=b"), &s);
    assert!(
        all(bd.as_ref()) == want_b,
        "vmcrypt reads it without parent keys"
    );
}
