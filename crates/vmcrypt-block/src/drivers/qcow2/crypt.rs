//! Encryption of qcow/qcow2 data clusters.
//!
//! * LUKS (`crypt_method` 2): a LUKS1 header lives in the region the FDE header
//!   extension names; its key-slot offsets are relative to that region, so it is opened
//!   through a [`RawDriver`] window of the file. Data sectors use the IV `host_offset /
//!   512` (the offset in the image file, not the guest offset).
//! * Legacy AES (`crypt_method` 1, qcow2 and qcow v1): AES-128-CBC keyed by the first 16
//!   bytes of the passphrase (zero-padded), IV plain64 of the GUEST sector. Insecure: no
//!   key derivation, predictable IVs.
//!
//! Unallocated and zero clusters are never decrypted; compressed clusters are never
//! encrypted.
use crate::drivers::luks::Luks1Volume;
use crate::drivers::raw::RawDriver;
use crate::{BlockDriver, drivers::luks::v1::dump};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, SectorCipher};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1;
use vmcrypt_format::qcow2::{CryptMethod, FdeRegion};
use zeroize::Zeroizing;

/// The encryption of one image.
pub enum Crypto {
    None,
    Luks {
        volume: Box<Luks1Volume>,
        cipher: Option<SectorCipher>,
        /// The key slot the passphrase opened.
        slot: Option<u32>,
    },
    Aes {
        cipher: Option<SectorCipher>,
    },
}

impl Crypto {
    /// Set up the encryption `method` of `file`. Without `passphrase` the image is
    /// opened for metadata only. `format` is the `encrypt.format` option, if given.
    pub fn open(
        file: &Arc<dyn BlockDriver>,
        method: CryptMethod,
        fde: Option<FdeRegion>,
        passphrase: Option<&[u8]>,
        format: Option<&str>,
        limits: &KdfLimits,
    ) -> Result<Crypto> {
        check_format_option(method, format)?;
        match method {
            CryptMethod::None => {
                ensure!(
                    fde.is_none(),
                    Corrupt,
                    "qcow2: an encryption header extension is present but the image is not LUKS-encrypted"
                );
                Ok(Crypto::None)
            }
            CryptMethod::Aes => Ok(Crypto::Aes {
                cipher: passphrase.map(legacy_aes_cipher).transpose()?,
            }),
            CryptMethod::Luks => open_luks(file, fde, passphrase, limits),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Crypto::None)
    }

    /// Whether data is decrypted with a key nothing could check: legacy AES has no key
    /// digest, so a wrong passphrase reads as garbage instead of failing.
    pub fn key_unverified(&self) -> bool {
        matches!(self, Crypto::Aes { cipher: Some(_) })
    }

    /// The LUKS key slot the passphrase opened.
    pub fn key_slot(&self) -> Option<u32> {
        match self {
            Crypto::Luks { slot, .. } => *slot,
            _ => None,
        }
    }

    /// Whether data can be decrypted (a key was given, or nothing is encrypted).
    pub fn is_unlocked(&self) -> bool {
        match self {
            Crypto::None => true,
            Crypto::Luks { cipher, .. } | Crypto::Aes { cipher } => cipher.is_some(),
        }
    }

    /// Decrypt `buf` (whole 512-byte sectors) read from host offset `host`, holding guest
    /// offset `guest`.
    pub fn decrypt(&self, buf: &mut [u8], host: u64, guest: u64, name: &str) -> Result<()> {
        let (cipher, iv) = match self {
            Crypto::None => return Ok(()),
            Crypto::Luks { cipher, .. } => (cipher, host / 512),
            Crypto::Aes { cipher } => (cipher, guest / 512),
        };
        let Some(c) = cipher else {
            bail!(
                Usage,
                "'{name}' is encrypted: pass its passphrase with encrypt.key-secret=ID and --object secret,id=ID,file=PATH"
            );
        };
        // Large runs are split over threads like the luks node's.
        crate::drivers::luks::crypt(c, iv, 512, buf, false)
    }

    /// Encrypt `buf` (whole 512-byte sectors) for host offset `host` (LUKS only: legacy
    /// AES images are never written).
    pub fn encrypt(&self, buf: &mut [u8], host: u64, name: &str) -> Result<()> {
        let cipher = match self {
            Crypto::None => return Ok(()),
            Crypto::Luks { cipher, .. } => cipher,
            Crypto::Aes { .. } => bail!(ReadOnly, "'{name}': legacy AES images are read-only"),
        };
        let Some(c) = cipher else {
            bail!(Usage, "'{name}' is encrypted and no key was given");
        };
        crate::drivers::luks::crypt(c, host / 512, 512, buf, true)
    }

    /// The `encrypt` object of qemu-img info's qcow2 block.
    pub fn info_json(&self) -> Option<Value> {
        match self {
            Crypto::None => None,
            Crypto::Luks { volume, .. } => {
                let mut out = Map::new();
                let Value::Object(m) = dump::qemu_info_json(volume) else {
                    return None;
                };
                // qemu-img prints "format" right after "uuid".
                for (k, v) in m {
                    let uuid = k == "uuid";
                    out.insert(k, v);
                    if uuid {
                        out.insert("format".into(), json!("luks"));
                    }
                }
                Some(Value::Object(out))
            }
            Crypto::Aes { .. } => Some(json!({"format": "aes", "insecure": true})),
        }
    }
}

fn check_format_option(method: CryptMethod, format: Option<&str>) -> Result<()> {
    let Some(f) = format else { return Ok(()) };
    let actual = match method {
        CryptMethod::None => "none",
        CryptMethod::Aes => "aes",
        CryptMethod::Luks => "luks",
    };
    match f {
        "luks" | "aes" if f == actual => Ok(()),
        "luks" | "aes" => bail!(
            Usage,
            "encrypt.format={f} given, but the image's encryption format is {actual}"
        ),
        other => bail!(
            Usage,
            "unknown encrypt.format '{other}' (supported: luks, aes)"
        ),
    }
}

fn open_luks(
    file: &Arc<dyn BlockDriver>,
    fde: Option<FdeRegion>,
    passphrase: Option<&[u8]>,
    limits: &KdfLimits,
) -> Result<Crypto> {
    let Some(fde) = fde else {
        bail!(
            Corrupt,
            "qcow2: LUKS encryption without an encryption header extension (no LUKS header)"
        );
    };
    ensure!(
        fde.length >= luks1::HEADER_SIZE as u64,
        Corrupt,
        "qcow2: the LUKS header region is only {} bytes",
        fde.length
    );
    let window: Arc<dyn BlockDriver> = Arc::new(
        RawDriver::new(file.clone(), fde.offset, Some(fde.length))
            .ctx("qcow2: the LUKS header region")?,
    );
    let volume = Luks1Volume::open(window, false, limits).ctx("qcow2 embedded LUKS header")?;
    let (cipher, slot) = match passphrase {
        None => (None, None),
        Some(p) => {
            let u = volume.unlock(p, None)?;
            let c = SectorCipher::new(volume.spec(), u.volume_key.as_bytes())?;
            (Some(c), Some(u.slot))
        }
    };
    Ok(Crypto::Luks {
        volume: Box::new(volume),
        cipher,
        slot,
    })
}

/// QEMU's legacy key: the passphrase's first 16 bytes, zero-padded, for AES-128-CBC with
/// plain64 IVs.
pub fn legacy_aes_cipher(passphrase: &[u8]) -> Result<SectorCipher> {
    ensure!(
        !passphrase.is_empty(),
        Usage,
        "the legacy AES passphrase must not be empty"
    );
    let mut key = Zeroizing::new([0u8; 16]);
    let n = passphrase.len().min(16);
    key[..n].copy_from_slice(&passphrase[..n]);
    let spec = CipherSpec::from_luks("aes", "cbc-plain64", 16)?;
    SectorCipher::new(&spec, &key[..])
}
