//! The metadata of a LUKS2 decryption that moves the data over its header, as
//! cryptsetup 2.6 writes it for `reencrypt --decrypt --header NEW.hdr` on a device
//! whose header is attached: mode `decrypt`, direction `forward`, area type
//! `datashift-checksum` or `datashift-journal` with `shift_size` (the old data offset
//! `S`), requirement `online-reencrypt-v3`.
//!
//! The header lives in the new detached file; on the data device the first `M` bytes
//! of ciphertext were copied to offset 0 (the `backup-moved-segment`, decrypted in
//! place last, protected by the checksums or journal of the area); the rest is
//! decrypted forward in hotzones of `S` bytes, each read at `S + pos` and written
//! plaintext at `pos` (source and target never overlap, so the header is the only
//! protection a hotzone needs). Offsets in [`ShiftPhase`] are logical (from the
//! plaintext start, which is also where it ends up on the device).
//!
//! Regular segments: `crypt [0, M)` (the moved bytes), `linear [M, pos)` (done, sized,
//! or `dynamic` once it reaches the end), the hotzone `linear [pos, +len)` flagged
//! `in-reencryption`, and the old `crypt` from `S + pos` (`dynamic`, IV tweak
//! `pos / 512`). Backups: `backup-previous` (the old segment), `backup-final` (`linear`
//! from 0) and `backup-moved-segment`. Every `crypt` segment is bound to the old digest.
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail, ensure};

use super::super::Metadata;
use super::super::jsonutil::{get_obj, get_str, get_u32, get_u64_str};
use super::super::model::{Segment, SegmentSize};
use super::{
    IN_REENCRYPTION, ReencryptKeyslot, Resilience, crypt_segment, linear_segment,
    reencrypt_keyslot, reencrypt_version, segment_json, serialize_segment,
};

/// The requirement cryptsetup writes for a data-shifting decryption.
pub const REQUIREMENT_V3: &str = "online-reencrypt-v3";
/// Flag of the moved first bytes.
pub const MOVED: &str = "backup-moved-segment";

/// A data-shifting decryption in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftDecryptState {
    /// The `reencrypt` keyslot (its resilience is `Other("datashift-...")`).
    pub keyslot: ReencryptKeyslot,
    /// How the moved segment is protected: `Checksum` or `Journal`.
    pub protect: Resilience,
    /// `shift_size`: the old data offset.
    pub shift: u64,
    pub version: u8,
    /// `backup-previous`: the old `crypt` segment at `shift`.
    pub previous: Segment,
    /// `backup-final`: `linear` from 0.
    pub last: Segment,
    /// `backup-moved-segment`: `crypt [0, M)`.
    pub moved: Segment,
    pub old_digest: u32,
    pub verify_digest: Option<u32>,
    /// The regular segments, in order.
    pub segments: Vec<Segment>,
}

/// Where a data-shifting decryption stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftPhase {
    /// Clean: plaintext in `[M, pos)`, ciphertext from `pos` at `S + pos`.
    Shift { pos: u64 },
    /// The hotzone `[pos, pos + len)` is being moved and decrypted.
    ShiftHot { pos: u64, len: u64 },
    /// The moved segment `[0, M)` is being decrypted in place.
    MovedHot,
    /// All plaintext (a lone `linear` segment; only the final write is left).
    Done,
}

/// The regular segments of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftStep {
    /// Clean at `pos` (the first header, and after each hotzone).
    Clean {
        pos: u64,
    },
    Hot {
        pos: u64,
        len: u64,
    },
    MovedHot,
}

fn fixed(s: &Segment) -> Result<u64> {
    match s.size {
        SegmentSize::Bytes(n) => Ok(n),
        SegmentSize::Dynamic => bail!(
            Corrupt,
            "LUKS2 decryption: segment {} must have a fixed size",
            s.id
        ),
    }
}

/// The `reencrypt` keyslot JSON: `protect`'s area with type `datashift-*` and
/// `shift_size`, in cryptsetup's field order.
pub fn keyslot_json(k: &ReencryptKeyslot, shift: u64) -> Value {
    let mut v = k.to_json();
    if let Some(area) = v.get_mut("area").and_then(Value::as_object_mut) {
        let t = format!("datashift-{}", k.resilience.name());
        area.insert("type".into(), t.into());
        area.insert("shift_size".into(), shift.to_string().into());
    }
    v
}

impl ShiftDecryptState {
    /// Read the state; None unless the `reencrypt` keyslot is a forward `decrypt`
    /// with a `datashift-*` area.
    pub fn load(md: &Metadata) -> Result<Option<Self>> {
        let Some((id, k)) = reencrypt_keyslot(md, Some("decrypt")) else {
            return Ok(None);
        };
        let area = get_obj(&k, "area", "reencrypt keyslot")?;
        let aw = "reencrypt keyslot area";
        let protect = match get_str(area, "type", aw)? {
            "datashift-checksum" => Resilience::Checksum {
                hash: get_str(area, "hash", aw)?.to_string(),
                sector_size: get_u32(area, "sector_size", aw)?,
            },
            "datashift-journal" => Resilience::Journal,
            _ => return Ok(None),
        };
        let keyslot = ReencryptKeyslot::parse(id, &k)?;
        ensure!(
            keyslot.direction == "forward",
            Unsupported,
            "LUKS2 decryption with a data shift in direction {} is not supported",
            keyslot.direction
        );
        let shift = get_u64_str(area, "shift_size", aw)?;
        let version = reencrypt_version(&md.config()?.mandatory_requirements)
            .ok_or_else(|| Error::corrupt("LUKS2 decryption without a reencrypt requirement"))?;
        let segs = md.segments()?;
        let flagged = |f: &str| {
            segs.iter()
                .find(|s| s.flags.iter().any(|x| x == f))
                .cloned()
        };
        let (Some(previous), Some(last), Some(moved)) = (
            flagged("backup-previous"),
            flagged("backup-final"),
            flagged(MOVED),
        ) else {
            bail!(
                Corrupt,
                "LUKS2 decryption metadata lacks a backup-previous, backup-final or {MOVED} \
                 segment"
            );
        };
        ensure!(
            previous.kind == "crypt"
                && moved.kind == "crypt"
                && last.kind == "linear"
                && previous.offset == shift
                && previous.iv_tweak == 0
                && moved.offset == 0
                && last.offset == 0
                && shift > 0,
            Unsupported,
            "LUKS2 decryption with a data shift: unexpected backup segments"
        );
        let digests = md.digests()?;
        let old_digest = digests
            .iter()
            .find(|d| d.segments.contains(&previous.id))
            .map(|d| d.id)
            .ok_or_else(|| Error::corrupt("LUKS2 decryption: the old segment has no digest"))?;
        let verify_digest = digests
            .iter()
            .find(|d| d.keyslots.contains(&id))
            .map(|d| d.id);
        Ok(Some(ShiftDecryptState {
            keyslot,
            protect,
            shift,
            version,
            previous,
            last,
            moved,
            old_digest,
            verify_digest,
            segments: segs.into_iter().filter(|s| !s.is_backup()).collect(),
        }))
    }

    /// Bytes moved to the start (`M`).
    pub fn moved_len(&self) -> Result<u64> {
        fixed(&self.moved)
    }

    /// The `reencrypt` keyslot with the moved segment's protection as its
    /// resilience (what the checksum and journal code reads).
    pub fn protection_keyslot(&self) -> ReencryptKeyslot {
        ReencryptKeyslot {
            resilience: self.protect.clone(),
            ..self.keyslot.clone()
        }
    }

    /// Where the run stands, for `data` bytes of plaintext in all.
    pub fn phase(&self, data: u64) -> Result<ShiftPhase> {
        let m = self.moved_len()?;
        let s = &self.segments;
        let is = |i: usize, kind: &str| s.get(i).is_some_and(|x| x.kind == kind);
        let hot = |x: &Segment| x.flags.iter().any(|f| f == IN_REENCRYPTION);
        let bad = || {
            let kinds: Vec<&str> = s.iter().map(|x| x.kind.as_str()).collect();
            Error::corrupt(format!(
                "LUKS2 decryption metadata has unexpected segments ({})",
                kinds.join(", ")
            ))
        };
        if is(0, "linear") {
            return match s.as_slice() {
                [one] if !hot(one) && one.offset == 0 => Ok(ShiftPhase::Done),
                [h, ..] if hot(h) && h.offset == 0 && fixed(h)? == m => Ok(ShiftPhase::MovedHot),
                _ => Err(bad()),
            };
        }
        ensure!(
            is(0, "crypt") && s[0].offset == 0 && fixed(&s[0])? == m,
            Corrupt,
            "{}",
            bad()
        );
        let mut pos = m;
        let mut i = 1;
        if let Some(x) = s.get(i).filter(|x| x.kind == "linear" && !hot(x)) {
            ensure!(x.offset == m, Corrupt, "{}", bad());
            pos = match x.size {
                SegmentSize::Bytes(n) => m + n,
                SegmentSize::Dynamic => data,
            };
            i += 1;
        }
        if let Some(h) = s.get(i).filter(|x| hot(x)) {
            let len = fixed(h)?;
            ensure!(
                h.kind == "linear" && h.offset == pos && pos + len <= data,
                Corrupt,
                "{}",
                bad()
            );
            return Ok(ShiftPhase::ShiftHot { pos, len });
        }
        match s.get(i) {
            Some(c) if c.kind == "crypt" && c.offset == self.shift + pos && i + 1 == s.len() => {
                Ok(ShiftPhase::Shift { pos })
            }
            None if pos == data => Ok(ShiftPhase::Shift { pos }),
            _ => Err(bad()),
        }
    }

    /// The next forward hotzone from `pos` (`S` bytes, or what is left); None when
    /// only the moved segment is left.
    pub fn next(&self, pos: u64, data: u64) -> Option<(u64, u64)> {
        (pos < data).then(|| (pos, self.shift.min(data - pos)))
    }

    /// The regular segments of `step` for `data` plaintext bytes.
    pub fn regular(&self, step: ShiftStep, data: u64) -> Result<Vec<Value>> {
        let m = self.moved_len()?;
        let p = &self.previous;
        let old_from = |pos: u64| {
            crypt_segment(
                self.shift + pos,
                pos / 512,
                None,
                &p.encryption,
                p.sector_size,
                None,
            )
        };
        let done = |pos: u64, end: bool| {
            let size = (!end).then_some(pos - m);
            linear_segment(m, size, None)
        };
        let mut out = Vec::new();
        match step {
            ShiftStep::MovedHot => {
                out.push(linear_segment(0, Some(m), Some(IN_REENCRYPTION)));
                if m < data {
                    out.push(linear_segment(m, None, None));
                }
                return Ok(out);
            }
            ShiftStep::Clean { pos } => {
                out.push(segment_json(&self.moved, None));
                if pos > m {
                    out.push(done(pos, pos >= data));
                }
                if pos < data {
                    out.push(old_from(pos));
                }
            }
            ShiftStep::Hot { pos, len } => {
                out.push(segment_json(&self.moved, None));
                if pos > m {
                    out.push(done(pos, false));
                }
                out.push(linear_segment(pos, Some(len), Some(IN_REENCRYPTION)));
                if pos + len < data {
                    out.push(old_from(pos + len));
                }
            }
        }
        Ok(out)
    }

    /// Write `regular` and the backups (previous, final, moved) as the segments and
    /// bind the `crypt` ones to the old digest: backup-previous and the moved backup
    /// first, then the regular ones, as cryptsetup does after its first header.
    pub fn set_segments(&self, md: &mut Metadata, regular: Vec<Value>) -> Result<()> {
        let n = regular.len();
        let mut all = regular;
        all.push(segment_json(&self.previous, Some("backup-previous")));
        all.push(segment_json(&self.last, Some("backup-final")));
        all.push(segment_json(&self.moved, Some(MOVED)));
        let id = |i: usize| Value::String(i.to_string());
        let mut ids = vec![id(n), id(n + 2)];
        let mut obj = Map::new();
        for (i, v) in all.into_iter().enumerate() {
            if i < n && v.get("type").and_then(Value::as_str) == Some("crypt") {
                ids.push(id(i));
            }
            obj.insert(i.to_string(), v);
        }
        md.set_segments(obj)?;
        md.set_digest_segments(self.old_digest, ids)
    }

    /// The bytes the verification digest covers: "v" and the version digit, the old
    /// volume key, the keyslot's mode, direction, area type, offset and size, the
    /// checksum hash and block (`datashift-checksum`), the shift, then the previous,
    /// final and moved backup segments.
    pub fn verification_data(&self, old_key: &[u8]) -> Vec<u8> {
        let k = &self.keyslot;
        let mut out = vec![0x76, 0x30 + self.version];
        out.extend_from_slice(old_key);
        out.extend_from_slice(k.mode.as_bytes());
        out.extend_from_slice(k.direction.as_bytes());
        out.extend_from_slice(k.resilience.name().as_bytes());
        out.extend_from_slice(&k.area_offset.to_be_bytes());
        out.extend_from_slice(&k.area_size.to_be_bytes());
        if let Resilience::Checksum { hash, sector_size } = &self.protect {
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&sector_size.to_be_bytes());
        }
        out.extend_from_slice(&self.shift.to_be_bytes());
        for s in [&self.previous, &self.last, &self.moved] {
            serialize_segment(s, &mut out);
        }
        out
    }
}

/// The segments of the first header (cryptsetup's order: the regular ones, then the
/// moved, previous and final backups; the `crypt` ones bound in order) for a device
/// whose old segment `old` (at `shift`) holds `data` bytes, `moved` of them copied to
/// the start.
pub fn initial_segments(
    old: &Segment,
    shift: u64,
    moved: u64,
    data: u64,
) -> Result<Map<String, Value>> {
    ensure!(
        moved > 0 && moved < data && moved <= shift,
        Unsupported,
        "LUKS2 decryption: {moved} moved bytes do not fit {data} bytes of data shifted by {shift}"
    );
    let crypt = |off: u64, iv: u64, len: Option<u64>, flag| {
        crypt_segment(off, iv, len, &old.encryption, old.sector_size, flag)
    };
    let segs = [
        crypt(0, 0, Some(moved), None),
        crypt(shift + moved, moved / 512, None, None),
        crypt(0, 0, Some(moved), Some(MOVED)),
        crypt(shift, 0, None, Some("backup-previous")),
        linear_segment(0, None, Some("backup-final")),
    ];
    Ok(segs
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIB: u64 = 1 << 20;

    fn md(moved: u64, data: u64) -> Metadata {
        let old = Segment {
            id: 0,
            kind: "crypt".into(),
            offset: 16 * MIB,
            size: SegmentSize::Dynamic,
            flags: vec![],
            iv_tweak: 0,
            encryption: "aes-xts-plain64".into(),
            sector_size: 4096,
            integrity: None,
        };
        let k = ReencryptKeyslot {
            id: 1,
            mode: "decrypt".into(),
            direction: "forward".into(),
            area_offset: 290816,
            area_size: 16486400,
            resilience: Resilience::Checksum {
                hash: "sha256".into(),
                sector_size: 4096,
            },
        };
        Metadata::from_value(json!({
            "keyslots": {"1": keyslot_json(&k, 16 * MIB)},
            "tokens": {},
            "segments": initial_segments(&old, 16 * MIB, moved, data).unwrap(),
            "digests": {"0": {"type": "pbkdf2", "keyslots": [], "segments": ["0","1","2","3"],
                "hash": "sha256", "iterations": 1000, "salt": "AAAA", "digest": "AAAA"}},
            "config": {"json_size": "12288", "keyslots_size": "16744448",
                "requirements": {"mandatory": [REQUIREMENT_V3]}},
        }))
        .unwrap()
    }

    fn kinds(md: &Metadata) -> String {
        let segs = md.segments().unwrap();
        segs.iter()
            .filter(|s| !s.is_backup())
            .map(|s| {
                let size = match s.size {
                    SegmentSize::Bytes(n) => format!("{}", n / MIB),
                    SegmentSize::Dynamic => "d".into(),
                };
                let hot = if s.flags.is_empty() { "" } else { "*" };
                format!("{}{}+{}{hot}", &s.kind[..1], s.offset / MIB, size)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs a 64 MiB decryption step by step as the engine does: the states must be
    /// the ones cryptsetup 2.6.1 writes (observed by killing it at each write).
    #[test]
    fn steps_match_cryptsetup() {
        let data = 64 * MIB;
        let mut m = md(16 * MIB, data);
        let st = ShiftDecryptState::load(&m).unwrap().unwrap();
        assert_eq!(st.phase(data).unwrap(), ShiftPhase::Shift { pos: 16 * MIB });
        assert_eq!(kinds(&m), "c0+16 c32+d");
        let mut seen = vec![];
        let mut pos = 16 * MIB;
        while let Some((p, len)) = st.next(pos, data) {
            st.set_segments(
                &mut m,
                st.regular(ShiftStep::Hot { pos: p, len }, data).unwrap(),
            )
            .unwrap();
            let s2 = ShiftDecryptState::load(&m).unwrap().unwrap();
            assert_eq!(
                s2.phase(data).unwrap(),
                ShiftPhase::ShiftHot { pos: p, len }
            );
            seen.push(kinds(&m));
            pos = p + len;
            st.set_segments(&mut m, st.regular(ShiftStep::Clean { pos }, data).unwrap())
                .unwrap();
            let s2 = ShiftDecryptState::load(&m).unwrap().unwrap();
            assert_eq!(s2.phase(data).unwrap(), ShiftPhase::Shift { pos });
            seen.push(kinds(&m));
        }
        st.set_segments(&mut m, st.regular(ShiftStep::MovedHot, data).unwrap())
            .unwrap();
        let s2 = ShiftDecryptState::load(&m).unwrap().unwrap();
        assert_eq!(s2.phase(data).unwrap(), ShiftPhase::MovedHot);
        seen.push(kinds(&m));
        assert_eq!(
            seen,
            [
                "c0+16 l16+16* c48+d",
                "c0+16 l16+16 c48+d",
                "c0+16 l16+16 l32+16* c64+d",
                "c0+16 l16+32 c64+d",
                "c0+16 l16+32 l48+16*",
                "c0+16 l16+d",
                "l0+16* l16+d",
            ]
        );
        let d = m.digests().unwrap();
        // hot moved: backup-previous (2) and the moved backup (4), no regular crypt
        assert_eq!(d[0].segments, vec![2, 4]);
    }

    #[test]
    fn verification_data_layout() {
        let st = ShiftDecryptState::load(&md(4 * MIB, 32 * MIB))
            .unwrap()
            .unwrap();
        let v = st.verification_data(&[9; 2]);
        let mut want = vec![b'v', b'3', 9, 9];
        want.extend_from_slice(b"decryptforwarddatashift-checksum");
        want.extend_from_slice(&290816u64.to_be_bytes());
        want.extend_from_slice(&16486400u64.to_be_bytes());
        want.extend_from_slice(b"sha256");
        want.extend_from_slice(&4096u32.to_be_bytes());
        want.extend_from_slice(&(16 * MIB).to_be_bytes());
        assert!(v.starts_with(&want), "{v:?}");
        assert!(v.ends_with(b"aes-xts-plain64\0\0\x10\0"));
    }
}
