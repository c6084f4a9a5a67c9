//! In-place conversion between LUKS1 and LUKS2 (`cryptsetup convert --type luks1|luks2`),
//! without a passphrase: the key material, salts, iteration counts and the master-key
//! digest move over verbatim, and the data is never touched.
//!
//! Both directions accept exactly what cryptsetup accepts and refuse the rest with the
//! reason (argon2 keyslots, tokens, 4096-byte sectors, a LUKS1 layout with no room for
//! two 16 KiB LUKS2 headers, ...). Every refusal happens before the first write.
//!
//! # Crash safety
//!
//! Interrupting after any single write leaves a device that opens with the old format
//! or the new one, with the same key set. Both formats find key material by offset, and
//! the version is decided by the first 8 bytes of the device (vmcrypt's `probe_version`
//! and cryptsetup both read offset 0), so each direction is: copy material to places
//! the old header does not use, switch the header at offset 0 in one write, clean up.
//! Every write is followed by a flush.
//!
//! * **LUKS1 -> LUKS2.** (1) Each active slot's material is copied to a new LUKS2 area
//!   (4 KiB aligned, after the two 16 KiB headers, before the data) that overlaps no
//!   active LUKS1 material; disabled slots' areas are reused. LUKS1 is untouched so
//!   far. (2) The LUKS2 primary header (16 KiB at offset 0) is written in one write: it
//!   replaces the LUKS1 header; the secondary copy is still missing, which the LUKS2
//!   loaders accept (cryptsetup repairs it). (3) The secondary copy is written. (4) Old
//!   material that no LUKS2 area covers is overwritten with random bytes.
//! * **LUKS2 -> LUKS1.** (1) Each active keyslot's material is copied to a LUKS1 place
//!   that overlaps no LUKS2 area in use and neither LUKS2 header copy. (2) The 592-byte
//!   LUKS1 header is written at offset 0 in one write: version 1 at offset 0 now wins,
//!   the still intact LUKS2 secondary copy is ignored by readers that look at offset 0
//!   first (checked against cryptsetup in the interop tests). (3) The rest of both LUKS2
//!   header copies `[592, 2 * hdr_size)` is zeroed, so no LUKS2 signature remains.
//!   (4) The old LUKS2 areas are overwritten with random bytes. Disabled LUKS1 slots
//!   get placeholder offsets (LUKS1 validates all eight) that are never written.
//!   A LUKS2 header that needs repair (a damaged copy) is refused: repair it first.
//!
//! # Placement
//!
//! cryptsetup converts by shifting the whole key-material block by 28 KiB (an
//! overlapping copy, not crash-safe). We put slots into the same cells cryptsetup's
//! layouts use (`32 KiB + k * area` in LUKS2, `4 KiB + k * area` in LUKS1), choosing for
//! each moved slot a cell that is clear of all material in use; a slot already in a
//! cell stays. The result is therefore in the layout `cryptsetup convert` expects, and
//! it can convert it back. When no such assignment exists (e.g. LUKS1 slots 0, 2, 4
//! and 6 in use), a fallback keeps every slot that may stay where it is (LUKS2 areas
//! become LUKS1 material unchanged and vice versa) and first-fits the rest; the result
//! is valid and vmcrypt converts it back, cryptsetup may refuse to. If nothing fits
//! without overwriting material in use (e.g. all eight LUKS1 slots active), the
//! conversion is refused; there is no unsafe fallback.
//!
//! Before anything is written the new header is encoded and checked by the same
//! validation the loaders apply, against the device as it will be.
use super::v2::{Luks2Volume, header_hasher, material_len};
use super::volume::Luks1Volume;
use crate::driver::BlockDriver;
use serde_json::json;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, random};
use vmcrypt_error::{Error, ErrorKind, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{
    DIGEST_LEN, HEADER_SIZE, KEY_ENABLED, Keyslot, Limits, Luks1Header, NUM_KEYSLOTS, SALT_LEN,
    STRIPES,
};
use vmcrypt_format::luks2::{
    self, BIN_HEADER_SIZE, BinaryHeader, Digest, HeaderCopy, Kdf, KeyslotKind, LoadOptions,
    Luks2Header, Luks2Keyslot, MAX_KEYSLOTS_SIZE, Metadata, Priority, SegmentSize,
};

/// The LUKS2 header size a conversion from LUKS1 uses (cryptsetup's: 16 KiB per copy).
pub const CONVERT_HDR_SIZE: u64 = 16 << 10;
/// LUKS2 keyslot areas are 4 KiB aligned.
const AREA_ALIGN: u64 = 4096;
/// Lowest LUKS1 key-material offset written (sector 8, as cryptsetup's layouts).
const LUKS1_FIRST_MATERIAL: u64 = 4096;
/// Marker of luksmeta's foreign metadata after the LUKS1 key material.
const LUKSMETA_MAGIC: &[u8; 8] = b"LUKSMETA";

/// Where one active key slot's material was and is now (bytes on the header device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotMove {
    pub slot: u32,
    pub old_offset: u64,
    pub new_offset: u64,
}

impl SlotMove {
    /// The material was copied (it did not stay in place).
    pub fn moved(&self) -> bool {
        self.old_offset != self.new_offset
    }
}

/// What a conversion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertReport {
    pub from_version: u16,
    pub to_version: u16,
    /// Active key slots, by id.
    pub keyslots: Vec<SlotMove>,
    /// Bytes of old key material / metadata that were wiped afterwards.
    pub wiped_bytes: u64,
    /// Data (payload) offset in bytes, unchanged.
    pub data_offset: u64,
}

fn refuse(to: &str, why: impl std::fmt::Display) -> Error {
    Error::unsupported(format!("cannot convert to {to}: {why}"))
}

/// Half-open byte range.
type Span = (u64, u64);

fn overlaps(a: Span, b: Span) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The lowest `align`-aligned offset in `[start, limit)` where `len` bytes overlap none
/// of `used`.
fn first_fit(start: u64, limit: u64, len: u64, align: u64, used: &[Span]) -> Option<u64> {
    let mut cur = start.div_ceil(align) * align;
    loop {
        let end = cur.checked_add(len)?;
        if end > limit {
            return None;
        }
        match used
            .iter()
            .filter(|u| overlaps(**u, (cur, end)))
            .map(|u| u.1)
            .max()
        {
            None => return Some(cur),
            Some(past) => cur = past.div_ceil(align) * align,
        }
    }
}

/// `a` minus every range of `holes`.
fn subtract(a: Span, holes: &[Span]) -> Vec<Span> {
    let mut out = vec![a];
    for h in holes {
        out = out
            .into_iter()
            .flat_map(|s| {
                if !overlaps(s, *h) {
                    return vec![s];
                }
                let mut v = Vec::new();
                if s.0 < h.0 {
                    v.push((s.0, h.0));
                }
                if h.1 < s.1 {
                    v.push((h.1, s.1));
                }
                v
            })
            .collect();
    }
    out
}

/// Place items on the grid `base + k * stride` (`k < n`): an item whose `current` offset
/// is a grid position keeps it, the others take the lowest free position where
/// `clear(position, item)` holds. Returns the positions and which grid cells are taken,
/// or None if some item finds no cell.
fn grid_assign(
    base: u64,
    stride: u64,
    n: u64,
    current: &[u64],
    clear: impl Fn(u64, usize) -> bool,
) -> Option<(Vec<u64>, Vec<bool>)> {
    let pos = |k: u64| base + k * stride;
    let mut taken = vec![false; n as usize];
    let mut out = vec![None; current.len()];
    for (j, &c) in current.iter().enumerate() {
        if c >= base && (c - base).is_multiple_of(stride) {
            let k = (c - base) / stride;
            if k < n && !taken[k as usize] && clear(c, j) {
                taken[k as usize] = true;
                out[j] = Some(c);
            }
        }
    }
    for (j, slot) in out.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let k = (0..n).find(|&k| !taken[k as usize] && clear(pos(k), j))?;
        taken[k as usize] = true;
        *slot = Some(pos(k));
    }
    Some((out.into_iter().collect::<Option<Vec<_>>>()?, taken))
}

fn write_flush(dev: &dyn BlockDriver, buf: &[u8], off: u64, what: &str) -> Result<()> {
    dev.write_at(buf, off)
        .with_ctx(|| format!("writing {what}"))?;
    dev.flush()
}

fn wipe(dev: &dyn BlockDriver, spans: &[Span]) -> Result<u64> {
    let mut total = 0;
    for &(a, b) in spans.iter().filter(|s| s.1 > s.0) {
        let mut noise = vec![0u8; (b - a) as usize];
        random::fill(&mut noise)?;
        write_flush(dev, &noise, a, "over old key material")?;
        total += b - a;
    }
    Ok(total)
}

fn kdf_limits_v1(limits: &KdfLimits) -> Limits {
    Limits {
        max_iterations: limits.max_pbkdf2_iterations,
    }
}

fn ensure_writable(dev: &dyn BlockDriver) -> Result<()> {
    ensure!(
        !dev.is_read_only(),
        ReadOnly,
        "the LUKS header device is open read-only"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// LUKS1 -> LUKS2
// ---------------------------------------------------------------------------------------

/// The LUKS2 plan for a LUKS1 header.
struct L2Plan {
    header: Luks2Header,
    moves: Vec<SlotMove>,
    /// Material length (bytes) per active slot, same order as `moves`.
    lens: Vec<u64>,
}

/// Convert the LUKS1 header on `dev` to LUKS2 in place (see the module doc for the
/// write order). `detached`: `dev` is a detached header file.
pub fn luks1_to_luks2(
    dev: Arc<dyn BlockDriver>,
    detached: bool,
    limits: &KdfLimits,
) -> Result<ConvertReport> {
    let v1 = open_v1(&dev, detached, limits)?;
    ensure_writable(dev.as_ref())?;
    let plan = plan_luks2(&v1)?;
    let primary = plan
        .header
        .encode_copy(HeaderCopy::Primary, &header_hasher)?;
    let secondary = plan
        .header
        .encode_copy(HeaderCopy::Secondary, &header_hasher)?;
    check_luks2_result(dev.as_ref(), &primary, &secondary, &plan)?;

    // (1) copy material that must move; LUKS1 stays valid.
    for (m, len) in plan.moves.iter().zip(&plan.lens) {
        if m.moved() {
            let mut buf = SecretBytes::zeroed(*len as usize);
            dev.read_at(buf.as_mut(), m.old_offset)
                .with_ctx(|| format!("reading key material of LUKS1 slot {}", m.slot))?;
            write_flush(
                dev.as_ref(),
                buf.as_bytes(),
                m.new_offset,
                &format!("key material of keyslot {} to its LUKS2 area", m.slot),
            )?;
        }
    }
    // (2) the switch: the primary LUKS2 header replaces the LUKS1 header.
    write_flush(dev.as_ref(), &primary, 0, "the primary LUKS2 header")?;
    // (3) the secondary copy.
    write_flush(
        dev.as_ref(),
        &secondary,
        CONVERT_HDR_SIZE,
        "the secondary LUKS2 header",
    )?;
    // (4) wipe old material nothing uses any more.
    let areas: Vec<Span> = plan
        .moves
        .iter()
        .zip(&plan.lens)
        .map(|(m, l)| {
            (
                m.new_offset,
                m.new_offset + l.div_ceil(AREA_ALIGN) * AREA_ALIGN,
            )
        })
        .chain(std::iter::once((0, 2 * CONVERT_HDR_SIZE)))
        .collect();
    let mut stale = Vec::new();
    for (m, len) in plan.moves.iter().zip(&plan.lens) {
        if m.moved() {
            stale.extend(subtract((m.old_offset, m.old_offset + len), &areas));
        }
    }
    let wiped = wipe(dev.as_ref(), &stale)?;
    Ok(ConvertReport {
        from_version: 1,
        to_version: 2,
        keyslots: plan.moves,
        wiped_bytes: wiped,
        data_offset: v1.payload_offset(),
    })
}

fn open_v1(dev: &Arc<dyn BlockDriver>, detached: bool, limits: &KdfLimits) -> Result<Luks1Volume> {
    match super::probe_version(dev.as_ref())? {
        1 => Luks1Volume::open(dev.clone(), detached, &kdf_limits_v1(limits)),
        2 => Err(refuse(
            "LUKS2",
            "the device is already LUKS2 (there is nothing to convert)",
        )),
        v => bail!(Unsupported, "unsupported LUKS version {v}"),
    }
}

/// cryptsetup's preconditions, then our placement and the new header.
fn plan_luks2(v1: &Luks1Volume) -> Result<L2Plan> {
    let h = v1.header();
    let dev = v1.device();
    let to = "LUKS2";
    let luks1_size = h.header_area_end().div_ceil(AREA_ALIGN) * AREA_ALIGN;
    check_no_luksmeta(dev.as_ref(), luks1_size)?;
    // The data offset, or for a detached header without one, the header file's size.
    let max_size = match v1.payload_offset() {
        0 => dev.size(),
        p => p,
    };
    // cryptsetup's rule: the LUKS1 key-material block shifted behind two 16 KiB headers
    // must end before the data, i.e. the LUKS2 keyslots area holds 8 LUKS1-sized slots.
    let slot_area = h.material_len(0).div_ceil(AREA_ALIGN) * AREA_ALIGN;
    let need = 2 * CONVERT_HDR_SIZE + NUM_KEYSLOTS as u64 * slot_area;
    if max_size < need {
        return Err(refuse(
            to,
            format!(
                "not enough room before the data: LUKS2 needs two {} KiB headers and a                  keyslots area for {NUM_KEYSLOTS} key slots of {slot_area} bytes ({need} bytes), \
                 but the data starts at {max_size} (cryptsetup refuses this layout too, with \
                 \"invalid metadata\"; QEMU packs the data right after the last key slot)",
                CONVERT_HDR_SIZE >> 10
            ),
        ));
    }
    let keyslots_size =
        ((max_size - 2 * CONVERT_HDR_SIZE) / AREA_ALIGN * AREA_ALIGN).min(MAX_KEYSLOTS_SIZE);
    let area_end = 2 * CONVERT_HDR_SIZE + keyslots_size;
    let active: Vec<usize> = (0..NUM_KEYSLOTS)
        .filter(|&i| h.keyslots[i].is_enabled())
        .collect();
    ensure!(
        !active.is_empty(),
        Unsupported,
        "cannot convert to LUKS2: the LUKS1 header has no active key slot"
    );
    let (moves, lens) = place_luks2_areas(h, &active, area_end)?;
    let header = build_luks2_header(v1, &moves, &lens, keyslots_size)?;
    Ok(L2Plan {
        header,
        moves,
        lens,
    })
}

fn check_no_luksmeta(dev: &dyn BlockDriver, at: u64) -> Result<()> {
    let mut buf = [0u8; 8];
    if dev.size() >= at + 8 && dev.read_at(&mut buf, at).is_ok() && &buf == LUKSMETA_MAGIC {
        return Err(refuse(
            "LUKS2",
            format!("the device has LUKSMETA metadata (luksmeta) at byte {at}; remove it first"),
        ));
    }
    Ok(())
}

/// Keep material that already sits at a legal LUKS2 area; move the rest to free space
/// that overlaps no active LUKS1 material.
fn place_luks2_areas(
    h: &Luks1Header,
    active: &[usize],
    area_end: u64,
) -> Result<(Vec<SlotMove>, Vec<u64>)> {
    let start = 2 * CONVERT_HDR_SIZE;
    let span = |i: usize| {
        let o = h.keyslots[i].material_offset_bytes();
        (o, o + h.material_len(i))
    };
    let area_len = |i: usize| h.material_len(i).div_ceil(AREA_ALIGN) * AREA_ALIGN;
    let moves_for = |offs: &[u64]| -> Vec<SlotMove> {
        active
            .iter()
            .zip(offs)
            .map(|(&i, &o)| SlotMove {
                slot: i as u32,
                old_offset: span(i).0,
                new_offset: o,
            })
            .collect()
    };
    let lens: Vec<u64> = active.iter().map(|&i| h.material_len(i)).collect();
    // cryptsetup's grid (its LUKS1 layout shifted behind the headers), so that
    // `cryptsetup convert --type luks1` can take the result back.
    let a = area_len(active[0]);
    let current: Vec<u64> = active.iter().map(|&i| span(i).0).collect();
    let grid = grid_assign(start, a, (area_end - start) / a, &current, |pos, j| {
        let cell = (pos, pos + a);
        active
            .iter()
            .enumerate()
            .all(|(x, &i)| (pos == current[j] && x == j) || !overlaps(cell, span(i)))
    });
    if let Some((offs, _)) = grid {
        return Ok((moves_for(&offs), lens));
    }
    // Otherwise: keep what may stay, first-fit the rest.
    let mut used: Vec<Span> = active.iter().map(|&i| span(i)).collect();
    let mut new_off = [None; NUM_KEYSLOTS];
    for &i in active {
        let (o, _) = span(i);
        let area = (o, o + area_len(i));
        let clear = active
            .iter()
            .filter(|&&j| j != i)
            .all(|&j| !overlaps(area, span(j)));
        if o >= start && o.is_multiple_of(AREA_ALIGN) && area.1 <= area_end && clear {
            new_off[i] = Some(o);
            used.push(area);
        }
    }
    for &i in active {
        if new_off[i].is_some() {
            continue;
        }
        let Some(o) = first_fit(start, area_end, area_len(i), AREA_ALIGN, &used) else {
            return Err(refuse(
                "LUKS2",
                format!(
                    "no room to move the key material of LUKS1 slot {i} ({} bytes) into the \
                     LUKS2 keyslots area [{start}, {area_end}) without overwriting key \
                     material in use (a crash-safe conversion never does that); remove a \
                     key slot (luksKillSlot) and try again",
                    area_len(i)
                ),
            ));
        };
        new_off[i] = Some(o);
        used.push((o, o + area_len(i)));
    }
    let offs: Vec<u64> = active.iter().map(|&i| new_off[i].unwrap_or(0)).collect();
    Ok((moves_for(&offs), lens))
}

fn build_luks2_header(
    v1: &Luks1Volume,
    moves: &[SlotMove],
    lens: &[u64],
    keyslots_size: u64,
) -> Result<Luks2Header> {
    let h = v1.header();
    let enc = v1.spec().luks2_encryption();
    let mut keyslots = serde_json::Map::new();
    for (m, len) in moves.iter().zip(lens) {
        let ks = &h.keyslots[m.slot as usize];
        let l2 = Luks2Keyslot {
            key_size: h.key_bytes,
            af_stripes: ks.stripes,
            af_hash: h.hash_spec.clone(),
            area_offset: m.new_offset,
            area_size: len.div_ceil(AREA_ALIGN) * AREA_ALIGN,
            area_encryption: enc.clone(),
            area_key_size: h.key_bytes,
            kdf: Kdf::Pbkdf2 {
                hash: h.hash_spec.clone(),
                iterations: ks.iterations,
                salt: ks.salt.to_vec(),
            },
            priority: Priority::Normal,
        };
        keyslots.insert(m.slot.to_string(), l2.to_json());
    }
    let digest = Digest {
        id: 0,
        kind: "pbkdf2".into(),
        keyslots: moves.iter().map(|m| m.slot).collect(),
        segments: vec![0],
        hash: h.hash_spec.clone(),
        iterations: h.mk_digest_iter,
        salt: h.mk_digest_salt.to_vec(),
        digest: h.mk_digest.to_vec(),
    };
    let metadata = Metadata::from_value(json!({
        "keyslots": keyslots,
        "tokens": {},
        "segments": { "0": {
            "type": "crypt", "offset": v1.payload_offset().to_string(), "size": "dynamic",
            "iv_tweak": "0", "encryption": enc, "sector_size": 512 } },
        "digests": { "0": digest.to_json() },
        "config": {
            "json_size": (CONVERT_HDR_SIZE - BIN_HEADER_SIZE as u64).to_string(),
            "keyslots_size": keyslots_size.to_string() },
    }))?;
    let mut salts = [[0u8; 64]; 2];
    for s in &mut salts {
        random::fill(s)?;
    }
    Ok(Luks2Header {
        binary: BinaryHeader {
            copy: HeaderCopy::Primary,
            version: 2,
            hdr_size: CONVERT_HDR_SIZE,
            seqid: 1,
            label: String::new(),
            checksum_alg: "sha256".into(),
            salt: salts[0],
            uuid: h.uuid.clone(),
            subsystem: String::new(),
            hdr_offset: 0,
            csum: [0; 64],
        },
        primary_salt: salts[0],
        secondary_salt: salts[1],
        metadata,
    })
}

/// Load the planned LUKS2 header through the real loader, as the device will look after
/// the conversion, before writing anything.
fn check_luks2_result(
    dev: &dyn BlockDriver,
    primary: &[u8],
    secondary: &[u8],
    plan: &L2Plan,
) -> Result<()> {
    let size = dev.size();
    let mut image_head = primary.to_vec();
    image_head.extend_from_slice(secondary);
    let read = |off: u64, len: usize| -> Result<Vec<u8>> {
        let n = (len as u64).min(size.saturating_sub(off)) as usize;
        let mut buf = vec![0u8; n];
        if n > 0 {
            dev.read_at(&mut buf, off)?;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let at = off + i as u64;
            if let Some(&h) = image_head.get(at as usize) {
                *b = h;
            }
        }
        Ok(buf)
    };
    let loaded = luks2::load_with(
        read,
        &header_hasher,
        LoadOptions {
            device_size: Some(size),
        },
    )
    .ctx("the converted LUKS2 header would not load (nothing was written)")?;
    ensure!(
        loaded.header.metadata == plan.header.metadata,
        Internal,
        "the converted LUKS2 header does not read back as written (nothing was written)"
    );
    let end = plan
        .moves
        .iter()
        .zip(&plan.lens)
        .map(|(m, l)| m.new_offset + l)
        .max()
        .unwrap_or(0);
    ensure!(
        end <= size,
        Corrupt,
        "cannot convert to LUKS2: the header device ({size} bytes) is too small for the \
         keyslot areas (up to {end})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// LUKS2 -> LUKS1
// ---------------------------------------------------------------------------------------

/// One LUKS2 keyslot that becomes a LUKS1 slot.
struct V1Slot {
    id: u32,
    ks: Luks2Keyslot,
}

/// Convert the LUKS2 header on `dev` to LUKS1 in place (see the module doc for the
/// write order). `detached`: `dev` is a detached header file.
pub fn luks2_to_luks1(
    dev: Arc<dyn BlockDriver>,
    detached: bool,
    limits: &KdfLimits,
) -> Result<ConvertReport> {
    let v2 = open_v2(&dev, detached, limits)?;
    ensure_writable(dev.as_ref())?;
    let slots = check_luks1_compatible(&v2)?;
    let offsets = place_luks1_slots(&v2, &slots)?;
    let header = build_luks1_header(&v2, &slots, &offsets)?;
    let bytes = header.encode();
    // Validate exactly what will be read back (cryptsetup's LUKS1 checks).
    Luks1Header::decode(&bytes)?
        .validate(dev.size(), detached, &kdf_limits_v1(limits))
        .ctx("the converted LUKS1 header would not be valid (nothing was written)")?;
    CipherSpec::from_luks(
        &header.cipher_name,
        &header.cipher_mode,
        header.key_bytes as usize,
    )?;
    let len = material_len(header.key_bytes, STRIPES);
    let moves: Vec<SlotMove> = slots
        .iter()
        .map(|s| SlotMove {
            slot: s.id,
            old_offset: s.ks.area_offset,
            new_offset: offsets[s.id as usize],
        })
        .collect();

    // (1) copy material that moves into free space; LUKS2 stays valid.
    for m in moves.iter().filter(|m| m.moved()) {
        let mut buf = SecretBytes::zeroed(len as usize);
        dev.read_at(buf.as_mut(), m.old_offset)
            .with_ctx(|| format!("reading LUKS2 keyslot {}", m.slot))?;
        write_flush(
            dev.as_ref(),
            buf.as_bytes(),
            m.new_offset,
            &format!("key material of keyslot {} to its LUKS1 place", m.slot),
        )?;
    }
    // (2) the switch: version 1 at offset 0.
    write_flush(dev.as_ref(), &bytes, 0, "the LUKS1 header")?;
    // (3) zero what is left of both LUKS2 header copies.
    let hdr_size = v2.header().hdr_size();
    let rest = vec![0u8; (2 * hdr_size) as usize - HEADER_SIZE];
    write_flush(
        dev.as_ref(),
        &rest,
        HEADER_SIZE as u64,
        "zeros over the old LUKS2 headers",
    )?;
    // (4) wipe the old areas of moved material.
    let keep: Vec<Span> = moves
        .iter()
        .map(|m| (m.new_offset, m.new_offset + len))
        .collect();
    let mut stale = Vec::new();
    for (m, s) in moves.iter().zip(&slots) {
        if m.moved() {
            stale.extend(subtract(
                (m.old_offset, m.old_offset + s.ks.area_size),
                &keep,
            ));
        }
    }
    let wiped = wipe(dev.as_ref(), &stale)?;
    Ok(ConvertReport {
        from_version: 2,
        to_version: 1,
        keyslots: moves,
        wiped_bytes: rest.len() as u64 + wiped,
        data_offset: header.payload_offset_bytes(),
    })
}

fn open_v2(dev: &Arc<dyn BlockDriver>, detached: bool, limits: &KdfLimits) -> Result<Luks2Volume> {
    let to = "LUKS1";
    match super::probe_version(dev.as_ref())? {
        1 => return Err(refuse(to, "the device is already LUKS1")),
        2 => {}
        v => bail!(Unsupported, "unsupported LUKS version {v}"),
    }
    let v2 = Luks2Volume::open(dev.clone(), detached, limits)?;
    if v2.needs_repair() {
        return Err(refuse(
            to,
            "a LUKS2 header copy is damaged or outdated; repair the header first \
             (vmcrypt luks repair / cryptsetup repair)",
        ));
    }
    Ok(v2)
}

/// cryptsetup's LUKS1 compatibility rules; returns the keyslots by id.
fn check_luks1_compatible(v2: &Luks2Volume) -> Result<Vec<V1Slot>> {
    let to = "LUKS1";
    let md = &v2.header().metadata;
    let req = v2.requirements()?;
    if req.reencryption_in_progress() {
        return Err(refuse(
            to,
            format!(
                "LUKS2 reencryption is in progress ({})",
                req.reencryption.join(", ")
            ),
        ));
    }
    if req.read_only() {
        return Err(refuse(
            to,
            format!(
                "the header has LUKS2 requirements LUKS1 cannot express ({})",
                req.mandatory.join(", ")
            ),
        ));
    }
    let tokens = md.tokens()?;
    if !tokens.is_empty() {
        return Err(refuse(
            to,
            format!("the LUKS2 header contains {} token(s)", tokens.len()),
        ));
    }
    let segs = md.segments()?;
    if segs.len() != 1 {
        return Err(refuse(
            to,
            format!(
                "the header has {} data segments (LUKS1 has exactly one)",
                segs.len()
            ),
        ));
    }
    let seg = &segs[0];
    check_segment(seg)?;
    let digests = md.digests().map_err(|e| {
        if e.kind() == ErrorKind::Unsupported {
            refuse(to, "key slot digests are not LUKS1 compatible").with_source(e)
        } else {
            e
        }
    })?;
    if digests.len() != 1 {
        return Err(refuse(
            to,
            format!(
                "the header has {} digests; LUKS1 has one master-key digest (a key slot \
                 not bound to the data segment, e.g. an --unbound key, cannot be converted)",
                digests.len()
            ),
        ));
    }
    let digest = &digests[0];
    let mut slots = Vec::new();
    for k in md.keyslots()? {
        let ks = match k.kind {
            KeyslotKind::Luks2(l) => l,
            KeyslotKind::Reencrypt { .. } => {
                return Err(refuse(
                    to,
                    format!("keyslot {} holds reencryption metadata", k.id),
                ));
            }
            KeyslotKind::Unknown(t) => {
                return Err(refuse(
                    to,
                    format!("keyslot {} has type \"{t}\" (not luks2)", k.id),
                ));
            }
        };
        slots.push(V1Slot { id: k.id, ks });
    }
    ensure!(
        !slots.is_empty(),
        Unsupported,
        "cannot convert to LUKS1: the header has no keyslot"
    );
    let key_size = slots[0].ks.key_size;
    let hash = match &slots[0].ks.kdf {
        Kdf::Pbkdf2 { hash, .. } => hash.clone(),
        Kdf::Argon2 { .. } => String::new(),
    };
    for s in &slots {
        check_keyslot(s, key_size, &hash, seg, digest)?;
    }
    check_digest(digest, &hash, seg.id)?;
    Ok(slots)
}

fn check_segment(seg: &luks2::Segment) -> Result<()> {
    let to = "LUKS1";
    let bad = |why: String| Err(refuse(to, why));
    if seg.kind != "crypt" {
        return bad(format!(
            "data segment {} has type \"{}\" (not crypt)",
            seg.id, seg.kind
        ));
    }
    if seg.sector_size != 512 {
        return bad(format!(
            "the data segment uses {}-byte sectors; LUKS1 encrypts 512-byte sectors only",
            seg.sector_size
        ));
    }
    if seg.size != SegmentSize::Dynamic {
        return bad(
            "the data segment has a fixed size; LUKS1 data always runs to the end of \
                    the device"
                .into(),
        );
    }
    if seg.iv_tweak != 0 {
        return bad(format!(
            "the data segment has iv_tweak {}; LUKS1 IVs start at 0",
            seg.iv_tweak
        ));
    }
    if let Some(i) = &seg.integrity {
        return bad(format!("the data segment uses integrity protection ({i})"));
    }
    if !seg.flags.is_empty() {
        return bad(format!(
            "the data segment has flags ({})",
            seg.flags.join(", ")
        ));
    }
    if !seg.offset.is_multiple_of(512) || seg.offset / 512 > u64::from(u32::MAX) {
        return bad(format!(
            "data offset {} is not expressible in LUKS1 (a 32-bit count of 512-byte sectors)",
            seg.offset
        ));
    }
    Ok(())
}

fn check_keyslot(
    s: &V1Slot,
    key_size: u32,
    hash: &str,
    seg: &luks2::Segment,
    digest: &Digest,
) -> Result<()> {
    let to = "LUKS1";
    let id = s.id;
    let ks = &s.ks;
    let bad = |why: String| Err(refuse(to, format!("keyslot {id} {why}")));
    if id as usize >= NUM_KEYSLOTS {
        return bad(format!(
            "is active, but LUKS1 has only slots 0-{} (move the key first)",
            NUM_KEYSLOTS - 1
        ));
    }
    let Kdf::Pbkdf2 {
        hash: kh,
        salt,
        iterations,
    } = &ks.kdf
    else {
        return bad(format!(
            "uses {:?}; LUKS1 supports only PBKDF2 (convert the key first with \
             luksConvertKey --pbkdf pbkdf2)",
            ks.kdf
        ));
    };
    if kh != hash {
        return bad(format!(
            "uses PBKDF2 hash {kh}, another keyslot uses {hash}; LUKS1 has one hash"
        ));
    }
    if ks.af_hash != *kh {
        return bad(format!(
            "has AF hash {} different from its PBKDF2 hash {kh}",
            ks.af_hash
        ));
    }
    if HashAlg::from_name(kh).is_err() || kh.len() >= 32 {
        return bad(format!("uses a hash ({kh}) LUKS1 cannot name"));
    }
    if ks.af_stripes != STRIPES {
        return bad(format!(
            "has {} AF stripes (LUKS1 needs {STRIPES})",
            ks.af_stripes
        ));
    }
    if ks.key_size != key_size || ks.area_key_size != key_size {
        return bad(format!(
            "stores a {}-byte key with a {}-byte area key; LUKS1 needs the volume key size \
             {key_size} for both",
            ks.key_size, ks.area_key_size
        ));
    }
    if ks.area_encryption != seg.encryption {
        return bad(format!(
            "area encryption {} differs from the data cipher {}; LUKS1 uses one cipher",
            ks.area_encryption, seg.encryption
        ));
    }
    let want = material_len(key_size, STRIPES).div_ceil(AREA_ALIGN) * AREA_ALIGN;
    if ks.area_size != want {
        return bad(format!(
            "has a {}-byte area; LUKS1 compatible areas are {want} bytes",
            ks.area_size
        ));
    }
    if !ks.area_offset.is_multiple_of(512) || ks.area_offset / 512 > u64::from(u32::MAX) {
        return bad(format!(
            "area offset {} is not a LUKS1 sector offset",
            ks.area_offset
        ));
    }
    if salt.len() != SALT_LEN || *iterations == 0 {
        return bad(format!(
            "has a {}-byte salt / {iterations} iterations (LUKS1: {SALT_LEN}-byte salt)",
            salt.len()
        ));
    }
    if !digest.keyslots.contains(&id) {
        return bad("is not bound to the volume key digest (an unbound key)".into());
    }
    // LUKS1 has no priorities; cryptsetup drops them silently, as we do.
    Ok(())
}

fn check_digest(d: &Digest, hash: &str, seg: u32) -> Result<()> {
    let to = "LUKS1";
    if d.hash != hash {
        return Err(refuse(
            to,
            format!(
                "the volume key digest uses hash {}, the keyslots {hash}; LUKS1 has one hash",
                d.hash
            ),
        ));
    }
    if !d.segments.contains(&seg) {
        return Err(refuse(
            to,
            "the volume key digest is not bound to the data segment",
        ));
    }
    if d.digest.len() < DIGEST_LEN || d.salt.len() != SALT_LEN || d.iterations == 0 {
        return Err(refuse(
            to,
            format!(
                "the volume key digest ({} bytes, {}-byte salt, {} iterations) does not fit \
                 LUKS1 (at least {DIGEST_LEN} bytes, {SALT_LEN}-byte salt)",
                d.digest.len(),
                d.salt.len(),
                d.iterations
            ),
        ));
    }
    Ok(())
}

fn build_luks1_header(
    v2: &Luks2Volume,
    slots: &[V1Slot],
    offsets: &[u64; NUM_KEYSLOTS],
) -> Result<Luks1Header> {
    let hdr = v2.header();
    let md = &hdr.metadata;
    let seg = &md.segments()?[0];
    let digest = &md.digests()?[0];
    let key_size = slots[0].ks.key_size;
    let (cipher_name, cipher_mode) = seg
        .encryption
        .split_once('-')
        .ok_or_else(|| refuse("LUKS1", format!("cipher {} has no mode", seg.encryption)))?;
    ensure!(
        cipher_name.len() < 32 && cipher_mode.len() < 32,
        Unsupported,
        "cannot convert to LUKS1: cipher {} is too long for the LUKS1 header",
        seg.encryption
    );
    CipherSpec::from_luks(cipher_name, cipher_mode, key_size as usize)
        .map_err(|e| refuse("LUKS1", format!("cipher {}: {e}", seg.encryption)))?;
    let Kdf::Pbkdf2 { hash, .. } = &slots[0].ks.kdf else {
        bail!(Internal, "keyslot checks let a non-PBKDF2 slot through");
    };
    let payload = (seg.offset / 512) as u32;
    let offsets: [u32; NUM_KEYSLOTS] = std::array::from_fn(|i| (offsets[i] / 512) as u32);
    let mut mk_digest = [0u8; DIGEST_LEN];
    mk_digest.copy_from_slice(&digest.digest[..DIGEST_LEN]);
    let mut mk_digest_salt = [0u8; SALT_LEN];
    mk_digest_salt.copy_from_slice(&digest.salt);
    let keyslots =
        std::array::from_fn(
            |i| match slots.iter().find(|s| s.id as usize == i).map(|s| &s.ks) {
                Some(Luks2Keyslot {
                    kdf:
                        Kdf::Pbkdf2 {
                            iterations, salt, ..
                        },
                    ..
                }) => {
                    let mut s = [0u8; SALT_LEN];
                    s.copy_from_slice(salt);
                    Keyslot {
                        active: KEY_ENABLED,
                        iterations: *iterations,
                        salt: s,
                        key_material_offset: offsets[i],
                        stripes: STRIPES,
                    }
                }
                _ => Keyslot::disabled(offsets[i]),
            },
        );
    Ok(Luks1Header {
        version: 1,
        cipher_name: cipher_name.into(),
        cipher_mode: cipher_mode.into(),
        hash_spec: hash.clone(),
        payload_offset: payload,
        key_bytes: key_size,
        mk_digest,
        mk_digest_salt,
        mk_digest_iter: digest.iterations,
        uuid: hdr.binary.uuid.clone(),
        keyslots,
    })
}

/// LUKS1 key-material offsets (bytes) for all eight slots. First choice: cryptsetup's
/// LUKS1 layout (slot cells `4096 + k * area`), active slots moved into cells that
/// overlap no LUKS2 area in use and neither header copy, so `cryptsetup convert` can
/// take the result back to LUKS2. Otherwise every active slot keeps its LUKS2 area (no
/// copy at all). Disabled slots get placeholder cells (never written).
fn place_luks1_slots(v2: &Luks2Volume, slots: &[V1Slot]) -> Result<[u64; NUM_KEYSLOTS]> {
    let dev_size = v2.device().size();
    let data_offset = v2.header().metadata.segments()?[0].offset;
    let limit = match data_offset {
        0 => dev_size,
        d => d.min(dev_size),
    };
    let key_size = slots[0].ks.key_size;
    let len = material_len(key_size, STRIPES);
    let area = len.div_ceil(AREA_ALIGN) * AREA_ALIGN;
    let hdr_end = 2 * v2.header().hdr_size();
    let areas: Vec<Span> = slots
        .iter()
        .map(|s| (s.ks.area_offset, s.ks.area_offset + s.ks.area_size))
        .collect();
    let cells = limit
        .checked_sub(LUKS1_FIRST_MATERIAL + len)
        .map_or(0, |r| r / area + 1);
    let current: Vec<u64> = slots.iter().map(|s| s.ks.area_offset).collect();
    let grid = (cells >= NUM_KEYSLOTS as u64)
        .then(|| {
            grid_assign(LUKS1_FIRST_MATERIAL, area, cells, &current, |pos, j| {
                pos == current[j]
                    || (pos >= hdr_end && areas.iter().all(|a| !overlaps(*a, (pos, pos + len))))
            })
        })
        .flatten();
    let mut out = [0u64; NUM_KEYSLOTS];
    let inactive = (0..NUM_KEYSLOTS).filter(|&i| !slots.iter().any(|s| s.id as usize == i));
    if let Some((offs, taken)) = grid {
        for (s, o) in slots.iter().zip(offs) {
            out[s.id as usize] = o;
        }
        let mut free = (0..cells).filter(|&k| !taken[k as usize]);
        for i in inactive {
            // cells >= 8 and each active slot takes one, so a cell is left for each.
            let k = free.next().unwrap_or(0);
            out[i] = LUKS1_FIRST_MATERIAL + k * area;
        }
        return Ok(out);
    }
    let mut used = areas.clone();
    for s in slots {
        out[s.id as usize] = s.ks.area_offset;
    }
    for i in inactive {
        let at = first_fit(LUKS1_FIRST_MATERIAL, limit, len, AREA_ALIGN, &used)
            .or_else(|| first_fit(LUKS1_FIRST_MATERIAL, limit, len, 512, &used))
            .ok_or_else(|| {
                refuse(
                    "LUKS1",
                    format!(
                        "not enough room before the data (at {limit}) for the LUKS1 key \
                         slot areas: LUKS1 reserves {len} bytes for each of its \
                         {NUM_KEYSLOTS} slots, and there is no free place for slot {i}"
                    ),
                )
            })?;
        used.push((at, at + len));
        out[i] = at;
    }
    Ok(out)
}

/// Convert whichever version `dev` holds to the other one.
pub fn convert_to(
    dev: Arc<dyn BlockDriver>,
    version: u16,
    detached: bool,
    limits: &KdfLimits,
) -> Result<ConvertReport> {
    match version {
        1 => luks2_to_luks1(dev, detached, limits),
        2 => luks1_to_luks2(dev, detached, limits),
        v => bail!(Usage, "cannot convert to LUKS version {v} (1 or 2)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_skips_used_ranges() {
        let used = [(4096, 8192), (12288, 20000)];
        assert_eq!(first_fit(0, 100_000, 4096, 4096, &used), Some(0));
        assert_eq!(first_fit(4096, 100_000, 4096, 4096, &used), Some(8192));
        assert_eq!(first_fit(4096, 100_000, 8192, 4096, &used), Some(20480));
        assert_eq!(first_fit(4096, 20000, 8192, 4096, &used), None);
    }

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(
            subtract((0, 100), &[(10, 20), (50, 200)]),
            vec![(0, 10), (20, 50)]
        );
        assert_eq!(subtract((0, 100), &[(0, 100)]), Vec::<Span>::new());
        assert_eq!(subtract((0, 100), &[(200, 300)]), vec![(0, 100)]);
    }
}
