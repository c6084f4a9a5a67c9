//! LUKS2 reencryption metadata, as cryptsetup (2.4 and later) writes it: the
//! `reencrypt` keyslot (mode, direction, resilience area), the `backup-previous` /
//! `backup-final` segments with their digests, the segments of a reencryption in
//! progress (new data, the `in-reencryption` hotzone, old data), the
//! `online-reencrypt-v2` requirement, and the bytes the reencryption verification
//! digest is computed over.
//!
//! Offsets in [`Layout`] are relative to the start of the data (`data_offset`); the
//! JSON holds absolute offsets. The forward direction of a volume-key change is built
//! here; a decryption's segments (`linear` for plaintext) in [`decrypt`]. A `linear`
//! backup segment (the plaintext side of an encryption or decryption) has no digest.
use serde_json::{Map, Value, json};
use vmcrypt_error::{Result, bail, ensure};

use super::Metadata;
use super::jsonutil::{Obj, get_obj, get_str, get_u32, get_u64_str};
use super::model::{Segment, SegmentSize};

pub mod decrypt;
pub mod shift;

/// The requirement cryptsetup 2.4.3+ writes while a reencryption is in progress.
pub const REQUIREMENT: &str = "online-reencrypt-v2";
/// The metadata version that requirement stands for (in the verification data).
pub const VERSION: u8 = 2;
/// Flag of the segment being reencrypted.
pub const IN_REENCRYPTION: &str = "in-reencryption";

/// How a hotzone survives an interruption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resilience {
    /// Hashes of the hotzone's old ciphertext, one per `sector_size` block.
    Checksum { hash: String, sector_size: u32 },
    /// A copy of the hotzone's old ciphertext.
    Journal,
    /// Nothing: an interrupted hotzone is lost.
    None,
    /// Data shift modes (encrypt/decrypt with a header move): named, not run here.
    Other(String),
}

impl Resilience {
    /// The area `type`.
    pub fn name(&self) -> &str {
        match self {
            Resilience::Checksum { .. } => "checksum",
            Resilience::Journal => "journal",
            Resilience::None => "none",
            Resilience::Other(s) => s,
        }
    }
}

/// The `reencrypt` keyslot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencryptKeyslot {
    pub id: u32,
    /// "reencrypt", "encrypt" or "decrypt".
    pub mode: String,
    /// "forward" or "backward".
    pub direction: String,
    pub area_offset: u64,
    pub area_size: u64,
    pub resilience: Resilience,
}

impl ReencryptKeyslot {
    pub(crate) fn parse(id: u32, k: &Obj) -> Result<Self> {
        let what = format!("keyslot {id}");
        let area = get_obj(k, "area", &what)?;
        let aw = format!("{what} area");
        let resilience = match get_str(area, "type", &aw)? {
            "checksum" => Resilience::Checksum {
                hash: get_str(area, "hash", &aw)?.to_string(),
                sector_size: get_u32(area, "sector_size", &aw)?,
            },
            "journal" => Resilience::Journal,
            "none" => Resilience::None,
            other => Resilience::Other(other.to_string()),
        };
        Ok(ReencryptKeyslot {
            id,
            mode: get_str(k, "mode", &what)?.to_string(),
            direction: get_str(k, "direction", &what)?.to_string(),
            area_offset: get_u64_str(area, "offset", &aw)?,
            area_size: get_u64_str(area, "size", &aw)?,
            resilience,
        })
    }

    /// The keyslot's part of the verification data: mode, direction, area type,
    /// offset and size, the checksum hash and block, and a datashift's `shift`.
    pub(crate) fn serialize(&self, shift: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(self.mode.as_bytes());
        out.extend_from_slice(self.direction.as_bytes());
        out.extend_from_slice(self.resilience.name().as_bytes());
        out.extend_from_slice(&self.area_offset.to_be_bytes());
        out.extend_from_slice(&self.area_size.to_be_bytes());
        if let Resilience::Checksum { hash, sector_size } = &self.resilience {
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&sector_size.to_be_bytes());
        }
        if shift > 0 {
            out.extend_from_slice(&shift.to_be_bytes());
        }
    }

    /// JSON in cryptsetup's field order.
    pub fn to_json(&self) -> Value {
        let mut area = Map::new();
        area.insert("offset".into(), self.area_offset.to_string().into());
        area.insert("size".into(), self.area_size.to_string().into());
        area.insert("type".into(), self.resilience.name().into());
        if let Resilience::Checksum { hash, sector_size } = &self.resilience {
            area.insert("hash".into(), hash.clone().into());
            area.insert("sector_size".into(), (*sector_size).into());
        }
        json!({"area": area, "type": "reencrypt", "key_size": 1, "mode": self.mode,
               "direction": self.direction, "priority": 0})
    }
}

/// A reencryption in progress, as read from the metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ReencryptState {
    pub keyslot: ReencryptKeyslot,
    /// Metadata version from the requirement ("online-reencrypt-v2" = 2).
    pub version: u8,
    /// `backup-previous` (the old encryption) and its digest (None when `linear`).
    pub old: Segment,
    pub old_digest: Option<u32>,
    /// `backup-final` (the new encryption) and its digest (None when `linear`).
    pub new: Segment,
    pub new_digest: Option<u32>,
    /// The digest the `reencrypt` keyslot is bound to (the verification digest).
    pub verify_digest: Option<u32>,
    /// The regular segments.
    pub segments: Vec<Segment>,
}

impl ReencryptState {
    /// Read the reencryption state; None if no `reencrypt` keyslot exists.
    pub fn load(md: &Metadata) -> Result<Option<Self>> {
        let Some((id, k)) = reencrypt_keyslot(md, None) else {
            return Ok(None);
        };
        let keyslot = ReencryptKeyslot::parse(id, &k)?;
        let version = match md.config()?.mandatory_requirements.iter().find_map(|r| {
            r.strip_prefix("online-reencrypt-v")
                .and_then(|v| v.parse::<u8>().ok())
        }) {
            Some(v) => v,
            None => bail!(
                Corrupt,
                "LUKS2 reencryption metadata without a known online-reencrypt requirement"
            ),
        };
        let segs = md.segments()?;
        let flagged = |f: &str| {
            segs.iter()
                .find(|s| s.flags.iter().any(|x| x == f))
                .cloned()
        };
        let (Some(old), Some(new)) = (flagged("backup-previous"), flagged("backup-final")) else {
            bail!(
                Corrupt,
                "LUKS2 reencryption metadata lacks a backup-previous or backup-final segment"
            );
        };
        let digests = md.digests()?;
        let digest_of = |s: u32| {
            digests
                .iter()
                .find(|d| d.segments.contains(&s))
                .map(|d| d.id)
        };
        let (old_digest, new_digest) = (digest_of(old.id), digest_of(new.id));
        for (s, d) in [(&old, old_digest), (&new, new_digest)] {
            ensure!(
                s.kind == "linear" || d.is_some(),
                Corrupt,
                "LUKS2 reencryption metadata: backup segment {} has no digest",
                s.id
            );
        }
        let verify_digest = digests
            .iter()
            .find(|d| d.keyslots.contains(&id))
            .map(|d| d.id);
        Ok(Some(ReencryptState {
            keyslot,
            version,
            old,
            old_digest,
            new,
            new_digest,
            verify_digest,
            segments: segs.into_iter().filter(|s| !s.is_backup()).collect(),
        }))
    }

    /// Both digests of a volume-key change (old, new); an error for an encryption or
    /// decryption, which has a `linear` side.
    pub fn key_digests(&self) -> Result<(u32, u32)> {
        match (self.old_digest, self.new_digest) {
            (Some(o), Some(n)) => Ok((o, n)),
            _ => bail!(
                Unsupported,
                "LUKS2 reencryption mode \"{}\" has no old and new volume key",
                self.keyslot.mode
            ),
        }
    }

    /// The segment in reencryption (the hotzone of an interrupted step), if any.
    pub fn hot_segment(&self) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.flags.iter().any(|f| f == IN_REENCRYPTION))
    }

    /// Bytes (from the data start) already done, for a clean (not hot) forward state:
    /// the size of the first regular segment when there are two, 0 when the only
    /// regular segment is still the old encryption, everything when it is the new one.
    pub fn progress(&self, md: &Metadata, data_size: u64) -> Result<u64> {
        let digests = md.digests()?;
        let is_new = |s: &Segment| {
            digests
                .iter()
                .any(|d| Some(d.id) == self.new_digest && d.segments.contains(&s.id))
        };
        match self.segments.as_slice() {
            [one] if is_new(one) => Ok(data_size),
            [_] => Ok(0),
            [first, _] => match first.size {
                SegmentSize::Bytes(n) => Ok(n),
                SegmentSize::Dynamic => bail!(
                    Corrupt,
                    "LUKS2 reencryption: the first of two segments has no size"
                ),
            },
            other => bail!(
                Unsupported,
                "LUKS2 reencryption with {} regular segments",
                other.len()
            ),
        }
    }

    /// The bytes cryptsetup's verification digest covers: "v" and the version digit,
    /// the old volume key (if the old side has a digest) and the new one (if it has a
    /// digest of its own), the `reencrypt` keyslot's parameters and the backup segments.
    /// A key whose side is `linear` is ignored (pass an empty slice).
    pub fn verification_data(&self, old_key: &[u8], new_key: &[u8]) -> Vec<u8> {
        let mut out = vec![0x76, 0x30 + self.version];
        if self.old_digest.is_some() {
            out.extend_from_slice(old_key);
        }
        if self.new_digest.is_some() && self.new_digest != self.old_digest {
            out.extend_from_slice(new_key);
        }
        self.keyslot.serialize(0, &mut out);
        for s in [&self.old, &self.new] {
            serialize_segment(s, &mut out);
        }
        out
    }
}

pub(crate) fn serialize_segment(s: &Segment, out: &mut Vec<u8>) {
    out.extend_from_slice(s.kind.as_bytes());
    out.extend_from_slice(&s.offset.to_be_bytes());
    match s.size {
        SegmentSize::Dynamic => out.extend_from_slice(b"dynamic"),
        SegmentSize::Bytes(n) => out.extend_from_slice(&n.to_be_bytes()),
    }
    if s.kind == "crypt" {
        out.extend_from_slice(&s.iv_tweak.to_be_bytes());
        out.extend_from_slice(s.encryption.as_bytes());
        out.extend_from_slice(&s.sector_size.to_be_bytes());
    }
}

/// A `crypt` segment in cryptsetup's field order.
pub fn crypt_segment(
    offset: u64,
    iv_tweak: u64,
    size: Option<u64>,
    encryption: &str,
    sector_size: u32,
    flag: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "crypt".into());
    m.insert("offset".into(), offset.to_string().into());
    m.insert(
        "size".into(),
        size.map_or("dynamic".to_string(), |n| n.to_string()).into(),
    );
    m.insert("iv_tweak".into(), iv_tweak.to_string().into());
    m.insert("encryption".into(), encryption.into());
    m.insert("sector_size".into(), sector_size.into());
    if let Some(f) = flag {
        m.insert("flags".into(), json!([f]));
    }
    Value::Object(m)
}

/// A `linear` (plaintext) segment in cryptsetup's field order.
pub fn linear_segment(offset: u64, size: Option<u64>, flag: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "linear".into());
    m.insert("offset".into(), offset.to_string().into());
    m.insert(
        "size".into(),
        size.map_or("dynamic".to_string(), |n| n.to_string()).into(),
    );
    if let Some(f) = flag {
        m.insert("flags".into(), json!([f]));
    }
    Value::Object(m)
}

/// The JSON of a parsed segment (`crypt` or `linear`) with a flag added (for the
/// backup copies).
pub fn segment_json(s: &Segment, flag: Option<&str>) -> Value {
    let size = match s.size {
        SegmentSize::Dynamic => None,
        SegmentSize::Bytes(n) => Some(n),
    };
    if s.kind == "linear" {
        return linear_segment(s.offset, size, flag);
    }
    crypt_segment(
        s.offset,
        s.iv_tweak,
        size,
        &s.encryption,
        s.sector_size,
        flag,
    )
}

/// Where a forward reencryption stands, for building its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Absolute offset of the data.
    pub data_offset: u64,
    /// Bytes of data.
    pub data_size: u64,
}

/// Which regular segments to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The hotzone `[offset, offset + len)` is being rewritten.
    Hot { offset: u64, len: u64 },
    /// Everything below `done` is in the new encryption.
    Post { done: u64 },
}

impl ReencryptState {
    /// Replace the regular segments for `step` (new data, hotzone, old data), re-add the
    /// backup segments after them and bind every segment to its digest, as cryptsetup
    /// does for a forward reencryption.
    pub fn apply(&self, md: &mut Metadata, layout: Layout, step: Step) -> Result<()> {
        ensure!(
            self.old.kind == "crypt" && self.new.kind == "crypt",
            Unsupported,
            "LUKS2 reencryption from or to a non-crypt segment"
        );
        let (o, n) = (&self.old, &self.new);
        let abs = |rel: u64| layout.data_offset + rel;
        let old_seg = |rel: u64| {
            crypt_segment(
                abs(rel),
                o.iv_tweak + rel / 512,
                None,
                &o.encryption,
                o.sector_size,
                None,
            )
        };
        let new_seg = |rel: u64, len: Option<u64>, flag| {
            crypt_segment(
                abs(rel),
                n.iv_tweak + rel / 512,
                len,
                &n.encryption,
                n.sector_size,
                flag,
            )
        };
        // (segment, bound to old digest, bound to new digest)
        let mut segs: Vec<(Value, bool, bool)> = Vec::new();
        match step {
            Step::Hot { offset, len } => {
                if offset > 0 {
                    segs.push((new_seg(0, Some(offset), None), false, true));
                }
                segs.push((
                    new_seg(offset, Some(len), Some(IN_REENCRYPTION)),
                    true,
                    true,
                ));
                if offset + len < layout.data_size {
                    segs.push((old_seg(offset + len), true, false));
                }
            }
            Step::Post { done } if done >= layout.data_size => {
                segs.push((new_seg(0, None, None), false, true));
            }
            Step::Post { done: 0 } => segs.push((old_seg(0), true, false)),
            Step::Post { done } => {
                segs.push((new_seg(0, Some(done), None), false, true));
                segs.push((old_seg(done), true, false));
            }
        }
        segs.push((segment_json(o, Some("backup-previous")), true, false));
        segs.push((segment_json(n, Some("backup-final")), false, true));
        let mut obj = Map::new();
        let (mut old_ids, mut new_ids) = (Vec::new(), Vec::new());
        for (i, (v, old, new)) in segs.into_iter().enumerate() {
            obj.insert(i.to_string(), v);
            if old {
                old_ids.push(Value::String(i.to_string()));
            }
            if new {
                new_ids.push(Value::String(i.to_string()));
            }
        }
        let (old_digest, new_digest) = self.key_digests()?;
        md.set_segments(obj)?;
        md.set_digest_segments(old_digest, old_ids)?;
        md.set_digest_segments(new_digest, new_ids)?;
        Ok(())
    }
}

/// The id and JSON of the `reencrypt` keyslot (of `mode` when given), if any.
pub(crate) fn reencrypt_keyslot(md: &Metadata, mode: Option<&str>) -> Option<(u32, Obj)> {
    let ks = md.as_map().get("keyslots")?.as_object()?;
    ks.iter()
        .filter_map(|(id, v)| Some((id, v.as_object()?)))
        .find(|(_, v)| {
            v.get("type").and_then(Value::as_str) == Some("reencrypt")
                && mode.is_none_or(|m| v.get("mode").and_then(Value::as_str) == Some(m))
        })
        .map(|(id, v)| (id.parse().unwrap_or(u32::MAX), v.clone()))
}

/// Remove the `online-reencrypt*` requirement (the final write of a run).
pub fn drop_requirement(md: &mut Metadata) -> Result<()> {
    let reqs: Vec<String> = md
        .config()?
        .mandatory_requirements
        .into_iter()
        .filter(|r| !r.starts_with("online-reencrypt"))
        .collect();
    md.set_mandatory_requirements(&reqs)
}

/// Parse a requirement list's reencryption version (None: no reencryption).
pub fn reencrypt_version(mandatory: &[String]) -> Option<u8> {
    mandatory.iter().find_map(|r| match r.as_str() {
        "online-reencrypt" => Some(1),
        r => r
            .strip_prefix("online-reencrypt-v")
            .and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: &[&str]) -> Segment {
        Segment {
            id: 1,
            kind: "crypt".into(),
            offset: 16 << 20,
            size: SegmentSize::Dynamic,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            iv_tweak: 0,
            encryption: "aes-xts-plain64".into(),
            sector_size: 4096,
            integrity: None,
        }
    }

    #[test]
    fn verification_data_layout() {
        let st = ReencryptState {
            keyslot: ReencryptKeyslot {
                id: 2,
                mode: "reencrypt".into(),
                direction: "forward".into(),
                area_offset: 0x86000,
                area_size: 0x1000,
                resilience: Resilience::Checksum {
                    hash: "sha256".into(),
                    sector_size: 4096,
                },
            },
            version: 2,
            old: seg(&["backup-previous"]),
            old_digest: Some(0),
            new: seg(&["backup-final"]),
            new_digest: Some(1),
            verify_digest: Some(2),
            segments: vec![],
        };
        let d = st.verification_data(&[1; 4], &[2; 4]);
        let mut want = vec![b'v', b'2', 1, 1, 1, 1, 2, 2, 2, 2];
        want.extend_from_slice(b"reencryptforwardchecksum");
        want.extend_from_slice(&0x86000u64.to_be_bytes());
        want.extend_from_slice(&0x1000u64.to_be_bytes());
        want.extend_from_slice(b"sha256");
        want.extend_from_slice(&4096u32.to_be_bytes());
        for _ in 0..2 {
            want.extend_from_slice(b"crypt");
            want.extend_from_slice(&(16u64 << 20).to_be_bytes());
            want.extend_from_slice(b"dynamic");
            want.extend_from_slice(&0u64.to_be_bytes());
            want.extend_from_slice(b"aes-xts-plain64");
            want.extend_from_slice(&4096u32.to_be_bytes());
        }
        assert_eq!(d, want);
    }

    #[test]
    fn requirement_versions() {
        assert_eq!(reencrypt_version(&["online-reencrypt-v2".into()]), Some(2));
        assert_eq!(reencrypt_version(&["online-reencrypt".into()]), Some(1));
        assert_eq!(reencrypt_version(&["foo".into()]), None);
    }
}
