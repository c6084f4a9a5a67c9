//! LUKS2 -> LUKS1: cryptsetup's compatibility rules, slot placement and the new header;
//! the write order is described in the parent module.
use super::{
    AREA_ALIGN, ConvertReport, LUKS1_FIRST_MATERIAL, SlotMove, Span, ensure_writable, first_fit,
    grid_assign, overlaps, refuse, subtract, wipe, write_flush,
};
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::{Luks2Volume, material_len};
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::{ErrorKind, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{
    DIGEST_LEN, HEADER_SIZE, KEY_ENABLED, Keyslot, Luks1Header, NUM_KEYSLOTS, SALT_LEN, STRIPES,
};
use vmcrypt_format::luks2::{self, Digest, Kdf, KeyslotKind, Luks2Keyslot, SegmentSize};

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
        .validate(
            dev.size(),
            detached,
            &crate::drivers::luks::v1::codec_limits(limits),
        )
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
    match crate::drivers::luks::probe_version(dev.as_ref())? {
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
        Kdf::Argon2 { .. } | Kdf::Unsupported { .. } => String::new(),
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
