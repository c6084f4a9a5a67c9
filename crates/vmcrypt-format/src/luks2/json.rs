//! The LUKS2 JSON metadata: parsing the NUL-padded JSON area, the metadata tree (a
//! `serde_json` map that keeps unknown fields, types and order), typed getters and the
//! edits the key-slot code needs, and serialisation back into a padded JSON area.
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail, ensure};

use super::jsonutil::{Obj, depth, parse_id};
use super::model::{Config, Digest, Keyslot, Priority, Segment, Token};
use super::validate::{min_segment_offset, segment_is_backup};
use super::{BIN_HEADER_SIZE, JSON_MAX_DEPTH, KEYSLOTS_MAX, TOKENS_MAX, validate};

/// Prefix of token types implemented inside cryptsetup; users may not import them.
pub const BUILTIN_TOKEN_PREFIX: &str = "luks2-";

/// LUKS2 JSON metadata. The JSON tree is the source of truth; typed views are parsed
/// from it on demand, so fields vmcrypt does not know survive a rewrite unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    root: Obj,
}

/// Parse a JSON area as cryptsetup does: it must start with `{`, hold one JSON object,
/// and every byte after the object must be NUL (at least one).
pub fn parse_json_area(area: &[u8]) -> Result<Value> {
    ensure!(
        area.first() == Some(&b'{'),
        Corrupt,
        "LUKS2 JSON area does not start with '{{'"
    );
    let mut stream = serde_json::Deserializer::from_slice(area).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => bail!(Corrupt, "LUKS2 JSON area is not valid JSON: {e}"),
        None => bail!(Corrupt, "LUKS2 JSON area is empty"),
    };
    let end = stream.byte_offset();
    ensure!(
        end < area.len(),
        Corrupt,
        "LUKS2 JSON area: missing trailing NUL byte after the JSON text"
    );
    if let Some(p) = area[end..].iter().position(|&c| c != 0) {
        bail!(
            Corrupt,
            "LUKS2 JSON area: forbidden byte 0x{:02x} after the JSON text at offset {}",
            area[end + p],
            end + p
        );
    }
    ensure!(
        depth(&value) <= JSON_MAX_DEPTH,
        Corrupt,
        "LUKS2 JSON is nested deeper than {JSON_MAX_DEPTH} levels"
    );
    Ok(value)
}

impl Metadata {
    /// Wrap a JSON value (must be an object); not validated.
    pub fn from_value(v: Value) -> Result<Self> {
        match v {
            Value::Object(root) => Ok(Metadata { root }),
            _ => bail!(Corrupt, "LUKS2 metadata is not a JSON object"),
        }
    }

    /// Parse and validate a JSON area; on failure, apply cryptsetup's repair (drop stray
    /// KDF parameters) and validate again. Returns the metadata and whether it was
    /// repaired (a repaired header should be rewritten).
    pub fn from_json_area(area: &[u8]) -> Result<(Self, bool)> {
        let mut md = Metadata::from_value(parse_json_area(area)?)?;
        let len = area.len() as u64;
        match md.validate(len) {
            Ok(()) => Ok((md, false)),
            Err(first) => {
                if validate::repair(&mut md.root) && md.validate(len).is_ok() {
                    Ok((md, true))
                } else {
                    Err(first)
                }
            }
        }
    }

    /// Run all of cryptsetup's checks for a JSON area of `json_area_len` bytes.
    pub fn validate(&self, json_area_len: u64) -> Result<()> {
        validate::validate(&self.root, json_area_len)
    }

    /// The JSON tree.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.root
    }

    /// The JSON tree as a value (for comparisons and dumps).
    pub fn to_value(&self) -> Value {
        Value::Object(self.root.clone())
    }

    /// Compact JSON text, as cryptsetup writes it.
    pub fn to_json_text(&self) -> String {
        Value::Object(self.root.clone()).to_string()
    }

    /// The JSON text padded with NULs to `area_len` bytes; the text must leave at least
    /// one NUL.
    pub fn to_json_area(&self, area_len: usize) -> Result<Vec<u8>> {
        let text = self.to_json_text();
        ensure!(
            text.len() < area_len,
            LimitExceeded,
            "LUKS2 JSON metadata ({} bytes) does not fit the {area_len}-byte JSON area",
            text.len()
        );
        let mut area = vec![0u8; area_len];
        area[..text.len()].copy_from_slice(text.as_bytes());
        Ok(area)
    }

    fn section(&self, name: &str) -> Result<&Obj> {
        self.root
            .get(name)
            .and_then(Value::as_object)
            .ok_or_else(|| Error::corrupt(format!("LUKS2 metadata: missing {name} section")))
    }

    fn section_mut(&mut self, name: &str) -> Result<&mut Obj> {
        self.root
            .get_mut(name)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::corrupt(format!("LUKS2 metadata: missing {name} section")))
    }

    /// All keyslots, in stored order.
    pub fn keyslots(&self) -> Result<Vec<Keyslot>> {
        self.section("keyslots")?
            .iter()
            .map(|(k, v)| Keyslot::parse(k, obj(v, "keyslot", k)?))
            .collect()
    }

    /// Keyslot `id`, if present.
    pub fn keyslot(&self, id: u32) -> Result<Option<Keyslot>> {
        match self.section("keyslots")?.get(&id.to_string()) {
            Some(v) => {
                Keyslot::parse(&id.to_string(), obj(v, "keyslot", &id.to_string())?).map(Some)
            }
            None => Ok(None),
        }
    }

    /// All digests.
    pub fn digests(&self) -> Result<Vec<Digest>> {
        self.section("digests")?
            .iter()
            .map(|(k, v)| Digest::parse(k, obj(v, "digest", k)?))
            .collect()
    }

    /// The digest that keyslot `id` is bound to.
    pub fn digest_for_keyslot(&self, id: u32) -> Result<Option<Digest>> {
        Ok(self
            .digests()?
            .into_iter()
            .find(|d| d.keyslots.contains(&id)))
    }

    /// All segments, sorted by id.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let mut v = self
            .section("segments")?
            .iter()
            .map(|(k, v)| Segment::parse(k, obj(v, "segment", k)?))
            .collect::<Result<Vec<_>>>()?;
        v.sort_by_key(|s| s.id);
        Ok(v)
    }

    /// All tokens.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        self.section("tokens")?
            .iter()
            .map(|(k, v)| Token::parse(k, obj(v, "token", k)?))
            .collect()
    }

    /// The config section.
    pub fn config(&self) -> Result<Config> {
        Config::parse(self.section("config")?)
    }

    /// Start of the data: the smallest offset of a regular segment (0 = detached).
    pub fn data_offset(&self) -> Result<u64> {
        let off = min_segment_offset(self.section("segments")?);
        Ok(if off == u64::MAX { 0 } else { off })
    }

    /// The segment used for I/O: the one flagged "backup-final" during reencryption,
    /// otherwise the only regular segment.
    pub fn default_segment(&self) -> Result<Segment> {
        let segs = self.segments()?;
        if let Some(s) = segs
            .iter()
            .find(|s| s.flags.iter().any(|f| f == "backup-final"))
        {
            return Ok(s.clone());
        }
        let regular: Vec<_> = segs.into_iter().filter(|s| !s.is_backup()).collect();
        match <[Segment; 1]>::try_from(regular) {
            Ok([s]) => Ok(s),
            Err(v) => bail!(
                Unsupported,
                "LUKS2 metadata has {} regular segments; only one is supported",
                v.len()
            ),
        }
    }

    /// Number of regular (non-backup) segments.
    pub fn regular_segment_count(&self) -> Result<usize> {
        Ok(self
            .section("segments")?
            .values()
            .filter_map(Value::as_object)
            .filter(|s| !segment_is_backup(s))
            .count())
    }

    /// Bytes covered by both header copies plus the keyslots area.
    pub fn hdr_and_areas_size(&self) -> Result<u64> {
        let c = self.config()?;
        Ok(2 * (c.json_size + BIN_HEADER_SIZE as u64) + c.keyslots_size)
    }

    /// Lowest keyslot id in 0..32 that is free.
    pub fn first_free_keyslot(&self) -> Result<Option<u32>> {
        let ks = self.section("keyslots")?;
        Ok((0..KEYSLOTS_MAX).find(|i| !ks.contains_key(&i.to_string())))
    }

    /// Insert keyslot `id` (appended after the existing ones, as cryptsetup does).
    /// Fails with `Busy` if the id is taken. The caller binds it to a digest.
    pub fn add_keyslot(&mut self, id: u32, keyslot: Value) -> Result<()> {
        check_range(id, KEYSLOTS_MAX, "keyslot")?;
        ensure!(
            keyslot.is_object(),
            Usage,
            "a LUKS2 keyslot must be a JSON object"
        );
        let ks = self.section_mut("keyslots")?;
        ensure!(
            !ks.contains_key(&id.to_string()),
            Busy,
            "LUKS2 keyslot {id} is already in use"
        );
        ks.insert(id.to_string(), keyslot);
        Ok(())
    }

    /// Remove keyslot `id` and every reference to it from digests and tokens.
    pub fn remove_keyslot(&mut self, id: u32) -> Result<Value> {
        let name = id.to_string();
        let removed = self
            .section_mut("keyslots")?
            .shift_remove(&name)
            .ok_or_else(|| Error::not_found(format!("LUKS2 keyslot {id} is not in use")))?;
        for sec in ["digests", "tokens"] {
            for v in self.section_mut(sec)?.values_mut() {
                remove_from_array(v, "keyslots", &name);
            }
        }
        Ok(removed)
    }

    /// Digests no keyslot refers to are dropped before every write by cryptsetup;
    /// this does the same and returns their ids.
    pub fn erase_unused_digests(&mut self) -> Result<Vec<u32>> {
        let digests = self.section_mut("digests")?;
        let unused: Vec<String> = digests
            .iter()
            .filter(|(_, d)| {
                d.get("keyslots")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.is_empty())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &unused {
            digests.shift_remove(k);
        }
        Ok(unused.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Set (or, for normal, remove) the priority of keyslot `id`.
    pub fn set_priority(&mut self, id: u32, priority: Priority) -> Result<()> {
        let ks = self
            .section_mut("keyslots")?
            .get_mut(&id.to_string())
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::not_found(format!("LUKS2 keyslot {id} is not in use")))?;
        match priority.to_json() {
            Some(p) => {
                ks.insert("priority".into(), p.into());
            }
            None => {
                ks.shift_remove("priority");
            }
        }
        Ok(())
    }

    /// Bind keyslot `keyslot` to digest `digest` (and unbind it from any other digest,
    /// since a `luks2` keyslot belongs to exactly one digest).
    pub fn bind_digest(&mut self, keyslot: u32, digest: u32) -> Result<()> {
        ensure!(
            self.section("keyslots")?.contains_key(&keyslot.to_string()),
            NotFound,
            "LUKS2 keyslot {keyslot} is not in use"
        );
        let (ks, dname) = (keyslot.to_string(), digest.to_string());
        let digests = self.section_mut("digests")?;
        ensure!(
            digests.contains_key(&dname),
            NotFound,
            "LUKS2 digest {digest} does not exist"
        );
        for (k, d) in digests.iter_mut() {
            if *k != dname {
                remove_from_array(d, "keyslots", &ks);
            }
        }
        let arr = digests
            .get_mut(&dname)
            .and_then(|d| d.get_mut("keyslots"))
            .and_then(Value::as_array_mut)
            .ok_or_else(|| Error::corrupt(format!("LUKS2 digest {digest} has no keyslots")))?;
        if !arr.iter().any(|v| v.as_str() == Some(ks.as_str())) {
            arr.push(Value::String(ks));
        }
        Ok(())
    }

    /// Insert or replace digest `id` (e.g. `Digest::to_json()`).
    pub fn set_digest(&mut self, id: u32, digest: Value) -> Result<()> {
        check_range(id, super::DIGESTS_MAX, "digest")?;
        ensure!(
            digest.is_object(),
            Usage,
            "a LUKS2 digest must be a JSON object"
        );
        self.section_mut("digests")?.insert(id.to_string(), digest);
        Ok(())
    }

    /// Add a token. `id` None picks the lowest free id. Types starting with "luks2-" are
    /// reserved for built-in tokens and refused unless `internal`. The token must have a
    /// string "type" and a "keyslots" array naming existing keyslots. Returns the id.
    pub fn add_token(&mut self, id: Option<u32>, token: Value, internal: bool) -> Result<u32> {
        let t = token
            .as_object()
            .ok_or_else(|| Error::usage("a LUKS2 token must be a JSON object"))?;
        let kind = t
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::usage("LUKS2 token has no string \"type\""))?;
        ensure!(
            internal || !kind.starts_with(BUILTIN_TOKEN_PREFIX),
            Usage,
            "LUKS2 token type \"{kind}\" is reserved for built-in tokens"
        );
        let slots = t
            .get("keyslots")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::usage("LUKS2 token has no \"keyslots\" array"))?;
        let keyslots = self.section("keyslots")?;
        for s in slots {
            let s = s
                .as_str()
                .ok_or_else(|| Error::usage("LUKS2 token keyslots must be strings"))?;
            ensure!(
                keyslots.contains_key(s),
                NotFound,
                "LUKS2 token refers to keyslot \"{s}\", which is not in use"
            );
        }
        let tokens = self.section_mut("tokens")?;
        let id = match id {
            Some(id) => id,
            None => (0..TOKENS_MAX)
                .find(|i| !tokens.contains_key(&i.to_string()))
                .ok_or_else(|| Error::busy("all 32 LUKS2 token slots are in use"))?,
        };
        check_range(id, TOKENS_MAX, "token")?;
        ensure!(
            !tokens.contains_key(&id.to_string()),
            Busy,
            "LUKS2 token {id} is already in use"
        );
        tokens.insert(id.to_string(), token);
        Ok(id)
    }

    /// Replace the whole `segments` section (reencryption steps).
    pub fn set_segments(&mut self, segments: Obj) -> Result<()> {
        *self.section_mut("segments")? = segments;
        Ok(())
    }

    /// Set the `segments` list of digest `id`.
    pub fn set_digest_segments(&mut self, id: u32, segments: Vec<Value>) -> Result<()> {
        let d = self
            .section_mut("digests")?
            .get_mut(&id.to_string())
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::not_found(format!("LUKS2 digest {id} does not exist")))?;
        d.insert("segments".into(), Value::Array(segments));
        Ok(())
    }

    /// Lowest digest id that is free.
    pub fn first_free_digest(&self) -> Result<u32> {
        let d = self.section("digests")?;
        (0..super::DIGESTS_MAX)
            .find(|i| !d.contains_key(&i.to_string()))
            .ok_or_else(|| Error::busy("all LUKS2 digest ids are in use"))
    }

    /// Remove digest `id` (no-op if absent).
    pub fn remove_digest(&mut self, id: u32) -> Result<()> {
        self.section_mut("digests")?.shift_remove(&id.to_string());
        Ok(())
    }

    /// Set `config.requirements.mandatory` (an empty list removes `requirements`).
    pub fn set_mandatory_requirements(&mut self, reqs: &[String]) -> Result<()> {
        let cfg = self.section_mut("config")?;
        if reqs.is_empty() {
            cfg.shift_remove("requirements");
        } else {
            let v: Vec<Value> = reqs.iter().cloned().map(Value::String).collect();
            cfg.insert("requirements".into(), serde_json::json!({ "mandatory": v }));
        }
        Ok(())
    }

    /// Remove token `id`.
    pub fn remove_token(&mut self, id: u32) -> Result<Value> {
        self.section_mut("tokens")?
            .shift_remove(&id.to_string())
            .ok_or_else(|| Error::not_found(format!("LUKS2 token {id} does not exist")))
    }
}

fn obj<'a>(v: &'a Value, section: &str, key: &str) -> Result<&'a Obj> {
    parse_id(key, section, u32::MAX)?;
    v.as_object()
        .ok_or_else(|| Error::corrupt(format!("LUKS2 {section} {key} is not a JSON object")))
}

fn check_range(id: u32, max: u32, what: &str) -> Result<()> {
    ensure!(
        id < max,
        Usage,
        "LUKS2 {what} id {id} is out of range 0..{max}"
    );
    Ok(())
}

fn remove_from_array(v: &mut Value, key: &str, item: &str) {
    if let Some(arr) = v.get_mut(key).and_then(Value::as_array_mut) {
        arr.retain(|x| x.as_str() != Some(item));
    }
}
