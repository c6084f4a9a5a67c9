//! LUKS2 reencryption metadata of an encryption in place (`cryptsetup reencrypt
//! --encrypt`), as cryptsetup 2.6 writes it: the old data is a `linear` (plaintext)
//! segment without a digest, the new one a `crypt` segment bound to the new volume key.
//!
//! Two layouts exist:
//! * **moved** (`--reduce-device-size`): the header takes the first `shift` bytes, the
//!   encrypted data is the plaintext shifted by `shift`. The first `shift` bytes of
//!   plaintext are copied to the end of the device first (`backup-moved-segment`); the
//!   run goes backward from the end, each hotzone read at its plaintext place and
//!   written `shift` bytes further on (resilience `datashift`: the source stays intact
//!   until the next hotzone, so the header alone is the protection), the last one read
//!   from the moved copy.
//! * **forward** (a detached header): the data stays in place; hotzones go forward
//!   from the start, protected by checksums, a journal or nothing, as a volume-key
//!   change ([`super::reencrypt`]).
//!
//! [`EncryptState`] reads the metadata, plans the next hotzone and writes the segments
//! of each step; offsets in [`EncryptState::next`] are relative to the data start
//! (logical offsets of the plaintext device).
use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail, ensure};

use super::Metadata;
use super::jsonutil::{get_obj, get_u64_str};
use super::model::{Segment, SegmentSize};
pub use super::reencrypt::linear_segment;
use super::reencrypt::{IN_REENCRYPTION, ReencryptKeyslot, Resilience, serialize_segment};

/// Flag of the copy of the first `shift` plaintext bytes at the end of the device.
pub const MOVED: &str = "backup-moved-segment";

/// An encryption in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct EncryptState {
    pub keyslot: ReencryptKeyslot,
    /// `shift_size` of a `datashift` area (0 otherwise).
    pub shift: u64,
    pub version: u8,
    /// `backup-previous`: the plaintext (linear).
    pub previous: Segment,
    /// `backup-final`: the encryption (crypt).
    pub last: Segment,
    /// `backup-moved-segment`, with `--reduce-device-size`.
    pub moved: Option<Segment>,
    pub new_digest: u32,
    pub verify_digest: Option<u32>,
    /// The regular segments, in order.
    pub segments: Vec<Segment>,
}

fn seg_len(s: &Segment) -> Result<u64> {
    match s.size {
        SegmentSize::Bytes(n) => Ok(n),
        SegmentSize::Dynamic => bail!(
            Corrupt,
            "LUKS2 encryption: segment {} must have a fixed size",
            s.id
        ),
    }
}

/// The JSON of a parsed linear or crypt segment, with a new offset / iv, size and flag.
fn seg_json(s: &Segment, offset: u64, iv: u64, size: Option<u64>, flag: Option<&str>) -> Value {
    if s.kind == "linear" {
        return linear_segment(offset, size, flag);
    }
    super::reencrypt::crypt_segment(offset, iv, size, &s.encryption, s.sector_size, flag)
}

fn same(s: &Segment, flag: Option<&str>) -> Value {
    let size = match s.size {
        SegmentSize::Bytes(n) => Some(n),
        SegmentSize::Dynamic => None,
    };
    seg_json(s, s.offset, s.iv_tweak, size, flag)
}

/// The `reencrypt` keyslot of an encryption, in cryptsetup's field order.
pub fn keyslot_json(k: &ReencryptKeyslot, shift: u64) -> Value {
    let mut v = k.to_json();
    if shift > 0
        && let Some(area) = v.get_mut("area").and_then(Value::as_object_mut)
    {
        area.insert("shift_size".into(), shift.to_string().into());
    }
    v
}

impl EncryptState {
    /// Read the state of an encryption; None if no `reencrypt` keyslot in mode
    /// `encrypt` exists.
    pub fn load(md: &Metadata) -> Result<Option<Self>> {
        let Some((id, k)) = super::reencrypt::reencrypt_keyslot(md, Some("encrypt")) else {
            return Ok(None);
        };
        let k = &k;
        let keyslot = ReencryptKeyslot::parse(id, k)?;
        let shift = match keyslot.resilience {
            Resilience::Other(ref t) if t == "datashift" => get_u64_str(
                get_obj(k, "area", "reencrypt keyslot")?,
                "shift_size",
                "area",
            )?,
            Resilience::Other(ref t) => bail!(
                Unsupported,
                "LUKS2 encryption with resilience \"{t}\" is not supported"
            ),
            _ => 0,
        };
        let Some(version) =
            super::reencrypt::reencrypt_version(&md.config()?.mandatory_requirements)
        else {
            bail!(
                Corrupt,
                "LUKS2 encryption metadata without an online-reencrypt requirement"
            );
        };
        let segs = md.segments()?;
        let flagged = |f: &str| {
            segs.iter()
                .find(|s| s.flags.iter().any(|x| x == f))
                .cloned()
        };
        let (Some(previous), Some(last)) = (flagged("backup-previous"), flagged("backup-final"))
        else {
            bail!(
                Corrupt,
                "LUKS2 encryption metadata lacks a backup-previous or backup-final segment"
            );
        };
        ensure!(
            previous.kind == "linear" && last.kind == "crypt" && last.integrity.is_none(),
            Corrupt,
            "LUKS2 encryption: backup segments are not linear -> crypt"
        );
        let digests = md.digests()?;
        let new_digest = digests
            .iter()
            .find(|d| d.segments.contains(&last.id))
            .map(|d| d.id)
            .ok_or_else(|| vmcrypt_error::Error::corrupt("LUKS2 encryption: no new digest"))?;
        let verify_digest = digests
            .iter()
            .find(|d| d.keyslots.contains(&id))
            .map(|d| d.id);
        let st = EncryptState {
            keyslot,
            shift,
            version,
            previous,
            last,
            moved: flagged(MOVED),
            new_digest,
            verify_digest,
            segments: segs.into_iter().filter(|s| !s.is_backup()).collect(),
        };
        st.check_shape()?;
        Ok(Some(st))
    }

    fn check_shape(&self) -> Result<()> {
        let k = &self.keyslot;
        let moved = k.direction == "backward";
        ensure!(
            moved == (self.shift > 0) && moved == self.moved.is_some(),
            Unsupported,
            "LUKS2 encryption: direction {} with{} a data shift and{} a moved segment is \
             not supported",
            k.direction,
            if self.shift > 0 { "" } else { "out" },
            if self.moved.is_some() { "" } else { " no" }
        );
        ensure!(
            !self.segments.is_empty() && self.segments.len() <= 4,
            Corrupt,
            "LUKS2 encryption with {} regular segments",
            self.segments.len()
        );
        Ok(())
    }

    /// With `--reduce-device-size`: the plaintext was moved by the header.
    pub fn is_moved(&self) -> bool {
        self.moved.is_some()
    }

    /// Absolute offset of the encrypted data.
    pub fn data_offset(&self) -> u64 {
        self.last.offset
    }

    /// The segment in reencryption (an interrupted hotzone), if any.
    pub fn hot(&self) -> Option<(usize, &Segment)> {
        self.segments
            .iter()
            .enumerate()
            .find(|(_, s)| s.flags.iter().any(|f| f == IN_REENCRYPTION))
    }

    /// Plaintext bytes in all: the sum of the moved layout's segments, or `device`
    /// (bytes after the data offset) for the forward one.
    pub fn total(&self, device: u64) -> Result<u64> {
        if !self.is_moved() {
            return Ok(match self.previous.size {
                SegmentSize::Bytes(n) => n.min(device),
                SegmentSize::Dynamic => device,
            });
        }
        seg_len(&self.previous)
    }

    /// The hotzone of an interrupted step, relative to the data start.
    pub fn hot_zone(&self) -> Result<Option<(u64, u64)>> {
        match self.hot() {
            Some((_, s)) => Ok(Some((s.offset - self.data_offset(), seg_len(s)?))),
            None => Ok(None),
        }
    }

    /// Bytes already encrypted, for a clean (not hot) state.
    pub fn done(&self, total: u64) -> Result<u64> {
        let crypt: u64 = self
            .segments
            .iter()
            .filter(|s| s.kind == "crypt")
            .map(|s| seg_len(s).unwrap_or(total))
            .sum();
        Ok(crypt.min(total))
    }

    /// The next hotzone `(offset, len)` of a clean state (None: all is encrypted).
    /// Forward: from the end of the encrypted part, at most `max` bytes. Moved: from
    /// the end of the plaintext, `shift` bytes (the last piece above the moved
    /// segment may be shorter), as cryptsetup computes it.
    pub fn next(&self, total: u64, max: u64) -> Result<Option<(u64, u64)>> {
        ensure!(
            self.hot().is_none(),
            Internal,
            "next hotzone asked for an interrupted step"
        );
        if !self.is_moved() {
            let done = self.done(total)?;
            return Ok((done < total).then(|| (done, max.min(total - done))));
        }
        let mut linear = 0;
        for s in self.segments.iter().filter(|s| s.kind == "linear") {
            linear += seg_len(s)?;
        }
        let shift = self.shift;
        if linear == 0 {
            return Ok(None);
        }
        ensure!(
            linear >= shift,
            Corrupt,
            "LUKS2 encryption: {linear} plaintext bytes left, less than the data shift"
        );
        let tmp = linear - shift;
        Ok(Some(if tmp > 0 && tmp < shift {
            (shift, tmp)
        } else {
            (tmp, shift)
        }))
    }

    /// Where the plaintext of hotzone `offset` is read (absolute): its own place, or
    /// the moved copy for the first bytes.
    pub fn source(&self, offset: u64) -> u64 {
        match &self.moved {
            Some(m) if offset == 0 => m.offset,
            Some(_) => offset,
            None => self.data_offset() + offset,
        }
    }

    fn crypt_at(&self, offset: u64, len: Option<u64>, flag: Option<&str>) -> Value {
        let l = &self.last;
        seg_json(
            l,
            self.data_offset() + offset,
            l.iv_tweak + offset / 512,
            len,
            flag,
        )
    }

    /// The regular segments while hotzone `[offset, offset + len)` of `total` bytes
    /// is rewritten.
    pub fn hot_segments(&self, offset: u64, len: u64, total: u64) -> Result<Vec<Value>> {
        let hot = self.crypt_at(offset, Some(len), Some(IN_REENCRYPTION));
        let mut out = Vec::new();
        if !self.is_moved() {
            if offset > 0 {
                out.push(self.crypt_at(0, Some(offset), None));
            }
            out.push(hot);
            if offset + len >= total {
                return Ok(out);
            }
            let rest = self.data_offset() + offset + len;
            let size = match self.previous.size {
                SegmentSize::Bytes(n) => Some(n.saturating_sub(offset + len)),
                SegmentSize::Dynamic => None,
            };
            out.push(linear_segment(rest, size, None));
            return Ok(out);
        }
        let Some(last_linear) = self.segments.iter().rposition(|s| s.kind == "linear") else {
            bail!(Corrupt, "LUKS2 encryption: no plaintext segment is left");
        };
        for s in &self.segments[..last_linear] {
            out.push(same(s, None));
        }
        let l = &self.segments[last_linear];
        let size = seg_len(l)?;
        if size > len {
            out.push(linear_segment(l.offset, Some(size - len), None));
        }
        out.push(hot);
        if let Some(c) = self.segments.iter().find(|s| s.kind == "crypt") {
            out.push(same(c, None));
        }
        Ok(out)
    }

    /// The regular segments once the hotzone of this (hot) state is done; None when
    /// that finishes the encryption (the caller writes the final header instead).
    /// Computed from the hot state alone, so a recovery after a crash can use it.
    pub fn post_segments(&self, total: u64) -> Result<Option<Vec<Value>>> {
        let Some((r, h)) = self.hot() else {
            bail!(Internal, "LUKS2 encryption: no hotzone to complete");
        };
        let (offset, len) = (h.offset - self.data_offset(), seg_len(h)?);
        if !self.is_moved() {
            let end = offset + len;
            if end >= total {
                return Ok(None);
            }
            let size = match self.previous.size {
                SegmentSize::Bytes(n) => Some(n - end),
                SegmentSize::Dynamic => None,
            };
            return Ok(Some(vec![
                self.crypt_at(0, Some(end), None),
                linear_segment(self.data_offset() + end, size, None),
            ]));
        }
        if r == 0 {
            return Ok(None);
        }
        let mut out: Vec<Value> = self.segments[..r].iter().map(|s| same(s, None)).collect();
        let after = match self.segments.get(r + 1) {
            Some(c) => seg_len(c)?,
            None => 0,
        };
        out.push(self.crypt_at(offset, Some(after + len), None));
        Ok(Some(out))
    }

    /// Write `regular` as the segments, then the backups (previous, final, moved),
    /// and bind every crypt segment to the new digest, as cryptsetup does.
    pub fn set_segments(&self, md: &mut Metadata, regular: Vec<Value>) -> Result<()> {
        let mut all = regular;
        all.push(same(&self.previous, Some("backup-previous")));
        all.push(same(&self.last, Some("backup-final")));
        if let Some(m) = &self.moved {
            all.push(same(m, Some(MOVED)));
        }
        let mut obj = Map::new();
        let mut crypt = Vec::new();
        for (i, v) in all.into_iter().enumerate() {
            if v.get("type").and_then(Value::as_str) == Some("crypt") {
                crypt.push(Value::String(i.to_string()));
            }
            obj.insert(i.to_string(), v);
        }
        md.set_segments(obj)?;
        md.set_digest_segments(self.new_digest, crypt)
    }

    /// The final metadata: one crypt segment, no reencryption keyslot, digest or
    /// requirement.
    pub fn finish(&self, md: &mut Metadata) -> Result<()> {
        let mut segs = Map::new();
        segs.insert("0".into(), self.crypt_at(0, None, None));
        md.set_segments(segs)?;
        md.set_digest_segments(self.new_digest, vec!["0".into()])?;
        md.remove_keyslot(self.keyslot.id)?;
        md.erase_unused_digests()?;
        super::reencrypt::drop_requirement(md)
    }

    /// The bytes cryptsetup's verification digest covers for an encryption: "v" and
    /// the version digit, the new volume key, the `reencrypt` keyslot's parameters
    /// (with the shift of a datashift area), and the previous, final and moved
    /// segments.
    pub fn verification_data(&self, new_key: &[u8]) -> Vec<u8> {
        let mut out = vec![0x76, 0x30 + self.version];
        out.extend_from_slice(new_key);
        self.keyslot.serialize(self.shift, &mut out);
        serialize_segment(&self.previous, &mut out);
        serialize_segment(&self.last, &mut out);
        if let Some(m) = &self.moved {
            serialize_segment(m, &mut out);
        }
        out
    }
}

/// The segments cryptsetup starts an encryption with (before the backups): with a
/// shift, the moved first `shift` bytes at `moved_at` and the rest in place; without,
/// one linear segment over the whole data.
pub fn initial_segments(data_offset: u64, shift: u64, data_size: u64, moved_at: u64) -> Vec<Value> {
    if shift == 0 {
        return vec![linear_segment(data_offset, None, None)];
    }
    let first = shift.min(data_size);
    let mut v = vec![linear_segment(moved_at, Some(first), None)];
    if data_size > shift {
        v.push(linear_segment(shift, Some(data_size - shift), None));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const M: u64 = 1 << 20;

    fn md(shift: u64, data: u64) -> Metadata {
        let moved_at = shift + data;
        let mut segs = Map::new();
        let mut all = initial_segments(shift, shift, data, moved_at);
        all.push(linear_segment(moved_at, Some(shift), Some(MOVED)));
        all.push(linear_segment(0, Some(data), Some("backup-previous")));
        all.push(super::super::reencrypt::crypt_segment(
            shift,
            0,
            None,
            "aes-xts-plain64",
            512,
            Some("backup-final"),
        ));
        for (i, v) in all.into_iter().enumerate() {
            segs.insert(i.to_string(), v);
        }
        let k = ReencryptKeyslot {
            id: 1,
            mode: "encrypt".into(),
            direction: "backward".into(),
            area_offset: 290816,
            area_size: 4096,
            resilience: Resilience::Other("datashift".into()),
        };
        Metadata::from_value(json!({
            "keyslots": {"1": keyslot_json(&k, shift)},
            "tokens": {},
            "segments": segs,
            "digests": {"0": {"type": "pbkdf2", "keyslots": [], "segments": ["4"],
                "hash": "sha256", "iterations": 1000, "salt": "AAAA", "digest": "AAAA"}},
            "config": {"json_size": "12288", "keyslots_size": "16744448",
                "requirements": {"mandatory": ["online-reencrypt-v2"]}},
        }))
        .unwrap()
    }

    /// Runs the moved layout step by step as the block layer does: the hotzones must
    /// be cryptsetup's (52, 36, 20, then the short 16+4, then the moved 0+16 MiB).
    #[test]
    fn moved_hotzones_follow_cryptsetup() {
        let (shift, data) = (16 * M, 68 * M);
        let mut m = md(shift, data);
        let mut seen = vec![];
        loop {
            let st = EncryptState::load(&m).unwrap().unwrap();
            let total = st.total(0).unwrap();
            assert_eq!(total, data);
            let Some((off, len)) = st.next(total, u64::MAX).unwrap() else {
                break;
            };
            seen.push((off / M, len / M));
            let hot = st.hot_segments(off, len, total).unwrap();
            st.set_segments(&mut m, hot).unwrap();
            let st = EncryptState::load(&m).unwrap().unwrap();
            assert_eq!(st.hot_zone().unwrap(), Some((off, len)));
            match st.post_segments(total).unwrap() {
                Some(post) => st.set_segments(&mut m, post).unwrap(),
                None => {
                    st.finish(&mut m).unwrap();
                    assert!(EncryptState::load(&m).unwrap().is_none());
                    break;
                }
            }
            assert_eq!(
                EncryptState::load(&m)
                    .unwrap()
                    .unwrap()
                    .done(total)
                    .unwrap(),
                data - off
            );
        }
        assert_eq!(seen, [(52, 16), (36, 16), (20, 16), (16, 4), (0, 16)]);
        let segs = m.segments().unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].kind.as_str(), segs[0].offset), ("crypt", shift));
    }

    #[test]
    fn hot_segments_of_a_middle_step() {
        let m = md(16 * M, 32 * M);
        let st = EncryptState::load(&m).unwrap().unwrap();
        assert_eq!(st.next(32 * M, 1).unwrap(), Some((16 * M, 16 * M)));
        let hot = st.hot_segments(16 * M, 16 * M, 32 * M).unwrap();
        assert_eq!(hot[0]["offset"], (48 * M).to_string());
        assert_eq!(hot[1]["type"], "crypt");
        assert_eq!(hot[1]["offset"], (32 * M).to_string());
        assert_eq!(hot[1]["iv_tweak"], (16 * M / 512).to_string());
        assert_eq!(hot[1]["flags"][0], IN_REENCRYPTION);
        assert_eq!(hot.len(), 2);
    }

    /// A detached header: forward, linear 0 dynamic -> crypt 0 dynamic.
    fn forward_md() -> Metadata {
        let k = ReencryptKeyslot {
            id: 1,
            mode: "encrypt".into(),
            direction: "forward".into(),
            area_offset: 290816,
            area_size: 1 << 20,
            resilience: Resilience::Journal,
        };
        Metadata::from_value(json!({
            "keyslots": {"1": keyslot_json(&k, 0)},
            "tokens": {},
            "segments": {
                "0": linear_segment(0, None, None),
                "1": linear_segment(0, None, Some("backup-previous")),
                "2": super::super::reencrypt::crypt_segment(
                    0, 0, None, "aes-xts-plain64", 4096, Some("backup-final"))},
            "digests": {"0": {"type": "pbkdf2", "keyslots": [], "segments": ["2"],
                "hash": "sha256", "iterations": 1000, "salt": "AAAA", "digest": "AAAA"}},
            "config": {"json_size": "12288", "keyslots_size": "16744448",
                "requirements": {"mandatory": ["online-reencrypt-v2"]}},
        }))
        .unwrap()
    }

    /// Forward: the plaintext after the hotzone stays a linear segment, except after
    /// the last hotzone (cryptsetup's recovery would otherwise see one more segment).
    #[test]
    fn forward_hot_and_post_segments() {
        let mut m = forward_md();
        let st = EncryptState::load(&m).unwrap().unwrap();
        assert_eq!(st.next(4 * M, M).unwrap(), Some((0, M)));
        let hot = st.hot_segments(M, M, 4 * M).unwrap();
        assert_eq!(hot.len(), 3);
        assert_eq!(hot[2], linear_segment(2 * M, None, None));
        let last = st.hot_segments(3 * M, M, 4 * M).unwrap();
        assert_eq!(last.len(), 2, "{last:?}");
        st.set_segments(&mut m, hot).unwrap();
        let st = EncryptState::load(&m).unwrap().unwrap();
        assert_eq!(st.hot_zone().unwrap(), Some((M, M)));
        let post = st.post_segments(4 * M).unwrap().unwrap();
        assert_eq!(post[0]["size"], (2 * M).to_string());
        assert_eq!(post[1], linear_segment(2 * M, None, None));
        st.set_segments(&mut m, st.hot_segments(3 * M, M, 4 * M).unwrap())
            .unwrap();
        let st = EncryptState::load(&m).unwrap().unwrap();
        assert_eq!(st.post_segments(4 * M).unwrap(), None);
    }

    #[test]
    fn verification_data_has_the_shift_and_the_moved_segment() {
        let st = EncryptState::load(&md(M, 8 * M)).unwrap().unwrap();
        let d = st.verification_data(&[7; 2]);
        let mut want = vec![b'v', b'2', 7, 7];
        want.extend_from_slice(b"encryptbackwarddatashift");
        want.extend_from_slice(&290816u64.to_be_bytes());
        want.extend_from_slice(&4096u64.to_be_bytes());
        want.extend_from_slice(&M.to_be_bytes());
        want.extend_from_slice(b"linear");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(&(8 * M).to_be_bytes());
        want.extend_from_slice(b"crypt");
        want.extend_from_slice(&M.to_be_bytes());
        want.extend_from_slice(b"dynamic");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(b"aes-xts-plain64");
        want.extend_from_slice(&512u32.to_be_bytes());
        want.extend_from_slice(b"linear");
        want.extend_from_slice(&(9 * M).to_be_bytes());
        want.extend_from_slice(&M.to_be_bytes());
        assert_eq!(d, want);
    }
}
