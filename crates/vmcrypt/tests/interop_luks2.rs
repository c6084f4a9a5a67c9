//! Live LUKS2 interop with the real `cryptsetup` (files only, no device-mapper):
//! images vmcrypt creates pass cryptsetup's dump, passphrase test and offline decryption;
//! images cryptsetup formats or encrypts read back in vmcrypt; key slots, priorities,
//! tokens, header backups and repairs made by either tool behave so in the other; and the
//! CLI refuses headers it must not touch (unknown requirements) and reads one in
//! reencryption through both segments.
//!
//! KDFs are kept cheap (PBKDF2 1000 iterations, Argon2 t=4 m=32 MiB p=1). A missing
//! cryptsetup fails these tests (see `common::require_tool`).
mod common;

use common::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// cryptsetup arguments for a cheap PBKDF2 key slot.
const CS_PBKDF2: &[&str] = &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
/// cryptsetup arguments for a cheap Argon2id key slot.
const CS_ARGON2ID: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-memory",
    "32768",
    "--pbkdf-parallel",
    "1",
];

/// vmcrypt `-o` options for cheap key slots of each KDF.
const VM_PBKDF2: &str = "pbkdf=pbkdf2,iterations=1000";
const VM_ARGON2I: &str = "pbkdf=argon2i,iterations=4,pbkdf-memory=32768,pbkdf-parallel=1";
const VM_ARGON2ID: &str = "pbkdf=argon2id,iterations=4,pbkdf-memory=32768,pbkdf-parallel=1";

/// vmcrypt `luks add-key/change-key` flags for cheap key slots of each KDF.
const VM_KEY_PBKDF2: &[&str] = &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
const VM_KEY_ARGON2ID: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-memory",
    "32768",
    "--pbkdf-parallel",
    "1",
];

/// A scratch dir with the three passphrases written to `pw`, `pw2`, `pw3` and a wrong
/// one to `bad`.
fn scratch() -> Scratch {
    let sc = Scratch::new();
    sc.write("pw", PASS);
    sc.write("pw2", PASS2);
    sc.write("pw3", PASS3);
    sc.write("bad", WRONG);
    sc
}

/// `vmcrypt create -f luks2 -o key-secret=s0,OPTS NAME SIZE` with passphrase file `pw`.
#[track_caller]
fn vm_create(sc: &Scratch, name: &str, size: usize, opts: &str) -> String {
    let img = sc.p(name);
    vmcrypt(&[
        "create",
        "--object",
        &sc.secret("s0", "pw"),
        "-f",
        "luks2",
        "-o",
        &format!("key-secret=s0,{opts}"),
        &img,
        &size.to_string(),
    ])
    .ok();
    img
}

/// `vmcrypt luks SUB ARGS... DEVICE` (device last, like cryptsetup).
fn vm_luks(sub: &str, args: &[&str], device: &str) -> Out {
    let mut v = vec!["luks", sub];
    v.extend_from_slice(args);
    v.push(device);
    vmcrypt(&v)
}

/// Decrypt `data` in place with cryptsetup's offline decryption (detached `hdr`).
#[track_caller]
fn cs_decrypt_in_place(sc: &Scratch, keyfile: &str, hdr: &str, data: &str) {
    let kf = sc.p(keyfile);
    cryptsetup(&[
        "reencrypt",
        "--decrypt",
        "--force-offline-reencrypt",
        "--batch-mode",
        "--key-file",
        &kf,
        "--header",
        hdr,
        data,
    ])
    .ok();
}

/// `cryptsetup luksFormat --type luks2` of `image` with key file `pw` and extra args.
#[track_caller]
fn cs_format2(sc: &Scratch, image: &str, extra: &[&str]) {
    let kf = sc.p("pw");
    let mut args = vec!["luksFormat", "--type", "luks2", "--batch-mode"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--key-file", &kf, image]);
    cryptsetup(&args).ok();
}

/// `cryptsetup luksAddKey` of passphrase file `new` into `image`, unlocking with `pw`.
#[track_caller]
fn cs_add_key(sc: &Scratch, image: &str, new: &str, extra: &[&str]) {
    let kf = sc.p("pw");
    let nf = sc.p(new);
    let mut args = vec!["luksAddKey", "--batch-mode", "--key-file", &kf];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, &nf]);
    cryptsetup(&args).ok();
}

/// `vmcrypt luks add-key` of passphrase file `new` into `device`, unlocking with `pw`.
#[track_caller]
fn vm_add_key(sc: &Scratch, device: &str, new: &str, extra: &[&str]) -> Out {
    let kf = sc.p("pw");
    let nf = sc.p(new);
    let mut args = vec!["--key-file", kf.as_str(), "--new-key-file", nf.as_str()];
    args.extend_from_slice(extra);
    vm_luks("add-key", &args, device).ok()
}

/// The slot `vmcrypt luks test-key` reports ("Key slot N unlocked.").
#[track_caller]
fn vm_unlocked_slot(out: &Out) -> u32 {
    out.stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Key slot ")
                .and_then(|r| r.strip_suffix(" unlocked."))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'Key slot N unlocked.' line\n{}", out.describe()))
}

/// The slot cryptsetup reports for `open --test-passphrase -v`.
#[track_caller]
fn cs_unlocked_slot(out: &Out) -> u32 {
    let text = format!("{}{}", out.stdout_str(), out.stderr);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Key slot ")
                .and_then(|r| r.split_whitespace().next())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'Key slot N unlocked.' line\n{}", out.describe()))
}

/// The lines of one keyslot's section in a cryptsetup LUKS2 dump ("  N: luks2" up to the
/// next section header), or None if the slot is not listed.
fn dump_section(dump: &str, section: &str, id: u32) -> Option<String> {
    let mut lines = dump.lines().skip_while(|l| !l.starts_with(section));
    lines.next()?;
    let head = format!("  {id}: ");
    let mut found = None;
    for l in lines {
        if !l.starts_with(' ') && !l.starts_with('\t') && !l.is_empty() {
            break; // next top-level section
        }
        if l.starts_with("  ") && !l.starts_with("   ") && l.contains(": ") {
            if l.starts_with(&head) {
                found = Some(String::new());
            } else if found.is_some() {
                break;
            }
        }
        if let Some(s) = found.as_mut() {
            s.push_str(l);
            s.push('\n');
        }
    }
    found
}

/// `cryptsetup luksDump` of `image` (optionally with a detached header).
#[track_caller]
fn cs_dump(image: &str) -> String {
    cryptsetup(&["luksDump", image]).ok().stdout_str()
}

/// Flip one byte of `path` at `offset`.
fn flip_byte(path: &str, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the image");
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

// ------------------------------------------------------------------------------------
// 1. vmcrypt creates, cryptsetup checks.

/// One vmcrypt-created LUKS2 layout to check with cryptsetup.
struct Case {
    /// vmcrypt -o options (besides key-secret and detached-header).
    opts: String,
    /// KDF flags for the second key slot, added with `vmcrypt luks add-key`.
    second_kdf: &'static [&'static str],
    second_slot: u32,
    /// What cryptsetup's dump must show.
    cipher: &'static str,
    key_bits: u32,
    sector: u32,
    metadata: usize,
    pbkdf: &'static str,
    label: Option<&'static str>,
    subsystem: Option<&'static str>,
}

fn vmcrypt_to_cryptsetup(c: &Case) {
    let sc = scratch();
    let size = MIB;
    let hdr = vm_create(
        &sc,
        "hdr.img",
        size,
        &format!("detached-header=on,{}", c.opts),
    );
    let data = sc.sparse("data.img", size as u64);
    let slot = c.second_slot.to_string();
    let mut add = vec!["--header", hdr.as_str(), "--key-slot", slot.as_str()];
    add.extend_from_slice(c.second_kdf);
    vm_add_key(&sc, &data, "pw2", &add);

    // cryptsetup reads the header as made.
    let dump = cs_dump(&hdr);
    assert_eq!(dump_field(&dump, "Version"), "2", "{dump}");
    assert_eq!(
        dump_field(&dump, "Metadata area"),
        format!("{} [bytes]", c.metadata),
        "{dump}"
    );
    let want_label = c.label.unwrap_or("(no label)");
    assert_eq!(dump_field(&dump, "Label"), want_label, "{dump}");
    let want_sub = c.subsystem.unwrap_or("(no subsystem)");
    assert_eq!(dump_field(&dump, "Subsystem"), want_sub, "{dump}");
    let seg = dump_section(&dump, "Data segments:", 0).expect("segment 0 in dump");
    assert_eq!(dump_field(&seg, "\toffset"), "0 [bytes]", "{dump}");
    assert_eq!(dump_field(&seg, "\tcipher"), c.cipher, "{dump}");
    assert_eq!(
        dump_field(&seg, "\tsector"),
        format!("{} [bytes]", c.sector),
        "{dump}"
    );
    let ks0 = dump_section(&dump, "Keyslots:", 0).expect("keyslot 0 in dump");
    assert_eq!(dump_field(&ks0, "\tKey"), format!("{} bits", c.key_bits));
    assert_eq!(dump_field(&ks0, "\tPBKDF"), c.pbkdf, "{dump}");
    let ks1 = dump_section(&dump, "Keyslots:", c.second_slot).expect("second keyslot in dump");
    assert_eq!(dump_field(&ks1, "\tPBKDF"), c.second_kdf[1], "{dump}");

    // Every slot opens in cryptsetup, each with its own passphrase only.
    let hdr_arg = ["--header", hdr.as_str()];
    let s1 = c.second_slot.to_string();
    for (key, slot) in [("pw", "0"), ("pw2", s1.as_str())] {
        cs_test_pass(
            &sc,
            key,
            &data,
            &[&hdr_arg[..], &["--key-slot", slot]].concat(),
        )
        .ok();
    }
    cs_test_pass(
        &sc,
        "pw",
        &data,
        &[&hdr_arg[..], &["--key-slot", &s1]].concat(),
    )
    .code_is(2);
    cs_test_pass(&sc, "bad", &data, &hdr_arg).code_is(2);

    // The data vmcrypt writes decrypts in cryptsetup to the same bytes.
    let plain = plaintext(size, &format!("vm->cs {}", c.opts));
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw2", "plain.raw", &data, Some(&hdr));
    assert_ne!(sc.read("data.img"), plain, "vmcrypt wrote plaintext");
    cs_decrypt_in_place(&sc, "pw", &hdr, &data);
    assert_same_bytes(
        "cryptsetup decrypting what vmcrypt wrote",
        &sc.read("data.img"),
        &plain,
    );
}

mod vmcrypt_creates {
    use super::*;

    #[test]
    fn pbkdf2_512_aes_xts_256_meta16k_label() {
        vmcrypt_to_cryptsetup(&Case {
            opts: format!(
                "{VM_PBKDF2},sector-size=512,cipher-alg=aes-128,metadata-size=16k,label=vm-disk-a"
            ),
            second_kdf: VM_KEY_ARGON2ID,
            second_slot: 1,
            cipher: "aes-xts-plain64",
            key_bits: 256,
            sector: 512,
            metadata: 16 * KIB,
            pbkdf: "pbkdf2",
            label: Some("vm-disk-a"),
            subsystem: None,
        });
    }

    #[test]
    fn argon2i_4096_aes_xts_512_meta64k_label_subsystem() {
        vmcrypt_to_cryptsetup(&Case {
            opts: format!(
                "{VM_ARGON2I},sector-size=4096,cipher-alg=aes-256,metadata-size=64k,label=disk-b,subsystem=vmcrypt-test"
            ),
            second_kdf: VM_KEY_PBKDF2,
            second_slot: 7,
            cipher: "aes-xts-plain64",
            key_bits: 512,
            sector: 4096,
            metadata: 64 * KIB,
            pbkdf: "argon2i",
            label: Some("disk-b"),
            subsystem: Some("vmcrypt-test"),
        });
    }

    #[test]
    fn argon2id_512_aes_cbc_essiv_meta64k() {
        vmcrypt_to_cryptsetup(&Case {
            opts: format!(
                "{VM_ARGON2ID},sector-size=512,cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,metadata-size=64k"
            ),
            second_kdf: VM_KEY_ARGON2ID,
            second_slot: 31,
            cipher: "aes-cbc-essiv:sha256",
            key_bits: 256,
            sector: 512,
            metadata: 64 * KIB,
            pbkdf: "argon2id",
            label: None,
            subsystem: None,
        });
    }

    #[test]
    fn argon2id_4096_aes_xts_512_meta16k_subsystem() {
        vmcrypt_to_cryptsetup(&Case {
            opts: format!(
                "{VM_ARGON2ID},sector-size=4096,cipher-alg=aes-256,metadata-size=16k,subsystem=sys-only"
            ),
            second_kdf: VM_KEY_PBKDF2,
            second_slot: 2,
            cipher: "aes-xts-plain64",
            key_bits: 512,
            sector: 4096,
            metadata: 16 * KIB,
            pbkdf: "argon2id",
            label: None,
            subsystem: Some("sys-only"),
        });
    }

    #[test]
    fn pbkdf2_4096_aes_cbc_essiv_128_meta16k() {
        vmcrypt_to_cryptsetup(&Case {
            opts: format!(
                "{VM_PBKDF2},sector-size=4096,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,metadata-size=16k,label=essiv4k"
            ),
            second_kdf: VM_KEY_ARGON2ID,
            second_slot: 1,
            cipher: "aes-cbc-essiv:sha256",
            key_bits: 128,
            sector: 4096,
            metadata: 16 * KIB,
            pbkdf: "pbkdf2",
            label: Some("essiv4k"),
            subsystem: None,
        });
    }

    /// An attached-header image (data at cryptsetup's 16 MiB offset) also dumps and
    /// opens in cryptsetup, and cryptsetup reports vmcrypt's data offset.
    #[test]
    fn attached_header_dumps_and_opens() {
        let sc = scratch();
        let img = vm_create(&sc, "a.img", MIB, &format!("{VM_PBKDF2},label=attached"));
        let dump = cs_dump(&img);
        assert_eq!(dump_field(&dump, "Label"), "attached");
        let seg = dump_section(&dump, "Data segments:", 0).expect("segment 0");
        let off: usize = dump_field(&seg, "\toffset")
            .trim_end_matches(" [bytes]")
            .parse()
            .unwrap();
        assert_eq!(
            std::fs::metadata(&img).unwrap().len() as usize,
            off + MIB,
            "file = data offset + virtual size"
        );
        cs_test_pass(&sc, "pw", &img, &[]).ok();
        cs_test_pass(&sc, "pw2", &img, &[]).code_is(2);
    }
}

// ------------------------------------------------------------------------------------
// 2. cryptsetup creates, vmcrypt reads.

/// cryptsetup encrypts plaintext in place (offline), vmcrypt must decrypt it.
fn cryptsetup_encrypts(kdf: &[&str], sector: &str, detached: bool) {
    let sc = scratch();
    let size = MIB;
    let plain = plaintext(size, &format!("cs-enc {kdf:?} {sector} {detached}"));
    let mut file = plain.clone();
    if !detached {
        file.resize(size + 2 * MIB, 0); // room for the data shift
    }
    let img = sc.write("img", &file);
    let hdr = sc.p("hdr");
    let kf = sc.p("pw");
    let mut args = vec![
        "reencrypt",
        "--encrypt",
        "--batch-mode",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--sector-size",
        sector,
        "--luks2-metadata-size",
        "16k",
        "--key-file",
        &kf,
    ];
    args.extend_from_slice(kdf);
    if detached {
        args.extend_from_slice(&["--header", &hdr]);
    } else {
        args.extend_from_slice(&["--reduce-device-size", "2M"]);
    }
    args.push(&img);
    cryptsetup(&args).ok();
    let header = detached.then_some(hdr.as_str());
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &img, header, "ours.raw");
    // With an attached header the data shift leaves an unused tail after the payload.
    assert!(ours.len() >= size, "vmcrypt read {} bytes", ours.len());
    assert_same_bytes(
        "vmcrypt reading what cryptsetup encrypted",
        &ours[..size],
        &plain,
    );
    // And the wrong passphrase is refused by vmcrypt.
    let extra: Vec<&str> = header.map(|h| vec!["--header", h]).unwrap_or_default();
    vm_test_key(&sc, "bad", &img, &extra).code_is(2);
}

/// cryptsetup formats, vmcrypt writes and reads back, cryptsetup decrypts offline (with a
/// header backup used as detached header when the header is attached).
fn cryptsetup_formats(kdf: &[&str], sector: &str, detached: bool) {
    let sc = scratch();
    let size = MIB;
    let (img, hdr) = if detached {
        let hdr = sc.sparse("hdr", 16 * MIB as u64);
        (sc.sparse("img", size as u64), Some(hdr))
    } else {
        (sc.sparse("img", (16 * MIB + size) as u64), None)
    };
    let mut extra = vec!["--sector-size", sector, "--luks2-metadata-size", "16k"];
    extra.extend_from_slice(kdf);
    if let Some(h) = &hdr {
        extra.extend_from_slice(&["--header", h]);
    }
    cs_format2(&sc, &img, &extra);
    let plain = plaintext(size, &format!("cs-fmt {kdf:?} {sector} {detached}"));
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &img, hdr.as_deref());
    let ours = decrypt_luks(vmcrypt, &sc, "pw", &img, hdr.as_deref(), "ours.raw");
    assert_same_bytes("vmcrypt reading back what it wrote", &ours, &plain);

    // cryptsetup's view of the same data.
    match &hdr {
        // Detached (data offset 0): cryptsetup decrypts in place.
        Some(h) => {
            cs_decrypt_in_place(&sc, "pw", h, &img);
            assert_same_bytes(
                "cryptsetup decrypting what vmcrypt wrote",
                &sc.read("img"),
                &plain,
            );
        }
        // Attached: cryptsetup only decrypts detached headers with data offset 0, so
        // have it encrypt the plaintext with the same volume key into a scratch file and
        // compare ciphertexts (IVs count from the segment start in both).
        None => {
            let want = cs_encrypt_with_volume_key(&sc, &img, &plain, sector);
            let data = sc.read("img");
            assert_same_bytes(
                "vmcrypt's ciphertext vs cryptsetup's for the same volume key",
                &data[16 * MIB..],
                &want,
            );
        }
    }
}

/// The ciphertext cryptsetup makes of `plain` with the volume key of `img` (opened with
/// `pw`), aes-xts-plain64 with `sector`-byte sectors.
fn cs_encrypt_with_volume_key(sc: &Scratch, img: &str, plain: &[u8], sector: &str) -> Vec<u8> {
    let (kf, vk) = (sc.p("pw"), sc.p("vk"));
    cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        &kf,
        "--volume-key-file",
        &vk,
        img,
    ])
    .ok();
    let bits = (std::fs::metadata(&vk).unwrap().len() * 8).to_string();
    let data = sc.write("cs.data", plain);
    let hdr = sc.sparse("cs.hdr", 16 * MIB as u64);
    let mut args = vec![
        "reencrypt",
        "--encrypt",
        "--batch-mode",
        "--type",
        "luks2",
        "--header",
        &hdr,
        "--volume-key-file",
        &vk,
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        &bits,
        "--sector-size",
        sector,
        "--key-file",
        &kf,
    ];
    args.extend_from_slice(CS_PBKDF2);
    args.push(&data);
    cryptsetup(&args).ok();
    sc.read("cs.data")
}

mod cryptsetup_creates {
    use super::*;

    #[test]
    fn encrypt_attached_pbkdf2_512() {
        cryptsetup_encrypts(CS_PBKDF2, "512", false);
    }
    #[test]
    fn encrypt_attached_argon2id_4096() {
        cryptsetup_encrypts(CS_ARGON2ID, "4096", false);
    }
    #[test]
    fn encrypt_detached_argon2id_512() {
        cryptsetup_encrypts(CS_ARGON2ID, "512", true);
    }
    #[test]
    fn encrypt_detached_pbkdf2_4096() {
        cryptsetup_encrypts(CS_PBKDF2, "4096", true);
    }
    #[test]
    fn format_attached_pbkdf2_4096() {
        cryptsetup_formats(CS_PBKDF2, "4096", false);
    }
    #[test]
    fn format_attached_argon2id_512() {
        cryptsetup_formats(CS_ARGON2ID, "512", false);
    }
    #[test]
    fn format_detached_argon2id_4096() {
        cryptsetup_formats(CS_ARGON2ID, "4096", true);
    }
    #[test]
    fn format_detached_pbkdf2_512() {
        cryptsetup_formats(CS_PBKDF2, "512", true);
    }
}

// ------------------------------------------------------------------------------------
// 3. Key slots and priorities, both ways.

/// cryptsetup's `--test-passphrase` with passphrase file `key`, optionally on one slot.
fn cs_opens(sc: &Scratch, key: &str, img: &str, slot: Option<&str>) -> Out {
    match slot {
        Some(s) => cs_test_pass(sc, key, img, &["--key-slot", s]),
        None => cs_test_pass(sc, key, img, &[]),
    }
}

/// vmcrypt's `luks test-key` with passphrase file `key`, optionally on one slot.
fn vm_opens(sc: &Scratch, key: &str, img: &str, slot: Option<&str>) -> Out {
    match slot {
        Some(s) => vm_test_key(sc, key, img, &["--key-slot", s]),
        None => vm_test_key(sc, key, img, &[]),
    }
}

#[test]
fn key_slots_changed_by_vmcrypt_behave_so_in_cryptsetup() {
    let sc = scratch();
    let img = vm_create(&sc, "v.img", MIB, VM_PBKDF2);
    vm_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "3"], VM_KEY_ARGON2ID].concat(),
    );
    vm_add_key(&sc, &img, "pw3", VM_KEY_PBKDF2);
    cs_opens(&sc, "pw2", &img, Some("3")).ok();
    cs_opens(&sc, "pw2", &img, Some("0")).code_is(2);
    let slot3 = cs_unlocked_slot(
        &cryptsetup(&[
            "open",
            "--test-passphrase",
            "-v",
            "--key-file",
            &sc.p("pw3"),
            &img,
        ])
        .ok(),
    );
    assert_eq!(
        slot3, 1,
        "add-key without --key-slot takes the lowest free slot"
    );

    // kill-slot 3: pw2 no longer opens anywhere.
    vmcrypt(&["luks", "kill-slot", &img, "3", "--key-file", &sc.p("pw")]).ok();
    cs_opens(&sc, "pw2", &img, None).code_is(2);
    cs_opens(&sc, "pw2", &img, Some("3")).failed();

    // change-key pw3 -> pw2 (slot 1).
    let (k3, k2) = (sc.p("pw3"), sc.p("pw2"));
    vm_luks(
        "change-key",
        &[
            &["--key-file", k3.as_str(), "--new-key-file", k2.as_str()],
            VM_KEY_PBKDF2,
        ]
        .concat(),
        &img,
    )
    .ok();
    cs_opens(&sc, "pw3", &img, None).code_is(2);
    cs_opens(&sc, "pw2", &img, None).ok();

    // remove-key pw2: only pw is left.
    vm_luks("remove-key", &["--key-file", &k2], &img).ok();
    cs_opens(&sc, "pw2", &img, None).code_is(2);
    cs_opens(&sc, "pw", &img, Some("0")).ok();
    let dump = cs_dump(&img);
    for gone in [1, 3] {
        assert!(
            dump_section(&dump, "Keyslots:", gone).is_none(),
            "slot {gone} still listed:\n{dump}"
        );
    }
}

#[test]
fn key_slots_changed_by_cryptsetup_behave_so_in_vmcrypt() {
    let sc = scratch();
    let img = sc.sparse("c.img", (16 * MIB + MIB) as u64);
    cs_format2(&sc, &img, CS_PBKDF2);
    cs_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "4"], CS_ARGON2ID].concat(),
    );
    let out = vm_opens(&sc, "pw2", &img, None).ok();
    assert_eq!(vm_unlocked_slot(&out), 4);
    vm_opens(&sc, "pw2", &img, Some("4")).ok();
    vm_opens(&sc, "pw2", &img, Some("0")).code_is(2);
    vm_opens(&sc, "bad", &img, None).code_is(2);

    cryptsetup(&["luksKillSlot", "--batch-mode", &img, "4"]).ok();
    vm_opens(&sc, "pw2", &img, None).code_is(2);

    cs_add_key(&sc, &img, "pw3", CS_PBKDF2);
    let out = vm_opens(&sc, "pw3", &img, None).ok();
    assert_eq!(vm_unlocked_slot(&out), 1);
    let (k3, k2) = (sc.p("pw3"), sc.p("pw2"));
    let mut args = vec!["luksChangeKey", "--batch-mode", "--key-file", &k3];
    args.extend_from_slice(CS_PBKDF2);
    args.extend_from_slice(&[&img, &k2]);
    cryptsetup(&args).ok();
    vm_opens(&sc, "pw3", &img, None).code_is(2);
    vm_opens(&sc, "pw2", &img, None).ok();

    cryptsetup(&["luksRemoveKey", "--batch-mode", "--key-file", &k2, &img]).ok();
    vm_opens(&sc, "pw2", &img, None).code_is(2);
    let out = vm_opens(&sc, "pw", &img, None).ok();
    assert_eq!(vm_unlocked_slot(&out), 0);
}

/// Slot priorities set by cryptsetup steer vmcrypt's unlock order; an ignored slot only
/// opens when named.
#[test]
fn priorities_set_by_cryptsetup_are_honoured_by_vmcrypt() {
    let sc = scratch();
    let img = sc.sparse("p.img", (16 * MIB + MIB) as u64);
    cs_format2(&sc, &img, CS_PBKDF2);
    cs_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "1"], CS_PBKDF2].concat(),
    );
    // The same passphrase again in slot 2.
    cs_add_key(&sc, &img, "pw", &[&["--key-slot", "2"], CS_PBKDF2].concat());
    assert_eq!(vm_unlocked_slot(&vm_opens(&sc, "pw", &img, None).ok()), 0);

    cryptsetup(&["config", "--priority", "prefer", "--key-slot", "2", &img]).ok();
    assert_eq!(vm_unlocked_slot(&vm_opens(&sc, "pw", &img, None).ok()), 2);

    vm_opens(&sc, "pw2", &img, None).ok();
    cryptsetup(&["config", "--priority", "ignore", "--key-slot", "1", &img]).ok();
    // cryptsetup itself: ignored unless named.
    cs_opens(&sc, "pw2", &img, None).failed();
    cs_opens(&sc, "pw2", &img, Some("1")).ok();
    // vmcrypt the same.
    vm_opens(&sc, "pw2", &img, None).code_is(2);
    assert_eq!(
        vm_unlocked_slot(&vm_opens(&sc, "pw2", &img, Some("1")).ok()),
        1
    );
}

/// `vmcrypt luks config --priority` is what cryptsetup's dump reports.
#[test]
fn priorities_set_by_vmcrypt_show_in_cryptsetup() {
    let sc = scratch();
    let img = vm_create(&sc, "p.img", MIB, VM_PBKDF2);
    vm_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "1"], VM_KEY_PBKDF2].concat(),
    );
    vm_add_key(
        &sc,
        &img,
        "pw",
        &[&["--key-slot", "2"], VM_KEY_PBKDF2].concat(),
    );
    let prio = |slot: u32| {
        let dump = cs_dump(&img);
        let sec = dump_section(&dump, "Keyslots:", slot)
            .unwrap_or_else(|| panic!("slot {slot} missing:\n{dump}"));
        dump_field(&sec, "\tPriority")
    };
    for s in 0..3 {
        assert_eq!(prio(s), "normal");
    }
    vm_luks("config", &["--priority", "prefer", "--key-slot", "2"], &img).ok();
    vm_luks("config", &["--priority", "ignore", "--key-slot", "1"], &img).ok();
    assert_eq!(prio(0), "normal");
    assert_eq!(prio(1), "ignored");
    assert_eq!(prio(2), "preferred");
    // And cryptsetup acts on them.
    let out = cryptsetup(&[
        "open",
        "--test-passphrase",
        "-v",
        "--key-file",
        &sc.p("pw"),
        &img,
    ])
    .ok();
    assert_eq!(cs_unlocked_slot(&out), 2);
    cs_opens(&sc, "pw2", &img, None).failed();
    cs_opens(&sc, "pw2", &img, Some("1")).ok();
    vm_luks("config", &["--priority", "normal", "--key-slot", "1"], &img).ok();
    assert_eq!(prio(1), "normal");
    cs_opens(&sc, "pw2", &img, None).ok();
}

// ------------------------------------------------------------------------------------
// 4. Tokens.

/// `cryptsetup token export --token-id ID IMG` as text (trailing newline dropped).
fn cs_token_export(img: &str, id: u32) -> Out {
    cryptsetup(&["token", "export", "--token-id", &id.to_string(), img])
}

fn vm_token_export(img: &str, id: u32) -> Out {
    vm_luks("token", &["export", "--token-id", &id.to_string()], img)
}

fn trimmed(out: &Out) -> String {
    out.stdout_str().trim_end_matches('\n').to_string()
}

#[test]
fn tokens_imported_by_one_tool_export_identically_from_the_other() {
    let sc = scratch();
    let img = vm_create(&sc, "t.img", MIB, VM_PBKDF2);
    vm_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "1"], VM_KEY_PBKDF2].concat(),
    );
    let tok_a = r#"{"type":"vm-kms","keyslots":["0"],"kms_key_id":"kms/key/7","nested":{"a":[1,2,{"b":null}],"s":"caf\u00e9 \"q\""}}"#;
    let file_a = sc.write("a.json", tok_a.as_bytes());
    vm_luks(
        "token",
        &["import", "--token-id", "3", "--json-file", &file_a],
        &img,
    )
    .ok();
    let cs_a = trimmed(&cs_token_export(&img, 3).ok());
    let vm_a = trimmed(&vm_token_export(&img, 3).ok());
    assert_eq!(vm_a, cs_a, "the two tools export token 3 differently");
    let want: serde_json::Value = serde_json::from_str(tok_a).unwrap();
    let got: serde_json::Value = serde_json::from_str(&cs_a).unwrap();
    assert_eq!(
        got, want,
        "cryptsetup exports a different token than vmcrypt imported"
    );

    // The reverse: cryptsetup imports, vmcrypt exports the same text.
    let tok_b = r#"{"type":"other-kms","keyslots":["1","0"],"n":-5,"f":[true,false]}"#;
    let file_b = sc.write("b.json", tok_b.as_bytes());
    cryptsetup(&[
        "token",
        "import",
        "--token-id",
        "5",
        "--json-file",
        &file_b,
        &img,
    ])
    .ok();
    let cs_b = trimmed(&cs_token_export(&img, 5).ok());
    let vm_b = trimmed(&vm_token_export(&img, 5).ok());
    assert_eq!(vm_b, cs_b, "the two tools export token 5 differently");
    let got: serde_json::Value = serde_json::from_str(&vm_b).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(tok_b).unwrap()
    );

    // Removing with vmcrypt removes for cryptsetup.
    vm_luks("token", &["remove", "--token-id", "5"], &img).ok();
    cs_token_export(&img, 5).failed();
    cs_token_export(&img, 3).ok();
}

#[test]
fn builtin_luks2_token_types_are_refused() {
    let sc = scratch();
    let img = vm_create(&sc, "t.img", MIB, VM_PBKDF2);
    let before = sc.read("t.img");
    let tok = r#"{"type":"luks2-keyring","keyslots":["0"],"key_description":"x"}"#;
    let file = sc.write("k.json", tok.as_bytes());
    vm_luks(
        "token",
        &["import", "--token-id", "0", "--json-file", &file],
        &img,
    )
    .failed()
    .stderr_has("luks2-");
    assert_same_bytes("image after a refused import", &sc.read("t.img"), &before);
    cs_token_export(&img, 0).failed();
}

#[test]
fn killing_the_only_bound_slot_drops_the_token() {
    let sc = scratch();
    let img = vm_create(&sc, "t.img", MIB, VM_PBKDF2);
    vm_add_key(
        &sc,
        &img,
        "pw2",
        &[&["--key-slot", "1"], VM_KEY_PBKDF2].concat(),
    );
    let only1 = sc.write(
        "only1.json",
        br#"{"type":"vm-kms","keyslots":["1"],"id":"one"}"#,
    );
    let both = sc.write(
        "both.json",
        br#"{"type":"vm-kms","keyslots":["0","1"],"id":"two"}"#,
    );
    vm_luks(
        "token",
        &["import", "--token-id", "3", "--json-file", &only1],
        &img,
    )
    .ok();
    vm_luks(
        "token",
        &["import", "--token-id", "4", "--json-file", &both],
        &img,
    )
    .ok();
    let dump = cs_dump(&img);
    assert!(dump_section(&dump, "Tokens:", 3).is_some(), "{dump}");

    let out = vmcrypt(&["luks", "kill-slot", &img, "1", "--key-file", &sc.p("pw")]).ok();
    assert!(
        out.stderr.contains("Token 3") && !out.stderr.contains("Token 4"),
        "kill-slot should report dropping token 3 only\n{}",
        out.describe()
    );
    let dump = cs_dump(&img);
    assert!(
        dump_section(&dump, "Tokens:", 3).is_none(),
        "token 3 still listed:\n{dump}"
    );
    let t4 = dump_section(&dump, "Tokens:", 4).unwrap_or_else(|| panic!("token 4 lost:\n{dump}"));
    assert!(t4.contains("vm-kms"), "{t4}");
    cs_token_export(&img, 3).failed();
    let t4: serde_json::Value =
        serde_json::from_str(&trimmed(&cs_token_export(&img, 4).ok())).unwrap();
    assert_eq!(
        t4["keyslots"],
        serde_json::json!(["0"]),
        "slot 1 unbound from token 4"
    );
}

// ------------------------------------------------------------------------------------
// 5. Header backup/restore and repair.

#[test]
fn header_backups_are_identical_and_restore_in_the_other_tool() {
    let sc = scratch();
    let img = vm_create(&sc, "h.img", MIB, &format!("{VM_PBKDF2},metadata-size=32k"));
    let plain = plaintext(MIB, "backup");
    sc.write("plain.raw", &plain);
    write_into_luks(vmcrypt, &sc, "pw", "plain.raw", &img, None);

    let (vm_bak, cs_bak) = (sc.p("vm.bak"), sc.p("cs.bak"));
    vm_luks("header-backup", &["--header-backup-file", &vm_bak], &img).ok();
    cryptsetup(&["luksHeaderBackup", "--header-backup-file", &cs_bak, &img]).ok();
    assert_same_bytes(
        "vmcrypt vs cryptsetup header backup",
        &sc.read("vm.bak"),
        &sc.read("cs.bak"),
    );

    // vmcrypt's backup restored by cryptsetup undoes a key added later.
    vm_add_key(&sc, &img, "pw2", VM_KEY_PBKDF2);
    cs_opens(&sc, "pw2", &img, None).ok();
    cryptsetup(&[
        "luksHeaderRestore",
        "--batch-mode",
        "--header-backup-file",
        &vm_bak,
        &img,
    ])
    .ok();
    cs_opens(&sc, "pw2", &img, None).code_is(2);
    vm_opens(&sc, "pw2", &img, None).code_is(2);
    cs_opens(&sc, "pw", &img, None).ok();

    // cryptsetup's backup (with a slot cryptsetup added) restored by vmcrypt.
    cs_add_key(&sc, &img, "pw3", CS_PBKDF2);
    let cs_bak2 = sc.p("cs2.bak");
    cryptsetup(&["luksHeaderBackup", "--header-backup-file", &cs_bak2, &img]).ok();
    let vm_bak2 = sc.p("vm2.bak");
    vm_luks("header-backup", &["--header-backup-file", &vm_bak2], &img).ok();
    assert_same_bytes("second backups", &sc.read("vm2.bak"), &sc.read("cs2.bak"));
    cryptsetup(&["luksKillSlot", "--batch-mode", &img, "1"]).ok();
    vm_add_key(&sc, &img, "pw2", VM_KEY_PBKDF2);
    vm_luks(
        "header-restore",
        &["--batch-mode", "--header-backup-file", &cs_bak2],
        &img,
    )
    .ok();
    vm_opens(&sc, "pw3", &img, None).ok();
    cs_opens(&sc, "pw3", &img, None).ok();
    cs_opens(&sc, "pw2", &img, None).code_is(2);
    // The data area was not touched by either restore.
    let back = decrypt_luks(vmcrypt, &sc, "pw3", &img, None, "back.raw");
    assert_same_bytes("data after the restores", &back, &plain);
}

/// Corrupt one header copy, check vmcrypt still opens and repairs it, then that each
/// copy alone is valid for cryptsetup.
fn repair_case(corrupt_secondary: bool) {
    let sc = scratch();
    let meta = 16 * KIB as u64;
    let img = vm_create(&sc, "r.img", MIB, &format!("{VM_PBKDF2},metadata-size=16k"));
    // Flip a byte inside each copy's JSON area (past the 4 KiB binary header).
    let primary_json = 4096 + 2;
    let secondary_json = meta + 4096 + 2;
    let (bad, other) = if corrupt_secondary {
        (secondary_json, primary_json)
    } else {
        (primary_json, secondary_json)
    };
    flip_byte(&img, bad);
    vm_opens(&sc, "pw", &img, None).ok();
    // Control: with both copies broken nothing opens.
    std::fs::copy(&img, sc.path("both.img")).unwrap();
    flip_byte(&sc.p("both.img"), other);
    cs_test_pass(&sc, "pw", &sc.p("both.img"), &[]).failed();
    vm_opens(&sc, "pw", &sc.p("both.img"), None).failed();

    vm_luks("repair", &[], &img).ok().stderr_has("repaired");
    // Each copy alone (other one broken, on a copy of the file) is valid for cryptsetup.
    for (name, off) in [("p.img", primary_json), ("s.img", secondary_json)] {
        std::fs::copy(&img, sc.path(name)).unwrap();
        flip_byte(&sc.p(name), off);
        cs_test_pass(&sc, "pw", &sc.p(name), &[]).ok();
    }
    cs_dump(&img);
    // Corrupt the copy that was good all along: both tools still open the image.
    flip_byte(&img, other);
    vm_opens(&sc, "pw", &img, None).ok();
    cs_opens(&sc, "pw", &img, None).ok();
}

#[test]
fn repair_after_secondary_corruption() {
    repair_case(true);
}

#[test]
fn repair_after_primary_corruption() {
    repair_case(false);
}

// ------------------------------------------------------------------------------------
// 6. CLI details.

/// The value of an indented `name: value` line of `vmcrypt info` output.
fn info_field(out: &str, name: &str) -> String {
    let trimmed: String = out
        .lines()
        .map(|l| l.trim_start().to_string() + "\n")
        .collect();
    dump_field(&trimmed, name)
}

#[test]
fn info_prints_the_luks2_block() {
    let sc = scratch();
    let img = vm_create(
        &sc,
        "i.img",
        MIB,
        &format!("{VM_PBKDF2},sector-size=4096,cipher-alg=aes-128,label=info-label"),
    );
    let dump = cs_dump(&img);
    let out = vmcrypt(&["info", &img]).ok().stdout_str();
    assert_eq!(info_field(&out, "file format"), "luks", "{out}");
    assert_eq!(
        info_field(&out, "virtual size"),
        "1 MiB (1048576 bytes)",
        "{out}"
    );
    assert_eq!(info_field(&out, "encrypted"), "yes", "{out}");
    // The LUKS2 block agrees with cryptsetup's dump.
    assert_eq!(info_field(&out, "version"), "2", "{out}");
    assert_eq!(info_field(&out, "uuid"), dump_field(&dump, "UUID"), "{out}");
    assert_eq!(info_field(&out, "label"), "info-label", "{out}");
    let seg = dump_section(&dump, "Data segments:", 0).expect("segment 0");
    assert_eq!(
        info_field(&out, "cipher"),
        dump_field(&seg, "\tcipher"),
        "{out}"
    );
    assert_eq!(
        format!("{} [bytes]", info_field(&out, "sector size")),
        dump_field(&seg, "\tsector"),
        "{out}"
    );
    assert_eq!(
        format!("{} [bytes]", info_field(&out, "payload offset")),
        dump_field(&seg, "\toffset"),
        "{out}"
    );
    assert_eq!(info_field(&out, "type"), "luks2", "{out}");
    let js = vmcrypt(&["info", "--output", "json", &img]).ok().json();
    assert_eq!(js["format"], "luks", "{js}");
    assert_eq!(
        vm_luks("uuid", &[], &img).ok().stdout_str().trim(),
        dump_field(&dump, "UUID")
    );
}

/// An image cryptsetup put in reencryption state (`--init-only`) is read through its
/// old and new segments (online reencryption) without a write.
#[test]
fn reencryption_in_progress_reads_through_both_segments() {
    let sc = scratch();
    let src = shared("vectors/cryptsetup/luks2-reencrypt-initialized.img");
    let img = sc.p("r.img");
    std::fs::copy(&src, &img).unwrap();
    let before = sc.read("r.img");
    let key = shared("vectors/cryptsetup/keys/l2r-slot0");
    vmcrypt(&[
        "convert",
        "--object",
        &format!("secret,id=s0,file={key}"),
        "--image-opts",
        &luks_opts("s0", &img, None),
        "-O",
        "raw",
        &sc.p("out.raw"),
    ])
    .ok();
    assert_eq!(
        sha256_hex(&sc.read("out.raw")),
        "54cf73fd6f1b4f559d10ced43191d8bc506977954428b4b5b7118e0601a10312",
        "the vectors' plaintext"
    );
    assert_same_bytes("image after the convert", &sc.read("r.img"), &before);
}

#[test]
fn unknown_requirements_dump_but_refuse_add_key() {
    let sc = scratch();
    tool(
        "tar",
        &[
            "-xJf",
            &shared("vectors/cryptsetup/upstream/luks2_header_requirements.tar.xz"),
            "-C",
            &sc.p(""),
        ],
    )
    .ok();
    let img = sc.p("luks2_header_requirements");
    let before = sc.read("luks2_header_requirements");
    // cryptsetup and vmcrypt both dump it and list the requirements.
    assert!(cs_dump(&img).contains("req0"));
    let dump = vm_luks("dump", &[], &img).ok().stdout_str();
    assert!(dump.contains("req0") && dump.contains("req1"), "{dump}");
    // Adding a key must fail before any passphrase is tried, and change nothing.
    let vk = sc.write("vk", &[0u8; 32]);
    vm_luks(
        "add-key",
        &[
            &[
                "--volume-key-file",
                vk.as_str(),
                "--new-key-file",
                &sc.p("pw2"),
            ],
            VM_KEY_PBKDF2,
        ]
        .concat(),
        &img,
    )
    .failed()
    .stderr_has("requirement");
    vm_luks(
        "add-key",
        &[
            &[
                "--key-file",
                sc.p("pw").as_str(),
                "--new-key-file",
                &sc.p("pw2"),
            ],
            VM_KEY_PBKDF2,
        ]
        .concat(),
        &img,
    )
    .failed()
    .stderr_has("requirement");
    // cryptsetup refuses the same way; the requirement-free twin gets as far as the
    // passphrase (wrong here: exit 2), so the refusal above is the requirements'.
    let kf = sc.p("pw");
    let nf = sc.p("pw2");
    let mut args = vec!["luksAddKey", "--batch-mode", "--key-file", &kf];
    args.extend_from_slice(CS_PBKDF2);
    args.extend_from_slice(&[&img, &nf]);
    cryptsetup(&args).failed().stderr_has("requirements");
    vm_luks(
        "add-key",
        &[
            &["--key-file", kf.as_str(), "--new-key-file", nf.as_str()],
            VM_KEY_PBKDF2,
        ]
        .concat(),
        &sc.p("luks2_header_requirements_free"),
    )
    .code_is(2);
    assert_same_bytes(
        "image after the refused add-key",
        &sc.read("luks2_header_requirements"),
        &before,
    );
}
