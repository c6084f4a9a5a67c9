//! Validation of LUKS2 JSON metadata, following the checks cryptsetup applies when it
//! loads a header (same order, same rules), plus the one repair it attempts.
//!
//! Order: tokens, digests, segments, generic keyslot fields, config, keyslot areas, JSON
//! size, then per-type keyslot checks (`luks2`, `reencrypt`; unknown keyslot types are
//! kept but only their generic fields and area are checked). Every error names the
//! section, id and field at fault.
use serde_json::Value;
use vmcrypt_error::{Error, Result, bail, ensure};

use super::jsonutil::{
    Obj, as_obj, field, get_arr, get_int, get_obj, get_str, get_u32, get_u64_str, is_int, parse_id,
    parse_u64, str_array,
};
use super::{
    BIN_HEADER_SIZE, DIGESTS_MAX, KEYSLOTS_MAX, MAX_KEYSLOTS_SIZE, SEGMENTS_MAX, TOKENS_MAX,
    is_legal_hdr_size,
};

/// Validate the whole metadata object for a header whose JSON area is `json_area_len`
/// bytes long.
pub fn validate(root: &Obj, json_area_len: u64) -> Result<()> {
    check_tokens(root)?;
    check_digests(root)?;
    check_segments(root)?;
    check_keyslots_generic(root)?;
    check_config(root)?;
    check_areas(root)?;
    check_json_size(root, json_area_len)?;
    check_keyslot_types(root)
}

/// The fix cryptsetup applies before a second validation attempt: drop parameters that
/// do not belong to a `luks2` keyslot's KDF type (left over from a KDF change).
/// Returns true if anything was removed.
pub fn repair(root: &mut Obj) -> bool {
    let Some(Value::Object(keyslots)) = root.get_mut("keyslots") else {
        return false;
    };
    let mut changed = false;
    for ks in keyslots.values_mut() {
        let Some(Value::Object(kdf)) = ks.get_mut("kdf") else {
            continue;
        };
        let allowed: &[&str] = match kdf.get("type").and_then(Value::as_str) {
            Some("pbkdf2") => &["type", "salt", "hash", "iterations"],
            Some("argon2i" | "argon2id") => &["type", "salt", "time", "memory", "cpus"],
            _ => continue,
        };
        let before = kdf.len();
        kdf.retain(|k, _| allowed.contains(&k.as_str()));
        changed |= kdf.len() != before;
    }
    changed
}

fn section<'a>(root: &'a Obj, name: &str) -> Result<&'a Obj> {
    let v = root
        .get(name)
        .ok_or_else(|| Error::corrupt(format!("LUKS2 metadata: missing {name} section")))?;
    as_obj(v, &format!("{name} section"))
}

/// Every element of `arr` is a string naming an object in `target`.
fn check_refs(arr: &[Value], target: &Obj, what: &str, target_name: &str) -> Result<()> {
    for (i, s) in str_array(arr, what)?.into_iter().enumerate() {
        ensure!(
            target.get(s).is_some_and(Value::is_object),
            Corrupt,
            "LUKS2 metadata: {what} element {i} references missing {target_name} \"{s}\""
        );
    }
    Ok(())
}

fn check_tokens(root: &Obj) -> Result<()> {
    let tokens = section(root, "tokens")?;
    let keyslots = section(root, "keyslots")?;
    for (key, val) in tokens {
        parse_id(key, "token", TOKENS_MAX)?;
        let what = format!("token {key}");
        let t = as_obj(val, &what)?;
        get_str(t, "type", &what)?;
        let arr = get_arr(t, "keyslots", &what)?;
        check_refs(arr, keyslots, &format!("{what} keyslots"), "keyslot")?;
    }
    Ok(())
}

fn check_digests(root: &Obj) -> Result<()> {
    let digests = section(root, "digests")?;
    let keyslots = section(root, "keyslots")?;
    let segments = section(root, "segments")?;
    for (key, val) in digests {
        parse_id(key, "digest", DIGESTS_MAX)?;
        let what = format!("digest {key}");
        let d = as_obj(val, &what)?;
        get_str(d, "type", &what)?;
        let ks = get_arr(d, "keyslots", &what)?;
        let segs = get_arr(d, "segments", &what)?;
        check_refs(ks, keyslots, &format!("{what} keyslots"), "keyslot")?;
        check_refs(segs, segments, &format!("{what} segments"), "segment")?;
    }
    Ok(())
}

/// True if the segment carries a flag starting with "backup-".
pub fn segment_is_backup(seg: &Obj) -> bool {
    seg.get("flags").and_then(Value::as_array).is_some_and(|f| {
        f.iter()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with("backup-")))
    })
}

fn segment_has_digest(id: &str, digests: &Obj) -> bool {
    digests.values().any(|d| {
        d.get("segments")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(id)))
    })
}

/// Offset and size ("dynamic" = 0) of one segment, checked.
fn segment_bounds(s: &Obj, what: &str) -> Result<(u64, u64)> {
    get_str(s, "type", what)?;
    let offset = get_u64_str(s, "offset", what)?;
    let size_text = get_str(s, "size", what)?;
    let size = if size_text == "dynamic" {
        0
    } else {
        let n = parse_u64(size_text, &format!("{what} \"size\""))?;
        ensure!(n != 0, Corrupt, "LUKS2 metadata: {what} has size 0");
        n
    };
    ensure!(
        offset % 512 == 0,
        Corrupt,
        "LUKS2 metadata: {what} offset {offset} is not aligned to 512 bytes"
    );
    ensure!(
        size % 512 == 0,
        Corrupt,
        "LUKS2 metadata: {what} size {size} is not aligned to 512 bytes"
    );
    if s.contains_key("flags") {
        str_array(get_arr(s, "flags", what)?, &format!("{what} flags"))?;
    }
    Ok((offset, size))
}

fn check_crypt_segment(s: &Obj, key: &str, size: u64, digests: &Obj) -> Result<()> {
    let what = format!("segment {key}");
    let iv = get_str(s, "iv_tweak", &what)?;
    let enc = get_str(s, "encryption", &what)?;
    ensure!(
        !enc.is_empty(),
        Corrupt,
        "LUKS2 metadata: {what} has an empty \"encryption\""
    );
    let sector = get_u32(s, "sector_size", &what)?;
    if s.contains_key("integrity") {
        let integ = get_obj(s, "integrity", &what)?;
        let iw = format!("{what} integrity");
        for k in ["type", "journal_encryption", "journal_integrity"] {
            get_str(integ, k, &iw)?;
        }
    }
    ensure!(
        sector != 0 && sector % 512 == 0,
        Corrupt,
        "LUKS2 metadata: {what} has illegal sector_size {sector}"
    );
    parse_u64(iv, &format!("{what} \"iv_tweak\""))?;
    ensure!(
        size.is_multiple_of(u64::from(sector)),
        Corrupt,
        "LUKS2 metadata: {what} size {size} is not a multiple of its sector size {sector}"
    );
    ensure!(
        segment_has_digest(key, digests),
        Corrupt,
        "LUKS2 metadata: {what} is not referenced by any digest"
    );
    Ok(())
}

fn check_segments(root: &Obj) -> Result<()> {
    let segments = section(root, "segments")?;
    ensure!(
        !segments.is_empty(),
        Corrupt,
        "LUKS2 metadata: empty segments section"
    );
    let digests = section(root, "digests")?;
    let mut first_backup: Option<u32> = None;
    for (key, val) in segments {
        let id = parse_id(key, "segment", SEGMENTS_MAX)?;
        let what = format!("segment {key}");
        let s = as_obj(val, &what)?;
        let (_, size) = segment_bounds(s, &what)?;
        if segment_is_backup(s) {
            first_backup = Some(first_backup.map_or(id, |b| b.min(id)));
        } else if let Some(b) = first_backup.filter(|&b| id >= b) {
            bail!(
                Corrupt,
                "LUKS2 metadata: regular segment {id} is behind backup segment {b}"
            );
        }
        if get_str(s, "type", &what)? == "crypt" {
            check_crypt_segment(s, key, size, digests)?;
        }
    }
    let count = segments.len() as u32;
    let regular = first_backup.unwrap_or(count);
    ensure!(regular > 0, Corrupt, "LUKS2 metadata: no regular segment");
    let mut intervals = Vec::new();
    for i in 0..regular {
        let s = segments
            .get(&i.to_string())
            .and_then(Value::as_object)
            .ok_or_else(|| Error::corrupt(format!("LUKS2 metadata: gap at segment {i}")))?;
        let (off, size) = segment_bounds(s, &format!("segment {i}"))?;
        intervals.push((off, if size == 0 { None } else { Some(size) }));
    }
    check_segment_intervals(&intervals)?;
    for i in regular..count {
        ensure!(
            segments.contains_key(&i.to_string()),
            Corrupt,
            "LUKS2 metadata: gap at segment {i}"
        );
    }
    Ok(())
}

/// Regular segments: only the last may be dynamic (None), none may overlap.
fn check_segment_intervals(ix: &[(u64, Option<u64>)]) -> Result<()> {
    for (i, &(off_i, len_i)) in ix.iter().enumerate() {
        ensure!(
            len_i.is_some() || i + 1 == ix.len(),
            Corrupt,
            "LUKS2 metadata: only the last regular segment may have a dynamic size (segment {i})"
        );
        for (j, &(off_j, len_j)) in ix.iter().enumerate() {
            let inside = match len_j {
                None => true,
                Some(l) => u128::from(off_i) < u128::from(off_j) + u128::from(l),
            };
            if i != j && off_i >= off_j && inside {
                bail!(Corrupt, "LUKS2 metadata: segments {i} and {j} overlap");
            }
        }
    }
    Ok(())
}

fn check_keyslots_generic(root: &Obj) -> Result<()> {
    let keyslots = section(root, "keyslots")?;
    for (key, val) in keyslots {
        parse_id(key, "keyslot", KEYSLOTS_MAX)?;
        let what = format!("keyslot {key}");
        let k = as_obj(val, &what)?;
        get_str(k, "type", &what)?;
        get_u32(k, "key_size", &what)?;
    }
    Ok(())
}

/// json_size + 4096 (one header copy).
fn metadata_size(config: &Obj) -> Result<u64> {
    get_u64_str(config, "json_size", "config")?
        .checked_add(BIN_HEADER_SIZE as u64)
        .ok_or_else(|| Error::corrupt("LUKS2 metadata: config json_size overflows"))
}

/// Smallest offset of a regular (non-backup) segment; 0 if any is 0.
pub fn min_segment_offset(segments: &Obj) -> u64 {
    let mut min = u64::MAX;
    for s in segments.values().filter_map(Value::as_object) {
        if segment_is_backup(s) {
            continue;
        }
        let off = s
            .get("offset")
            .and_then(Value::as_str)
            .and_then(|t| parse_u64(t, "offset").ok())
            .unwrap_or(0);
        if off == 0 {
            return 0;
        }
        min = min.min(off);
    }
    min
}

fn check_config(root: &Obj) -> Result<()> {
    let config = section(root, "config")?;
    let mda = metadata_size(config)?;
    let keyslots_size = get_u64_str(config, "keyslots_size", "config")?;
    ensure!(
        is_legal_hdr_size(mda),
        Corrupt,
        "LUKS2 metadata: unsupported header size {mda} (config json_size + 4096)"
    );
    ensure!(
        keyslots_size % 4096 == 0 && keyslots_size <= MAX_KEYSLOTS_SIZE,
        Corrupt,
        "LUKS2 metadata: unsupported keyslots_size {keyslots_size} (must be 4 KiB aligned, \
         at most 128 MiB)"
    );
    let seg_off = min_segment_offset(section(root, "segments")?);
    if seg_off != 0 && (seg_off < keyslots_size || seg_off - keyslots_size < 2 * mda) {
        bail!(
            Corrupt,
            "LUKS2 metadata: keyslots_size {keyslots_size} is too large: data offset \
             {seg_off}, keyslots area starts at {}",
            2 * mda
        );
    }
    if config.contains_key("flags") {
        str_array(get_arr(config, "flags", "config")?, "config flags")?;
    }
    if config.contains_key("requirements") {
        let req = get_obj(config, "requirements", "config")?;
        if req.contains_key("mandatory") {
            let arr = get_arr(req, "mandatory", "config requirements")?;
            str_array(arr, "config requirements mandatory")?;
        }
    }
    Ok(())
}

/// (offset, size) of a keyslot's area.
pub fn area_bounds(k: &Obj, what: &str) -> Result<(u64, u64)> {
    let area = get_obj(k, "area", what)?;
    let aw = format!("{what} area");
    get_str(area, "type", &aw)?;
    Ok((
        get_u64_str(area, "offset", &aw)?,
        get_u64_str(area, "size", &aw)?,
    ))
}

fn check_areas(root: &Obj) -> Result<()> {
    let keyslots = section(root, "keyslots")?;
    let config = section(root, "config")?;
    let mda = metadata_size(config)?;
    let ks_size = get_u64_str(config, "keyslots_size", "config")?;
    let start = u128::from(mda) * 2;
    let end = start + u128::from(ks_size);
    let mut areas = Vec::new();
    for (key, val) in keyslots {
        let what = format!("keyslot {key}");
        let (off, size) = area_bounds(as_obj(val, &what)?, &what)?;
        ensure!(
            u128::from(off) >= start,
            Corrupt,
            "LUKS2 metadata: {what} area offset {off} lies inside the header ({start} bytes)"
        );
        ensure!(size > 0, Corrupt, "LUKS2 metadata: {what} area has size 0");
        ensure!(
            u128::from(off) + u128::from(size) <= end,
            Corrupt,
            "LUKS2 metadata: {what} area [{off}, +{size}) overflows the keyslots area \
             (ends at {end})"
        );
        areas.push((key.as_str(), off, size));
    }
    for &(a, off_a, _) in &areas {
        for &(b, off_b, size_b) in &areas {
            if a != b
                && off_a >= off_b
                && u128::from(off_a) < u128::from(off_b) + u128::from(size_b)
            {
                bail!(
                    Corrupt,
                    "LUKS2 metadata: keyslot {a} area overlaps keyslot {b} area"
                );
            }
        }
    }
    Ok(())
}

fn check_json_size(root: &Obj, json_area_len: u64) -> Result<()> {
    let config = section(root, "config")?;
    let declared = get_u64_str(config, "json_size", "config")?;
    ensure!(
        declared == json_area_len,
        Corrupt,
        "LUKS2 metadata: config json_size {declared} does not match the JSON area size \
         {json_area_len} of the binary header"
    );
    let text = serde_json::to_string(root)
        .map_err(|e| Error::internal(format!("cannot serialise LUKS2 JSON: {e}")))?;
    ensure!(
        text.len() as u64 <= json_area_len,
        Corrupt,
        "LUKS2 metadata: JSON ({} bytes) does not fit the {json_area_len}-byte JSON area",
        text.len()
    );
    Ok(())
}

fn check_keyslot_types(root: &Obj) -> Result<()> {
    let keyslots = section(root, "keyslots")?;
    let digests = section(root, "digests")?;
    for (key, val) in keyslots {
        let what = format!("keyslot {key}");
        let k = as_obj(val, &what)?;
        match get_str(k, "type", &what)? {
            "luks2" => {
                check_luks2_keyslot(k, &what)?;
                let n = digests
                    .values()
                    .filter(|d| {
                        d.get("keyslots")
                            .and_then(Value::as_array)
                            .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(key)))
                    })
                    .count();
                ensure!(
                    n == 1,
                    Corrupt,
                    "LUKS2 metadata: {what} is assigned to {n} digests (must be exactly 1)"
                );
            }
            "reencrypt" => check_reencrypt_keyslot(k, &what)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_luks2_keyslot(k: &Obj, what: &str) -> Result<()> {
    let kdf = get_obj(k, "kdf", what)?;
    let af = get_obj(k, "af", what)?;
    let area = get_obj(k, "area", what)?;
    let kw = format!("{what} kdf");
    let kdf_type = get_str(kdf, "type", &kw)?;
    let (count, ints, strs): (usize, &[&str], &[&str]) = match kdf_type {
        "pbkdf2" => (4, &["iterations"], &["hash", "salt"]),
        "argon2i" | "argon2id" => (5, &["time", "memory", "cpus"], &["salt"]),
        _ => (kdf.len(), &[], &[]),
    };
    ensure!(
        kdf.len() == count,
        Corrupt,
        "LUKS2 metadata: {kw} ({kdf_type}) has {} fields, expected {count}",
        kdf.len()
    );
    for f in ints {
        get_int(kdf, f, &kw)?;
    }
    for f in strs {
        get_str(kdf, f, &kw)?;
    }
    let afw = format!("{what} af");
    let af_type = field(af, "type", &afw)?;
    ensure!(
        af_type.as_str() == Some("luks1"),
        Corrupt,
        "LUKS2 metadata: {afw} type {af_type} is not \"luks1\""
    );
    get_str(af, "hash", &afw)?;
    get_int(af, "stripes", &afw)?;
    let aw = format!("{what} area");
    let area_type = field(area, "type", &aw)?;
    ensure!(
        area_type.as_str() == Some("raw"),
        Corrupt,
        "LUKS2 metadata: {aw} type {area_type} is not \"raw\""
    );
    get_str(area, "encryption", &aw)?;
    get_int(area, "key_size", &aw)?;
    get_str(area, "offset", &aw)?;
    get_str(area, "size", &aw)?;
    if let Some(p) = k.get("priority") {
        ensure!(
            is_int(p),
            Corrupt,
            "LUKS2 metadata: {what} priority is not an integer"
        );
    }
    Ok(())
}

fn check_reencrypt_keyslot(k: &Obj, what: &str) -> Result<()> {
    let area = get_obj(k, "area", what)?;
    let aw = format!("{what} area");
    let area_type = get_str(area, "type", &aw)?;
    let mode = get_str(k, "mode", what)?;
    let direction = get_str(k, "direction", what)?;
    ensure!(
        matches!(mode, "reencrypt" | "encrypt" | "decrypt"),
        Corrupt,
        "LUKS2 metadata: {what} has illegal reencryption mode \"{mode}\""
    );
    ensure!(
        matches!(direction, "forward" | "backward"),
        Corrupt,
        "LUKS2 metadata: {what} has illegal reencryption direction \"{direction}\""
    );
    match area_type {
        "checksum" => {
            get_str(area, "hash", &aw)?;
            let s = get_u32(area, "sector_size", &aw)?;
            ensure!(
                s >= 512 && s.is_power_of_two(),
                Corrupt,
                "LUKS2 metadata: {aw} has invalid checksum sector_size {s}"
            );
        }
        "datashift" => {
            let shift = get_u64_str(area, "shift_size", &aw)?;
            ensure!(
                shift != 0 && shift % 512 == 0,
                Corrupt,
                "LUKS2 metadata: {aw} has invalid shift_size {shift}"
            );
        }
        _ => {}
    }
    Ok(())
}
