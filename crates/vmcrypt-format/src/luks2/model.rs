//! Typed, read-only views of LUKS2 metadata objects (keyslots, digests, segments,
//! tokens, config) parsed from the JSON with errors that name the object and field.
//!
//! The JSON tree stays the source of truth (see [`super::Metadata`]); these views are
//! built on demand and know how to render a new `luks2` keyslot or `pbkdf2` digest back
//! to JSON in cryptsetup's field order.
use serde_json::{Value, json};
use vmcrypt_error::{Result, bail};

use super::base64;
use super::jsonutil::{Obj, get_obj, get_str, get_u32, get_u64_str, parse_id, str_array};
use super::{KEYSLOTS_MAX, SEGMENTS_MAX};

/// Key-slot priority (`"priority"`; absent = normal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// 0: only used when the slot is named explicitly.
    Ignore,
    /// 1 (the default, not stored).
    Normal,
    /// 2: tried before normal slots.
    Prefer,
}

impl Priority {
    fn from_json(v: Option<&Value>, what: &str) -> Result<Self> {
        match v.map(|v| v.as_i64()) {
            None => Ok(Priority::Normal),
            Some(Some(0)) => Ok(Priority::Ignore),
            Some(Some(1)) => Ok(Priority::Normal),
            Some(Some(2)) => Ok(Priority::Prefer),
            Some(_) => bail!(Corrupt, "LUKS2 metadata: {what} has an invalid priority"),
        }
    }

    /// The stored value, None for normal (field omitted).
    pub fn to_json(self) -> Option<i64> {
        match self {
            Priority::Ignore => Some(0),
            Priority::Normal => None,
            Priority::Prefer => Some(2),
        }
    }
}

/// Key derivation of a `luks2` keyslot.
#[derive(Clone, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2 {
        hash: String,
        iterations: u32,
        salt: Vec<u8>,
    },
    /// argon2i or argon2id (`id` = true).
    Argon2 {
        id: bool,
        time: u32,
        /// KiB.
        memory: u32,
        cpus: u32,
        salt: Vec<u8>,
    },
    /// A KDF vmcrypt cannot run (e.g. "argon2", the name before argon2i/argon2id
    /// existed, in cryptsetup's own test headers), kept as stored. The header still
    /// loads and dumps; only this keyslot cannot be unlocked.
    Unsupported {
        /// The `type` field.
        kind: String,
        /// The whole `kdf` object.
        json: Obj,
    },
}

impl std::fmt::Debug for Kdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kdf::Pbkdf2 {
                hash, iterations, ..
            } => write!(f, "Pbkdf2({hash}, {iterations})"),
            Kdf::Argon2 {
                id,
                time,
                memory,
                cpus,
                ..
            } => write!(
                f,
                "Argon2{}(t={time}, m={memory}, p={cpus})",
                if *id { "id" } else { "i" }
            ),
            Kdf::Unsupported { kind, .. } => write!(f, "Unsupported({kind})"),
        }
    }
}

impl Kdf {
    fn parse(kdf: &Obj, what: &str) -> Result<Self> {
        let salt = || base64::decode(get_str(kdf, "salt", what)?, &format!("{what} salt"));
        match get_str(kdf, "type", what)? {
            "pbkdf2" => Ok(Kdf::Pbkdf2 {
                hash: get_str(kdf, "hash", what)?.to_string(),
                iterations: get_u32(kdf, "iterations", what)?,
                salt: salt()?,
            }),
            t @ ("argon2i" | "argon2id") => Ok(Kdf::Argon2 {
                id: t == "argon2id",
                time: get_u32(kdf, "time", what)?,
                memory: get_u32(kdf, "memory", what)?,
                cpus: get_u32(kdf, "cpus", what)?,
                salt: salt()?,
            }),
            other => Ok(Kdf::Unsupported {
                kind: other.to_string(),
                json: kdf.clone(),
            }),
        }
    }

    /// An `Unsupported` error if this KDF is [`Kdf::Unsupported`] (callers name the
    /// keyslot in its context).
    pub fn check_supported(&self) -> Result<()> {
        match self {
            Kdf::Unsupported { kind, .. } => bail!(
                Unsupported,
                "unsupported KDF type \"{kind}\" (vmcrypt knows pbkdf2, argon2i and argon2id)"
            ),
            _ => Ok(()),
        }
    }

    /// An integer field of an unsupported KDF's object ("time", "memory", "cpus").
    pub fn unsupported_int(&self, field: &str) -> Option<u64> {
        match self {
            Kdf::Unsupported { json, .. } => json.get(field).and_then(Value::as_u64),
            _ => None,
        }
    }

    /// JSON in cryptsetup's field order.
    pub fn to_json(&self) -> Value {
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => json!({"type": "pbkdf2", "hash": hash, "iterations": iterations,
                        "salt": base64::encode(salt)}),
            Kdf::Argon2 {
                id,
                time,
                memory,
                cpus,
                salt,
            } => json!({"type": if *id { "argon2id" } else { "argon2i" }, "time": time,
                        "memory": memory, "cpus": cpus, "salt": base64::encode(salt)}),
            Kdf::Unsupported { json, .. } => Value::Object(json.clone()),
        }
    }
}

/// A `luks2`-type keyslot: AF-split key material in a raw area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks2Keyslot {
    /// Size of the stored (volume) key in bytes.
    pub key_size: u32,
    pub af_stripes: u32,
    pub af_hash: String,
    /// Area position in bytes from the start of the device (header file).
    pub area_offset: u64,
    pub area_size: u64,
    /// Cipher spec that encrypts the area ("aes-xts-plain64").
    pub area_encryption: String,
    /// Key size of the area cipher in bytes.
    pub area_key_size: u32,
    pub kdf: Kdf,
    pub priority: Priority,
}

impl Luks2Keyslot {
    /// Parse a keyslot object of type `luks2`.
    pub fn parse(k: &Obj, id: u32) -> Result<Self> {
        let what = format!("keyslot {id}");
        let t = get_str(k, "type", &what)?;
        if t != "luks2" {
            bail!(Unsupported, "LUKS2 {what} has type \"{t}\", not \"luks2\"");
        }
        let af = get_obj(k, "af", &what)?;
        let area = get_obj(k, "area", &what)?;
        let kdf = get_obj(k, "kdf", &what)?;
        let (afw, aw) = (format!("{what} af"), format!("{what} area"));
        Ok(Luks2Keyslot {
            key_size: get_u32(k, "key_size", &what)?,
            af_stripes: get_u32(af, "stripes", &afw)?,
            af_hash: get_str(af, "hash", &afw)?.to_string(),
            area_offset: get_u64_str(area, "offset", &aw)?,
            area_size: get_u64_str(area, "size", &aw)?,
            area_encryption: get_str(area, "encryption", &aw)?.to_string(),
            area_key_size: get_u32(area, "key_size", &aw)?,
            kdf: Kdf::parse(kdf, &format!("{what} kdf"))?,
            priority: Priority::from_json(k.get("priority"), &what)?,
        })
    }

    /// JSON in cryptsetup's field order (type, key_size, af, area, kdf, priority).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "type": "luks2",
            "key_size": self.key_size,
            "af": {"type": "luks1", "stripes": self.af_stripes, "hash": self.af_hash},
            "area": {"type": "raw", "offset": self.area_offset.to_string(),
                     "size": self.area_size.to_string(),
                     "encryption": self.area_encryption, "key_size": self.area_key_size},
            "kdf": self.kdf.to_json(),
        });
        if let (Some(p), Some(m)) = (self.priority.to_json(), v.as_object_mut()) {
            m.insert("priority".into(), p.into());
        }
        v
    }
}

/// What kind of keyslot an id holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyslotKind {
    Luks2(Luks2Keyslot),
    /// Reencryption metadata (`type reencrypt`): not a key; its area is in use.
    Reencrypt {
        mode: String,
        direction: String,
    },
    /// A type vmcrypt does not know; kept as is.
    Unknown(String),
}

/// A keyslot: id, kind and area (every keyslot type owns an area).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyslot {
    pub id: u32,
    pub kind: KeyslotKind,
    pub area_offset: u64,
    pub area_size: u64,
}

impl Keyslot {
    pub(crate) fn parse(key: &str, k: &Obj) -> Result<Self> {
        let id = parse_id(key, "keyslot", KEYSLOTS_MAX)?;
        let what = format!("keyslot {id}");
        let (area_offset, area_size) = super::validate::area_bounds(k, &what)?;
        let kind = match get_str(k, "type", &what)? {
            "luks2" => KeyslotKind::Luks2(Luks2Keyslot::parse(k, id)?),
            "reencrypt" => KeyslotKind::Reencrypt {
                mode: get_str(k, "mode", &what)?.to_string(),
                direction: get_str(k, "direction", &what)?.to_string(),
            },
            other => KeyslotKind::Unknown(other.to_string()),
        };
        Ok(Keyslot {
            id,
            kind,
            area_offset,
            area_size,
        })
    }
}

/// A `pbkdf2` digest: verifies a volume key and binds keyslots to segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub id: u32,
    /// Digest type; only "pbkdf2" has the fields below filled in.
    pub kind: String,
    pub keyslots: Vec<u32>,
    pub segments: Vec<u32>,
    pub hash: String,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
}

fn id_list(arr: &[Value], what: &str, max: u32) -> Result<Vec<u32>> {
    str_array(arr, what)?
        .into_iter()
        .map(|s| parse_id(s, what, max))
        .collect()
}

impl Digest {
    pub(crate) fn parse(key: &str, d: &Obj) -> Result<Self> {
        let id = parse_id(key, "digest", super::DIGESTS_MAX)?;
        let what = format!("digest {id}");
        let kind = get_str(d, "type", &what)?.to_string();
        let keyslots = id_list(
            super::jsonutil::get_arr(d, "keyslots", &what)?,
            &format!("{what} keyslots"),
            KEYSLOTS_MAX,
        )?;
        let segments = id_list(
            super::jsonutil::get_arr(d, "segments", &what)?,
            &format!("{what} segments"),
            SEGMENTS_MAX,
        )?;
        if kind != "pbkdf2" {
            bail!(
                Unsupported,
                "LUKS2 {what}: unsupported digest type \"{kind}\""
            );
        }
        Ok(Digest {
            id,
            kind,
            keyslots,
            segments,
            hash: get_str(d, "hash", &what)?.to_string(),
            iterations: get_u32(d, "iterations", &what)?,
            salt: base64::decode(get_str(d, "salt", &what)?, &format!("{what} salt"))?,
            digest: base64::decode(get_str(d, "digest", &what)?, &format!("{what} digest"))?,
        })
    }

    /// JSON in cryptsetup's field order.
    pub fn to_json(&self) -> Value {
        let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>();
        json!({"type": self.kind, "keyslots": ids(&self.keyslots),
               "segments": ids(&self.segments), "hash": self.hash,
               "iterations": self.iterations, "salt": base64::encode(&self.salt),
               "digest": base64::encode(&self.digest)})
    }
}

/// Size of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentSize {
    /// To the end of the device.
    Dynamic,
    Bytes(u64),
}

/// A data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub id: u32,
    /// "crypt", "linear", ...
    pub kind: String,
    pub offset: u64,
    pub size: SegmentSize,
    pub flags: Vec<String>,
    /// For "crypt": IV offset (in 512-byte units) added to the sector number.
    pub iv_tweak: u64,
    /// For "crypt": cipher spec ("aes-xts-plain64").
    pub encryption: String,
    /// For "crypt": encryption sector size.
    pub sector_size: u32,
    /// For "crypt": the dm-integrity type, if any.
    pub integrity: Option<String>,
}

impl Segment {
    pub(crate) fn parse(key: &str, s: &Obj) -> Result<Self> {
        let id = parse_id(key, "segment", SEGMENTS_MAX)?;
        let what = format!("segment {id}");
        let kind = get_str(s, "type", &what)?.to_string();
        let size = match get_str(s, "size", &what)? {
            "dynamic" => SegmentSize::Dynamic,
            _ => SegmentSize::Bytes(get_u64_str(s, "size", &what)?),
        };
        let flags = match s.get("flags") {
            Some(_) => str_array(super::jsonutil::get_arr(s, "flags", &what)?, &what)?
                .into_iter()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        };
        let crypt = kind == "crypt";
        Ok(Segment {
            id,
            offset: get_u64_str(s, "offset", &what)?,
            size,
            flags,
            iv_tweak: if crypt {
                get_u64_str(s, "iv_tweak", &what)?
            } else {
                0
            },
            encryption: if crypt {
                get_str(s, "encryption", &what)?.to_string()
            } else {
                String::new()
            },
            sector_size: if crypt {
                get_u32(s, "sector_size", &what)?
            } else {
                512
            },
            integrity: match s.get("integrity") {
                Some(_) => Some(get_str(get_obj(s, "integrity", &what)?, "type", &what)?.into()),
                None => None,
            },
            kind,
        })
    }

    /// True for "backup-*" segments kept by reencryption.
    pub fn is_backup(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("backup-"))
    }
}

/// A token: type, keyslots it unlocks, and the whole object (unknown fields kept).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    pub kind: String,
    pub keyslots: Vec<u32>,
    pub json: Obj,
}

impl Token {
    pub(crate) fn parse(key: &str, t: &Obj) -> Result<Self> {
        let id = parse_id(key, "token", super::TOKENS_MAX)?;
        let what = format!("token {id}");
        Ok(Token {
            id,
            kind: get_str(t, "type", &what)?.to_string(),
            keyslots: id_list(
                super::jsonutil::get_arr(t, "keyslots", &what)?,
                &format!("{what} keyslots"),
                KEYSLOTS_MAX,
            )?,
            json: t.clone(),
        })
    }
}

/// The `config` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub json_size: u64,
    pub keyslots_size: u64,
    pub flags: Vec<String>,
    /// `requirements.mandatory`.
    pub mandatory_requirements: Vec<String>,
}

impl Config {
    pub(crate) fn parse(c: &Obj) -> Result<Self> {
        let strings = |v: Option<&Value>, what: &str| -> Result<Vec<String>> {
            match v {
                None => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(str_array(a, what)?
                    .into_iter()
                    .map(str::to_string)
                    .collect()),
                Some(_) => bail!(Corrupt, "LUKS2 metadata: {what} is not an array"),
            }
        };
        let req = match c.get("requirements") {
            Some(_) => get_obj(c, "requirements", "config")?.get("mandatory"),
            None => None,
        };
        Ok(Config {
            json_size: get_u64_str(c, "json_size", "config")?,
            keyslots_size: get_u64_str(c, "keyslots_size", "config")?,
            flags: strings(c.get("flags"), "config flags")?,
            mandatory_requirements: strings(req, "config requirements mandatory")?,
        })
    }
}
