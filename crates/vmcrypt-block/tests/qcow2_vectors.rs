//! qcow2 / qcow reading: the QEMU-made vectors 7, 8, 10 and 11 of shared/vectors/qemu
//! decrypt to the sha256 values in its README.txt (opened through the graph with QEMU's
//! option syntax), and images made live by qemu-img / qemu-io (backing file, zero
//! clusters, compressed clusters, extended L2) read back like `qemu-img convert -O raw`.
mod common;
use common::run;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::driver::Allocation;
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::opts::parse_keyval;
use vmcrypt_block::secrets::SecretStore;
use vmcrypt_block::spec::{NodeSpec, filename_options};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{ErrorKind, Result};

const BASE_SHA: &str = "fbdb74aa286af424e2c9a4349c69060a68bda924335d063d1c24580a3118943b";
const OVERLAY_SHA: &str = "d68fee1c12270630a07c773fcd8f617e04d15fd751f19fa6b6ab63dcd47f4997";
const AES_SHA: &str = "561e0deb209137ab84c8efbb4bbdbdfb287440919c5f48fddef716e2e94bb8f0";
const QCOW1_SHA: &str = "1056f30f4dd3b8444a8b3599091ec4745a34438fedf92d86701fb0d7006c87cb";

fn qemu(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/qemu");
    assert!(p.is_dir(), "test vectors not found at {}", p.display());
    p.join(name).to_string_lossy().into_owned()
}

fn secrets(pairs: &[(&str, &[u8])]) -> SecretStore {
    let mut s = SecretStore::new();
    for (id, v) in pairs {
        s.insert(id, SecretBytes::from_slice(v)).unwrap();
    }
    s
}

fn open_spec(
    spec: &Map<String, Value>,
    s: &SecretStore,
    meta: bool,
) -> Result<Arc<dyn BlockDriver>> {
    let ctx = OpenContext {
        secrets: s,
        read_only: true,
        metadata_only: meta,
        limits: KdfLimits::default(),
        writable_backing: false,
        force_share: false,
    };
    graph::open(&NodeSpec::from_options(spec)?, &ctx)
}

fn open_opts(opts: &str, s: &SecretStore) -> Result<Arc<dyn BlockDriver>> {
    open_spec(&parse_keyval(opts, None).unwrap(), s, false)
}

fn read_all(d: &dyn BlockDriver) -> Vec<u8> {
    let mut buf = vec![0u8; d.size() as usize];
    // Odd-sized pieces so unaligned reads across cluster boundaries are exercised.
    let mut off = 0;
    while off < buf.len() {
        let n = 100_003.min(buf.len() - off);
        d.read_at(&mut buf[off..off + n], off as u64).unwrap();
        off += n;
    }
    buf
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn vector7_base_decrypts() {
    let s = secrets(&[("sb", b"base-pass")]);
    let d = open_opts(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=sb",
            qemu("qcow2-luks-base.qcow2")
        ),
        &s,
    )
    .unwrap();
    assert_eq!(d.size(), 2 << 20);
    assert_eq!(sha(&read_all(d.as_ref())), BASE_SHA);
    // Guest clusters 4..7 are unallocated (METADATA.txt) and there is no backing file.
    let e = d.block_status(0x40000, 0x100000).unwrap();
    assert_eq!(
        (e.offset, e.length, e.allocation),
        (0x40000, 0x40000, Allocation::Zero)
    );
    let e = d.block_status(0, 0x200000).unwrap();
    assert_eq!((e.length, e.allocation), (0x40000, Allocation::Data));
    assert!(d.as_introspect().unwrap().is_encrypted());
    // Opened read-only: writes are refused and say why.
    let err = d.write_at(&[0; 512], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
    assert!(err.message().contains("opened read-only"), "{err}");
}

#[test]
fn vector7_probed_and_wrong_key() {
    let s = secrets(&[("sb", b"base-passX")]);
    let err = open_opts(
        &format!(
            "file.filename={},encrypt.key-secret=sb",
            qemu("qcow2-luks-base.qcow2")
        ),
        &s,
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    let err = open_opts(
        &format!(
            "driver=qcow2,file.filename={}",
            qemu("qcow2-luks-base.qcow2")
        ),
        &s,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("encrypt.key-secret"), "{err}");
    let err = open_opts(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=sb,encrypt.format=aes",
            qemu("qcow2-luks-base.qcow2")
        ),
        &s,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("encryption format is luks"),
        "{err}"
    );
}

/// The format-specific block equals qemu-img's (INFO.txt, `--output=json`).
#[test]
fn vector7_format_specific_matches_qemu_img() {
    let info = std::fs::read_to_string(qemu("INFO.txt")).unwrap();
    let start = info
        .find("=== $ qemu-img info --output=json qcow2-luks-base.qcow2")
        .unwrap();
    let json_start = start + info[start..].find('{').unwrap();
    let json_end = json_start + info[json_start..].find("\n}\n").unwrap() + 2;
    let want: Value = serde_json::from_str(&info[json_start..json_end]).unwrap();
    let s = SecretStore::new();
    let spec = parse_keyval(
        &format!(
            "driver=qcow2,file.filename={}",
            qemu("qcow2-luks-base.qcow2")
        ),
        None,
    )
    .unwrap();
    let d = open_spec(&spec, &s, true).unwrap();
    assert_eq!(
        serde_json::to_string(&d.as_introspect().unwrap().format_specific().unwrap()).unwrap(),
        serde_json::to_string(&want["format-specific"]["data"]).unwrap()
    );
}

#[test]
fn vector8_overlay_over_base_with_two_keys() {
    let s = secrets(&[("so", b"overlay-pass"), ("sb", b"base-pass")]);
    let d = open_opts(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=so,backing.encrypt.key-secret=sb",
            qemu("qcow2-luks-overlay.qcow2")
        ),
        &s,
    )
    .unwrap();
    assert_eq!(sha(&read_all(d.as_ref())), OVERLAY_SHA);
    // Cluster 24 is a zero cluster over base data; cluster 0 comes from the base.
    let e = d.block_status(0x180000, 0x10000).unwrap();
    assert_eq!(e.allocation, Allocation::Zero);
    assert_eq!(
        d.block_status(0, 0x10000).unwrap().allocation,
        Allocation::Data
    );
    // Clusters 5..7 are unallocated in both layers.
    let e = d.block_status(0x50000, 0x30000).unwrap();
    assert_eq!((e.length, e.allocation), (0x30000, Allocation::Zero));
}

#[test]
fn vector8_json_form() {
    let s = secrets(&[("so", b"overlay-pass"), ("sb", b"base-pass")]);
    let json = format!(
        r#"{{"driver":"qcow2","file":{{"driver":"file","filename":"{}"}},"encrypt":{{"key-secret":"so"}},
           "backing":{{"driver":"qcow2","file":{{"driver":"file","filename":"{}"}},"encrypt":{{"key-secret":"sb"}}}}}}"#,
        qemu("qcow2-luks-overlay.qcow2"),
        qemu("qcow2-luks-base.qcow2")
    );
    let spec = filename_options(&format!("json:{json}"), None).unwrap();
    let d = open_spec(&spec, &s, false).unwrap();
    assert_eq!(sha(&read_all(d.as_ref())), OVERLAY_SHA);
}

#[test]
fn vector8_missing_backing_key_names_layer_and_option() {
    let s = secrets(&[("so", b"overlay-pass")]);
    let err = open_opts(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=so",
            qemu("qcow2-luks-overlay.qcow2")
        ),
        &s,
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("qcow2-luks-base.qcow2' is encrypted"), "{msg}");
    assert!(msg.contains("backing.encrypt.key-secret"), "{msg}");
    // `backing: null` opens the overlay alone: backing clusters read as zeros.
    let mut spec = parse_keyval(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=so",
            qemu("qcow2-luks-overlay.qcow2")
        ),
        None,
    )
    .unwrap();
    spec.insert("backing".into(), Value::Null);
    let d = open_spec(&spec, &s, false).unwrap();
    let mut c0 = vec![1u8; 65536];
    d.read_at(&mut c0, 0).unwrap();
    assert!(c0.iter().all(|&b| b == 0));
    let mut c1 = vec![0u8; 65536];
    d.read_at(&mut c1, 65536).unwrap();
    assert!(
        c1.iter().all(|&b| b == 0x11),
        "cluster 1 was written with 0x11"
    );
}

#[test]
fn vector10_legacy_aes_long_and_prefix_passphrase() {
    for pass in [&b"0123456789abcdefTRUNCATED"[..], b"0123456789abcdef"] {
        let s = secrets(&[("s", pass)]);
        let d = open_opts(
            &format!(
                "driver=qcow2,file.filename={},encrypt.key-secret=s",
                qemu("qcow2-legacy-aes.qcow2")
            ),
            &s,
        )
        .unwrap();
        assert_eq!(sha(&read_all(d.as_ref())), AES_SHA);
        let fs = d.as_introspect().unwrap().format_specific().unwrap();
        assert_eq!(fs["encrypt"]["format"], "aes");
        assert_eq!(fs["encrypt"]["insecure"], true);
    }
    // A wrong legacy key cannot be detected; it just decrypts to different bytes.
    let s = secrets(&[("s", b"0123456789abcdeX")]);
    let d = open_opts(
        &format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s",
            qemu("qcow2-legacy-aes.qcow2")
        ),
        &s,
    )
    .unwrap();
    assert_ne!(sha(&read_all(d.as_ref())), AES_SHA);
}

#[test]
fn vector11_qcow_v1_legacy_aes() {
    let s = secrets(&[("s", b"qcow1-pass")]);
    let d = open_opts(
        &format!(
            "driver=qcow,file.filename={},encrypt.key-secret=s",
            qemu("qcow1-legacy-aes.qcow")
        ),
        &s,
    )
    .unwrap();
    assert_eq!(d.driver_name(), "qcow");
    assert_eq!(sha(&read_all(d.as_ref())), QCOW1_SHA);
    // Probing finds "qcow".
    let d = open_opts(
        &format!(
            "file.filename={},encrypt.key-secret=s",
            qemu("qcow1-legacy-aes.qcow")
        ),
        &s,
    )
    .unwrap();
    assert_eq!(d.driver_name(), "qcow");
}

// ---- live images made by qemu-img / qemu-io ----

/// Deterministic bytes (xorshift), so failures reproduce.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Read `img` through vmcrypt (format probed) and through `qemu-img convert -O raw`.
fn compare_with_qemu(dir: &Path, img: &Path) {
    let raw: PathBuf = dir.join("qemu-out.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let want = std::fs::read(&raw).unwrap();
    let s = SecretStore::new();
    let d = open_opts(&format!("file.filename={}", img.display()), &s).unwrap();
    assert_eq!(d.driver_name(), "qcow2");
    let got = read_all(d.as_ref());
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{}: first difference at byte {i:#x}", img.display());
    }
    // block_status never claims zeros where qemu-img reads data.
    let mut off = 0;
    while off < d.size() {
        let e = d.block_status(off, d.size() - off).unwrap();
        assert!(e.length > 0);
        if e.allocation == Allocation::Zero {
            let r = &want[off as usize..(off + e.length) as usize];
            assert!(
                r.iter().all(|&b| b == 0),
                "extent at {off:#x} reported zero"
            );
        }
        off += e.length;
    }
}

fn qemu_io_writes(img: &Path, seed: u64) {
    let mut cmds: Vec<String> = Vec::new();
    let mut x = seed;
    for i in 0..40u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // A 512-aligned offset that leaves room for the longest write inside 8 MiB.
        let off = (x >> 20) % 15_000 * 512;
        let len = ((x >> 44) % 150_000 / 512 + 1) * 512;
        if i % 5 == 4 {
            cmds.push(format!("write -z {off} {len}"));
        } else {
            cmds.push(format!("write -P {} {off} {len}", (i * 37 + 1) % 256));
        }
    }
    let mut args = vec!["-f".to_string(), "qcow2".into()];
    for c in &cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(img.to_str().unwrap().into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &a);
}

#[test]
fn live_qemu_img_overlay_zero_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, pattern(8 << 20, 7)).unwrap();
    let over = dir.path().join("over.qcow2");
    // Relative backing name: resolved against the overlay's directory.
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            over.to_str().unwrap(),
            "10M",
        ],
    );
    qemu_io_writes(&over, 1);
    compare_with_qemu(dir.path(), &over);

    // Small clusters (many L2 tables) and extended L2 with subcluster writes.
    for opts in ["cluster_size=4096", "extended_l2=on,cluster_size=65536"] {
        let img = dir.path().join("sub.qcow2");
        let _ = std::fs::remove_file(&img);
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                opts,
                "-b",
                "base.raw",
                "-F",
                "raw",
                img.to_str().unwrap(),
                "9M",
            ],
        );
        qemu_io_writes(&img, 2);
        compare_with_qemu(dir.path(), &img);
    }

    // Compressed clusters (and zero runs left unallocated).
    let mut src = pattern(4 << 20, 9);
    src[1 << 20..2 << 20].fill(0);
    for (i, b) in src.iter_mut().enumerate().skip(3 << 20) {
        *b = (i / 4096) as u8; // compressible
    }
    let src_path = dir.path().join("src.raw");
    std::fs::write(&src_path, &src).unwrap();
    let comp = dir.path().join("comp.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            src_path.to_str().unwrap(),
            comp.to_str().unwrap(),
        ],
    );
    compare_with_qemu(dir.path(), &comp);
    let s = SecretStore::new();
    let d = open_opts(&format!("file.filename={}", comp.display()), &s).unwrap();
    assert_eq!(sha(&read_all(d.as_ref())), sha(&src));
}

// ---- hostile and broken images ----

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn backing_loop_hits_the_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    for p in [&a, &b] {
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"],
        );
    }
    // a -> b -> a, written without opening the chain.
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
        ],
    );
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            b.to_str().unwrap(),
        ],
    );
    let err = open_opts(
        &format!("driver=qcow2,file.filename={}", a.display()),
        &SecretStore::new(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(err.to_string().contains("infinite loop"), "{err}");
}

#[test]
fn broken_tables_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "4M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 128k",
            img.to_str().unwrap(),
        ],
    );
    let orig = std::fs::read(&img).unwrap();
    let l1_off = be64(&orig, 40);
    let s = SecretStore::new();
    let opts = format!("driver=qcow2,file.filename={}", img.display());

    // L1 entry 0 points far beyond the end of the file.
    patch(&img, l1_off, &0x8000_0000_7fff_0000u64.to_be_bytes());
    let d = open_opts(&opts, &s).unwrap();
    let err = d.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(err.to_string().contains("L2 table"), "{err}");

    // L2 entry 0 becomes a compressed descriptor over garbage (the header cluster).
    std::fs::write(&img, &orig).unwrap();
    let l2_off = be64(&orig, l1_off as usize) & 0x00ff_ffff_ffff_fe00;
    patch(&img, l2_off, &((1u64 << 62) | 8).to_be_bytes());
    let d = open_opts(&opts, &s).unwrap();
    let err = d.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("compressed cluster"), "{err}");

    // Unaligned host offset in an L2 entry.
    std::fs::write(&img, &orig).unwrap();
    patch(&img, l2_off, &0x8000_0000_0005_0200u64.to_be_bytes());
    let d = open_opts(&opts, &s).unwrap();
    assert!(d.read_at(&mut [0u8; 512], 0).is_err());

    // An unknown incompatible feature bit refuses the open.
    std::fs::write(&img, &orig).unwrap();
    patch(&img, 72, &(1u64 << 33).to_be_bytes());
    let err = open_opts(&opts, &s).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("bit 33"), "{err}");

    // A header claiming a huge L1 table.
    std::fs::write(&img, &orig).unwrap();
    patch(&img, 36, &0x0100_0000u32.to_be_bytes());
    let err = open_opts(&opts, &s).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");

    // Truncated file: the header alone.
    std::fs::write(&img, &orig[..100]).unwrap();
    assert!(open_opts(&opts, &s).is_err());
}

#[test]
fn data_file_option_is_refused() {
    let err = open_opts(
        &format!(
            "driver=qcow2,file.filename={},data-file.filename=/dev/null",
            qemu("qcow2-luks-base.qcow2")
        ),
        &SecretStore::new(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}
