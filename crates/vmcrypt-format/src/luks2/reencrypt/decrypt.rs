//! The segments of a LUKS2 decryption with a detached header, as cryptsetup 2.6
//! writes them: mode `decrypt`, direction `backward` (the hotzone moves from the end
//! of the data to its start). The data below the hotzone is still the old `crypt`
//! segment (cut to the hotzone's offset), the hotzone a `linear` segment flagged
//! `in-reencryption`, the decrypted rest one `linear` segment. Only `crypt` segments
//! are bound to the old digest (the `backup-previous` copy first, as cryptsetup
//! appends them); `linear` ones have no digest.
use serde_json::{Map, Value};
use vmcrypt_error::{Result, ensure};

use super::super::Metadata;
use super::super::model::SegmentSize;
use super::{IN_REENCRYPTION, Layout, ReencryptState, crypt_segment, linear_segment, segment_json};

/// Which regular segments a backward decryption writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackStep {
    /// The hotzone `[offset, offset + len)` (from the data start) is being decrypted.
    Hot { offset: u64, len: u64 },
    /// Everything from `from` to the end is plaintext (`from == data_size`: nothing).
    Post { from: u64 },
}

impl ReencryptState {
    /// Whether this is a decryption cryptsetup's way (mode `decrypt`, `backward`,
    /// a `crypt` backup-previous and a `linear` backup-final, no data shift).
    pub fn is_backward_decrypt(&self) -> bool {
        self.keyslot.mode == "decrypt"
            && self.keyslot.direction == "backward"
            && self.old.kind == "crypt"
            && self.new.kind == "linear"
            && self.old_digest.is_some()
    }

    /// Where a clean (not hot) backward decryption stands: the offset (from the data
    /// start) above which everything is plaintext. One `crypt` segment: nothing done
    /// yet; one `linear` segment: all done; a `crypt` then a `linear`: the first one's
    /// size.
    pub fn decrypted_from(&self, layout: Layout) -> Result<u64> {
        let kinds: Vec<&str> = self.segments.iter().map(|s| s.kind.as_str()).collect();
        match (kinds.as_slice(), self.segments.first().map(|s| s.size)) {
            (["crypt"], _) => Ok(layout.data_size),
            (["linear"], _) => Ok(0),
            (["crypt", "linear"], Some(SegmentSize::Bytes(n))) if n <= layout.data_size => Ok(n),
            _ => vmcrypt_error::bail!(
                Corrupt,
                "LUKS2 decryption metadata has unexpected segments ({})",
                kinds.join(", ")
            ),
        }
    }

    /// Replace the regular segments for `step`, re-add the backup segments after them
    /// and bind the `crypt` ones to the old digest, as cryptsetup does.
    pub fn apply_backward_decrypt(
        &self,
        md: &mut Metadata,
        layout: Layout,
        step: BackStep,
    ) -> Result<()> {
        ensure!(
            self.is_backward_decrypt(),
            Unsupported,
            "not a LUKS2 backward decryption"
        );
        let o = &self.old;
        let abs = |rel: u64| layout.data_offset + rel;
        let old_seg = |len: Option<u64>| {
            crypt_segment(
                o.offset,
                o.iv_tweak,
                len,
                &o.encryption,
                o.sector_size,
                None,
            )
        };
        let mut segs: Vec<Value> = Vec::new();
        match step {
            BackStep::Hot { offset, len } => {
                if offset > 0 {
                    segs.push(old_seg(Some(offset)));
                }
                segs.push(linear_segment(
                    abs(offset),
                    Some(len),
                    Some(IN_REENCRYPTION),
                ));
                if offset + len < layout.data_size {
                    segs.push(linear_segment(abs(offset + len), None, None));
                }
            }
            BackStep::Post { from } if from >= layout.data_size => segs.push(old_seg(None)),
            BackStep::Post { from: 0 } => segs.push(linear_segment(abs(0), None, None)),
            BackStep::Post { from } => {
                segs.push(old_seg(Some(from)));
                segs.push(linear_segment(abs(from), None, None));
            }
        }
        let crypt_ids: Vec<usize> = segs
            .iter()
            .enumerate()
            .filter(|(_, v)| v.get("type").and_then(Value::as_str) == Some("crypt"))
            .map(|(i, _)| i)
            .collect();
        let backup = segs.len();
        segs.push(segment_json(o, Some("backup-previous")));
        segs.push(segment_json(&self.new, Some("backup-final")));
        let mut obj = Map::new();
        for (i, v) in segs.into_iter().enumerate() {
            obj.insert(i.to_string(), v);
        }
        let mut ids = vec![Value::String(backup.to_string())];
        ids.extend(crypt_ids.iter().map(|i| Value::String(i.to_string())));
        md.set_segments(obj)?;
        if let Some(d) = self.old_digest {
            md.set_digest_segments(d, ids)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ReencryptKeyslot, Resilience};
    use super::*;
    use crate::luks2::Segment;

    fn seg(kind: &str, flags: &[&str]) -> Segment {
        Segment {
            id: 1,
            kind: kind.into(),
            offset: 0,
            size: SegmentSize::Dynamic,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            iv_tweak: 0,
            encryption: if kind == "crypt" {
                "aes-xts-plain64".into()
            } else {
                String::new()
            },
            sector_size: 4096,
            integrity: None,
        }
    }

    fn state() -> ReencryptState {
        ReencryptState {
            keyslot: ReencryptKeyslot {
                id: 1,
                mode: "decrypt".into(),
                direction: "backward".into(),
                area_offset: 0x47000,
                area_size: 0x1000,
                resilience: Resilience::Journal,
            },
            version: 2,
            old: seg("crypt", &["backup-previous"]),
            old_digest: Some(0),
            new: seg("linear", &["backup-final"]),
            new_digest: None,
            verify_digest: Some(1),
            segments: vec![],
        }
    }

    #[test]
    fn decrypt_verification_data_has_the_old_key_only() {
        let d = state().verification_data(&[7; 4], &[]);
        let mut want = vec![b'v', b'2', 7, 7, 7, 7];
        want.extend_from_slice(b"decryptbackwardjournal");
        want.extend_from_slice(&0x47000u64.to_be_bytes());
        want.extend_from_slice(&0x1000u64.to_be_bytes());
        want.extend_from_slice(b"crypt");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(b"dynamic");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(b"aes-xts-plain64");
        want.extend_from_slice(&4096u32.to_be_bytes());
        want.extend_from_slice(b"linear");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(b"dynamic");
        assert_eq!(d, want);
    }

    #[test]
    fn linear_segment_field_order() {
        let v = linear_segment(4096, Some(8192), Some(IN_REENCRYPTION));
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"type":"linear","offset":"4096","size":"8192","flags":["in-reencryption"]}"#
        );
        let d = linear_segment(0, None, None);
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"type":"linear","offset":"0","size":"dynamic"}"#
        );
    }
}
