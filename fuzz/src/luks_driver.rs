//! Fuzz entry point `luks_driver`: the LUKS driver opening a whole image *with its
//! passphrase*, over a size-capped memory node. For a LUKS2 header in reencryption that
//! open recovers an interrupted hotzone, which writes data and header.
//!
//! The input's first byte picks one of the template images in `fuzz/seeds/luks_driver/`
//! (made by `fuzz/seed_luks.sh`: plain LUKS1 and LUKS2, and LUKS2 left in each
//! reencryption resilience mode by vmcrypt and by cryptsetup; passphrase "pw", PBKDF2
//! slots of 1000 iterations). The rest replaces that image's metadata: for LUKS1 the
//! start of the binary header; for LUKS2 the JSON area of both header copies
//! (zero-padded; the checksums are recomputed so the mutations reach the parser),
//! either as JSON text (when it starts with `{`) or as edits of the template's JSON
//! ([`edit_json`]), which keep it well-formed and its keys unlockable, so hostile
//! numbers and names reach the reencryption code.
//!
//! Then: open without and with the passphrase, read, write and read back a few ranges,
//! and `check()`. Errors are fine. Not fine: panics, hangs, huge allocations, a write
//! past the end of the image, a successful open that cannot read inside its size, or a
//! write that reads back differently.
use super::Bounded;
use crate::luks2_csum::fix_checksum;
use flate2::read::GzDecoder;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use vmcrypt_block::BlockDriver;
use vmcrypt_block::driver::Check;
use vmcrypt_block::drivers::luks::LuksDriver;
use vmcrypt_block::drivers::luks::v2::header_hasher;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_format::luks2::BIN_HEADER_SIZE;
use vmcrypt_format::luks2::binary::{BinaryHeader, HeaderCopy};

/// The templates, in selector order (the first input byte, modulo their number).
const TEMPLATES: &[&[u8]] = &[
    include_bytes!("../seeds/luks_driver/luks1.img.gz"),
    include_bytes!("../seeds/luks_driver/luks2.img.gz"),
    include_bytes!("../seeds/luks_driver/reenc-checksum.img.gz"),
    include_bytes!("../seeds/luks_driver/reenc-journal.img.gz"),
    include_bytes!("../seeds/luks_driver/reenc-checksum-to4096.img.gz"),
    include_bytes!("../seeds/luks_driver/reenc-none-paused.img.gz"),
    include_bytes!("../seeds/luks_driver/cs-init-checksum.img.gz"),
    include_bytes!("../seeds/luks_driver/cs-init-journal.img.gz"),
];

/// The templates' passphrase.
const PASSPHRASE: &[u8] = b"pw";

/// Bytes of a LUKS1 header the input may replace (the binary header).
const LUKS1_PHDR: usize = 592;

/// The decompressed templates.
fn templates() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        let unzip = |gz: &&[u8]| {
            let mut img = Vec::new();
            GzDecoder::new(*gz)
                .read_to_end(&mut img)
                .expect("a luks_driver template decompresses");
            img
        };
        TEMPLATES.iter().map(unzip).collect()
    })
}

/// KDF limits far below the defaults, so a hostile slot costs milliseconds.
fn limits() -> KdfLimits {
    KdfLimits {
        max_memory_kib: 256,
        max_time: 4,
        max_lanes: 4,
        max_pbkdf2_iterations: 4000,
        ..KdfLimits::default()
    }
}

/// The template picked by `data[0]` with the rest of `data` as its metadata.
fn mutated(data: &[u8]) -> Option<Vec<u8>> {
    let (&pick, meta) = data.split_first()?;
    let t = templates();
    let mut img = t[pick as usize % t.len()].clone();
    if img[6..8] == [0, 1] {
        let n = meta.len().min(LUKS1_PHDR);
        img[..n].copy_from_slice(&meta[..n]);
        return Some(img);
    }
    let hdr = BinaryHeader::decode(&img[..BIN_HEADER_SIZE], HeaderCopy::Primary, 0)
        .expect("a LUKS2 template has a valid primary header")
        .hdr_size as usize;
    let edited;
    let meta = match meta.first() {
        Some(b'{') | None => meta,
        Some(_) => {
            edited = edit_json(&img[BIN_HEADER_SIZE..hdr], meta)?;
            &edited[..]
        }
    };
    for off in [0, hdr] {
        let area = &mut img[off + BIN_HEADER_SIZE..off + hdr];
        let n = meta.len().min(area.len());
        area[..n].copy_from_slice(&meta[..n]);
        area[n..].fill(0);
    }
    fix_checksum(&mut img, 0, HeaderCopy::Primary, &header_hasher);
    fix_checksum(&mut img, hdr, HeaderCopy::Secondary, &header_hasher);
    Some(img)
}

/// Names the edits may put in string fields.
const WORDS: &[&str] = &[
    "",
    "checksum",
    "journal",
    "none",
    "datashift",
    "datashift-checksum",
    "datashift-journal",
    "reencrypt",
    "encrypt",
    "decrypt",
    "crypt",
    "linear",
    "dynamic",
    "in-reencryption",
    "backup-previous",
    "backup-final",
    "backup-moved-segment",
    "sha256",
    "sha1",
    "sha512",
    "aes-xts-plain64",
    "aes-cbc-essiv:sha256",
    "cipher_null-ecb",
    "raw",
    "luks2",
    "pbkdf2",
    "forward",
    "backward",
    "online-reencrypt-v2",
    "online-reencrypt-v3",
    "4096",
    "512",
    "-1",
];

/// Apply `edits` (10 bytes each: a scalar of the JSON, in document order; an
/// operation; a little-endian value) to the JSON text at the start of `area`.
fn edit_json(area: &[u8], edits: &[u8]) -> Option<Vec<u8>> {
    let text = &area[..area.iter().position(|&b| b == 0).unwrap_or(area.len())];
    let mut json: serde_json::Value = serde_json::from_slice(text).ok()?;
    for e in edits.chunks_exact(10) {
        let mut leaves = Vec::new();
        scalars(&mut json, &mut leaves);
        let n = leaves.len();
        let leaf = leaves.into_iter().nth(e[0] as usize % n.max(1))?;
        let val = u64::from_le_bytes(e[2..10].try_into().expect("8 bytes"));
        let old = match &*leaf {
            serde_json::Value::String(s) => s.parse::<u64>().ok(),
            v => v.as_u64(),
        };
        let num = match e[1] % 6 {
            0 => Some(val),
            1 => old.map(|o| o.wrapping_add(val as i16 as u64)),
            2 => Some((val % 65536) * 512),
            3 => {
                *leaf = WORDS[val as usize % WORDS.len()].into();
                None
            }
            4 => {
                *leaf = serde_json::Value::Null;
                None
            }
            _ => Some(u64::MAX - val % 4096),
        };
        if let Some(v) = num {
            *leaf = match leaf {
                serde_json::Value::Number(_) => v.into(),
                _ => v.to_string().into(),
            };
        }
    }
    serde_json::to_vec(&json).ok()
}

/// The scalars of `v`, in document order.
fn scalars<'a>(v: &'a mut serde_json::Value, out: &mut Vec<&'a mut serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => m.values_mut().for_each(|c| scalars(c, out)),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| scalars(c, out)),
        _ => out.push(v),
    }
}

/// See the module documentation.
pub fn luks_driver(data: &[u8]) {
    let Some(img) = mutated(data) else {
        return;
    };
    let size = img.len() as u64;
    let file = Arc::new(Bounded::new(img, size));
    if let Ok(d) = LuksDriver::open(file.clone(), None, None, None, &limits()) {
        let _ = d.check();
    }
    if let Ok(d) = LuksDriver::open(file.clone(), None, Some(PASSPHRASE), None, &limits()) {
        exercise(&d);
        let _ = d.check();
    }
    assert_eq!(file.refused(), 0, "a write went past the end of the image");
}

/// Read the first and last 4 KiB, then write and read back three ranges.
fn exercise(d: &LuksDriver) {
    let size = d.size();
    if size == 0 {
        return;
    }
    let tail = size.saturating_sub(4096);
    let mut buf = vec![0u8; size.min(4096) as usize];
    for at in [0, tail] {
        if let Err(e) = d.read_at(&mut buf, at) {
            panic!(
                "an opened {size}-byte node cannot read {} bytes at {at}: {e}",
                buf.len()
            );
        }
    }
    if d.is_read_only() {
        return;
    }
    for (at, len) in [
        (0, 700),
        (size / 2, 5000),
        (size.saturating_sub(1000), 1000),
    ] {
        let len = len.min(size - at) as usize;
        let pattern: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xa5).collect();
        if d.write_at(&pattern, at).is_err() {
            continue;
        }
        let mut back = vec![0u8; len];
        d.read_at(&mut back, at)
            .expect("a written range reads back");
        assert!(
            back == pattern,
            "{len} bytes written at {at} read back differently"
        );
    }
    let _ = d.flush();
}
