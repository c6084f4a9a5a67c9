//! The parameter and result types of the LUKS API, the same for LUKS1 and LUKS2: how a
//! new key slot derives its key ([`KeyslotParams`]), how a new volume is laid out
//! ([`CreateParams`]), what an unlock found ([`Unlocked`]) and what a kill removed
//! ([`KillReport`]). Key-slot ids are `u32` for both versions.
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::{Result, bail, ensure};
use vmcrypt_format::luks1::Layout;
use vmcrypt_format::luks2::Priority;

/// The LUKS version of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// 1 or 2.
    pub fn number(self) -> u16 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// The KDF family of a new keyslot (LUKS1 key slots are always PBKDF2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfKind {
    Pbkdf2,
    Argon2i,
    Argon2id,
}

impl KdfKind {
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "pbkdf2" => Ok(KdfKind::Pbkdf2),
            "argon2i" => Ok(KdfKind::Argon2i),
            "argon2id" => Ok(KdfKind::Argon2id),
            _ => bail!(Usage, "unknown pbkdf '{s}' (pbkdf2, argon2i or argon2id)"),
        }
    }
}

/// How a new key slot derives its key (cryptsetup's `--pbkdf*`, `--iter-time` and
/// `--hash` options). LUKS1 uses PBKDF2 with the header's hash and reads only
/// `iter_time_ms` and `iterations` when adding a key; creating a LUKS1 volume takes its
/// hash from `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyslotParams {
    pub kdf: KdfKind,
    /// PBKDF2 hash and AF hash.
    pub hash: HashAlg,
    /// Target unlock time in ms, when no cost is forced.
    pub iter_time_ms: u32,
    /// Forced PBKDF2 iterations or Argon2 time cost.
    pub iterations: Option<u32>,
    /// Argon2 memory in KiB (default: min(1 GiB, half of RAM)).
    pub memory_kib: Option<u32>,
    /// Argon2 lanes (default: min(4, CPUs)).
    pub parallel: Option<u32>,
    pub priority: Priority,
    /// `change-key` on a LUKS1 header with no free slot may rewrite the slot in place
    /// (cryptsetup's behaviour: an interruption then loses that slot). Off unless the
    /// user asks for it.
    pub in_place: bool,
}

impl Default for KeyslotParams {
    fn default() -> Self {
        KeyslotParams {
            kdf: KdfKind::Argon2id,
            hash: HashAlg::Sha256,
            iter_time_ms: 2000,
            iterations: None,
            memory_kib: None,
            parallel: None,
            priority: Priority::Normal,
            in_place: false,
        }
    }
}

/// cryptsetup's default data offset for LUKS2 (16 MiB).
pub const DEFAULT_DATA_OFFSET: u64 = 16 << 20;
/// cryptsetup's default LUKS2 metadata (one header copy) size.
pub const DEFAULT_HDR_SIZE: u64 = 16 << 10;

/// Parameters of a new LUKS volume, either version. Start from [`CreateParams::luks1`]
/// or [`CreateParams::luks2`] (cryptsetup's defaults); fields marked LUKS1 or LUKS2 are
/// read only by that version.
#[derive(Clone, Debug)]
pub struct CreateParams {
    pub version: Version,
    pub spec: CipherSpec,
    /// The first key slot's KDF (and, for LUKS1, the header's hash).
    pub keyslot: KeyslotParams,
    /// Key slot for the first passphrase.
    pub slot: u32,
    /// The header lives in its own file; the data offset is 0 unless `data_offset`.
    pub detached: bool,
    /// Data offset in bytes (LUKS1: a multiple of 512); default from the layout.
    pub data_offset: Option<u64>,
    pub uuid: Option<String>,
    /// Use this volume key instead of a random one.
    pub volume_key: Option<SecretBytes>,
    /// LUKS1: where key material and payload go.
    pub layout: Layout,
    /// LUKS2: data sector size, 512..=4096, a power of two.
    pub sector_size: u32,
    /// LUKS2: one header copy (binary + JSON), 16 KiB .. 4 MiB.
    pub hdr_size: u64,
    /// LUKS2: keyslots area; default up to the data offset (or 16 MiB - 2 headers).
    pub keyslots_size: Option<u64>,
    /// LUKS2 label.
    pub label: String,
    /// LUKS2 subsystem.
    pub subsystem: String,
}

impl CreateParams {
    /// cryptsetup's LUKS1 defaults for `spec` (PBKDF2 with SHA-256, 2 s).
    pub fn luks1(spec: CipherSpec) -> Self {
        CreateParams {
            version: Version::V1,
            keyslot: KeyslotParams {
                kdf: KdfKind::Pbkdf2,
                ..KeyslotParams::default()
            },
            ..CreateParams::luks2(spec)
        }
    }

    /// cryptsetup's LUKS2 defaults for `spec` (Argon2id, 4096-byte sectors, data at 16 MiB).
    pub fn luks2(spec: CipherSpec) -> Self {
        CreateParams {
            version: Version::V2,
            spec,
            keyslot: KeyslotParams::default(),
            slot: 0,
            detached: false,
            data_offset: None,
            uuid: None,
            volume_key: None,
            layout: Layout::default(),
            sector_size: 4096,
            hdr_size: DEFAULT_HDR_SIZE,
            keyslots_size: None,
            label: String::new(),
            subsystem: String::new(),
        }
    }

    /// LUKS1: the payload offset override in 512-byte sectors.
    pub(crate) fn payload_sectors(&self) -> Result<Option<u32>> {
        let Some(off) = self.data_offset else {
            return Ok(None);
        };
        ensure!(
            off.is_multiple_of(512) && off / 512 <= u64::from(u32::MAX),
            Usage,
            "LUKS1 data offset {off} is not a multiple of 512 bytes or too large"
        );
        Ok(Some((off / 512) as u32))
    }
}

/// A key slot opened with a passphrase.
pub struct Unlocked {
    pub slot: u32,
    /// The digest the key matched (LUKS1 has one, 0).
    pub digest: u32,
    pub volume_key: SecretBytes,
    /// The key is bound to the data segment (always for LUKS1; false for LUKS2
    /// `--unbound` keys).
    pub bound: bool,
}

/// What a kill did besides removing the slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillReport {
    /// Tokens that were bound only to the killed slot and were removed with it (LUKS2).
    pub dropped_tokens: Vec<u32>,
}

/// What a passphrase change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeReport {
    /// The slot the old passphrase opened.
    pub from: u32,
    /// Where the new passphrase went when the slot id may change (LUKS1 moves it to a
    /// free slot when there is one); `None` when the id is kept by design (LUKS2).
    pub to: Option<u32>,
}
