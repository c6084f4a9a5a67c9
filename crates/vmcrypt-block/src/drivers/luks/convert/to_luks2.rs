//! LUKS1 -> LUKS2: cryptsetup's preconditions, slot placement and the new header; the
//! write order is described in the parent module.
use super::{
    AREA_ALIGN, CONVERT_HDR_SIZE, ConvertReport, LUKSMETA_MAGIC, SlotMove, Span, ensure_writable,
    first_fit, grid_assign, overlaps, refuse, subtract, wipe, write_flush,
};
use crate::driver::BlockDriver;
use crate::drivers::luks::v1::Luks1Volume;
use crate::drivers::luks::v2::{header_hasher, read_clamped};
use serde_json::json;
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{SecretBytes, random};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{Luks1Header, NUM_KEYSLOTS};
use vmcrypt_format::luks2::{
    self, BIN_HEADER_SIZE, BinaryHeader, Digest, HeaderCopy, Kdf, LoadOptions, Luks2Header,
    Luks2Keyslot, MAX_KEYSLOTS_SIZE, Metadata, Priority,
};

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
    match crate::drivers::luks::probe_version(dev.as_ref())? {
        1 => Luks1Volume::open(dev.clone(), detached, limits),
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
    // The cipher exactly as the LUKS1 header spells it ("aes" + "xts-plain64:sha256"),
    // as cryptsetup carries it over.
    let enc = format!("{}-{}", h.cipher_name, h.cipher_mode);
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
        let mut buf = read_clamped(dev, off, len)?;
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
