//! Creating a LUKS2 volume with cryptsetup's layout and defaults: two 16 KiB header copies,
//! a keyslots area filling the space up to the data, data at 16 MiB (or offset 0 in a
//! separate file with a detached header), 4096-byte sectors, Argon2id.
use super::keyslots::{area_size, write_sealed};
use super::{Luks2Volume, header_hasher};
use crate::driver::BlockDriver;
use crate::drivers::luks::fresh::{new_uuid, new_volume_key};
use crate::drivers::luks::params::{CreateParams, DEFAULT_DATA_OFFSET, KdfKind, KeyslotParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{SecretBytes, kdf, random};
use vmcrypt_error::{Result, ResultExt, ensure};
use vmcrypt_format::luks2::{
    BIN_HEADER_SIZE, BinaryHeader, Digest, HeaderCopy, Luks2Header, MAX_KEYSLOTS_SIZE, Metadata,
    is_legal_hdr_size,
};

impl CreateParams {
    /// LUKS2: (data offset, keyslots size) after defaults and checks.
    pub fn luks2_layout(&self) -> Result<(u64, u64)> {
        ensure!(
            is_legal_hdr_size(self.hdr_size),
            Usage,
            "invalid LUKS2 metadata size {} (16k, 32k, ... 4m)",
            self.hdr_size
        );
        ensure!(
            crate::drivers::luks::is_data_sector_size(self.sector_size),
            Usage,
            "invalid sector size {} (512, 1024, 2048 or 4096)",
            self.sector_size
        );
        ensure!(
            self.label.len() < 48 && self.subsystem.len() < 48,
            Usage,
            "label and subsystem are limited to 47 bytes"
        );
        let headers = 2 * self.hdr_size;
        let data_offset = match (self.data_offset, self.detached) {
            (Some(d), _) => d,
            (None, true) => 0,
            (None, false) => DEFAULT_DATA_OFFSET.max(headers + self.keyslots_size.unwrap_or(0)),
        };
        let keyslots = match self.keyslots_size {
            Some(k) => k,
            None if data_offset >= headers + (1 << 20) => data_offset - headers,
            None => DEFAULT_DATA_OFFSET - headers,
        };
        ensure!(
            keyslots % 4096 == 0 && keyslots <= MAX_KEYSLOTS_SIZE,
            Usage,
            "invalid keyslots size {keyslots} (4 KiB aligned, at most 128 MiB)"
        );
        ensure!(
            data_offset == 0 || data_offset >= headers + keyslots,
            Usage,
            "data offset {data_offset} overlaps the LUKS2 metadata and keyslots ({} bytes)",
            headers + keyslots
        );
        ensure!(
            data_offset % u64::from(self.sector_size) == 0,
            Usage,
            "data offset {data_offset} is not a multiple of the sector size"
        );
        ensure!(
            area_size(self.spec.key_bytes) <= keyslots,
            Usage,
            "keyslots area of {keyslots} bytes is too small for one key slot"
        );
        Ok((data_offset, keyslots))
    }
}

impl Luks2Volume {
    /// Create a LUKS2 volume on `dev` with `passphrase` in `params.slot`.
    /// Writes: zeros over both headers and the keyslots area, the key material, then the
    /// two header copies.
    pub fn create(
        dev: Arc<dyn BlockDriver>,
        params: &CreateParams,
        passphrase: &[u8],
    ) -> Result<(Self, SecretBytes)> {
        Self::create_with(dev, params, passphrase, &mut |_, _| Ok(()))
    }

    /// [`Self::create`], letting `adjust` change the metadata (given the volume key)
    /// before the one header write (an encryption in place starts in reencryption
    /// state).
    pub(crate) fn create_with(
        dev: Arc<dyn BlockDriver>,
        params: &CreateParams,
        passphrase: &[u8],
        adjust: &mut dyn FnMut(&mut Metadata, &SecretBytes) -> Result<()>,
    ) -> Result<(Self, SecretBytes)> {
        let (data_offset, keyslots_size) = params.luks2_layout()?;
        ensure!(
            params.slot < 32,
            Usage,
            "keyslot {} is out of range (0-31)",
            params.slot
        );
        let key_bytes = params.spec.key_bytes;
        let volume_key = new_volume_key(params.volume_key.as_ref(), key_bytes)?;
        let uuid = new_uuid(params.uuid.as_deref())?;
        let area_start = 2 * params.hdr_size;
        dev.write_zeroes(0, area_start + keyslots_size)
            .ctx("clearing the LUKS2 header area")?;
        let ks = write_sealed(
            dev.as_ref(),
            &params.spec,
            &volume_key,
            passphrase,
            &params.keyslot,
            area_start,
        )?;
        let digest = make_digest(&params.keyslot, &volume_key, params.slot)?;
        let enc = params.spec.luks2_encryption();
        let mut metadata = Metadata::from_value(json!({
            "keyslots": { params.slot.to_string(): ks.to_json() },
            "tokens": {},
            "segments": { "0": {
                "type": "crypt", "offset": data_offset.to_string(), "size": "dynamic",
                "iv_tweak": "0", "encryption": enc, "sector_size": params.sector_size } },
            "digests": { "0": digest.to_json() },
            "config": {
                "json_size": (params.hdr_size - BIN_HEADER_SIZE as u64).to_string(),
                "keyslots_size": keyslots_size.to_string() },
        }))?;
        adjust(&mut metadata, &volume_key)?;
        let mut salts = [[0u8; 64]; 2];
        for s in &mut salts {
            random::fill(s)?;
        }
        let hdr = Luks2Header {
            binary: BinaryHeader {
                copy: HeaderCopy::Primary,
                version: 2,
                hdr_size: params.hdr_size,
                seqid: 1,
                label: params.label.clone(),
                checksum_alg: "sha256".into(),
                salt: salts[0],
                uuid,
                subsystem: params.subsystem.clone(),
                hdr_offset: 0,
                csum: [0; 64],
            },
            primary_salt: salts[0],
            secondary_salt: salts[1],
            metadata,
        };
        let both = hdr.encode_both(&header_hasher)?;
        dev.write_at(&both, 0).ctx("writing the LUKS2 headers")?;
        dev.flush()?;
        let vol = Luks2Volume::open(dev, params.detached, &KdfLimits::default())?;
        Ok((vol, volume_key))
    }
}

/// The pbkdf2 digest of a new volume key, bound to segment 0 and `slot`.
fn make_digest(p: &KeyslotParams, key: &SecretBytes, slot: u32) -> Result<Digest> {
    let mut salt = vec![0u8; 32];
    random::fill(&mut salt)?;
    let iterations = match (p.kdf, p.iterations) {
        (KdfKind::Pbkdf2, Some(i)) => i,
        _ => {
            let per_sec = kdf::pbkdf2_iterations_per_second(
                p.hash,
                p.hash.output_len(),
                Duration::from_millis(100),
            );
            (per_sec / 8).clamp(1000, u64::from(u32::MAX)) as u32
        }
    };
    let mut digest = vec![0u8; p.hash.output_len()];
    kdf::pbkdf2(p.hash, key.as_bytes(), &salt, iterations, &mut digest);
    Ok(Digest {
        id: 0,
        kind: "pbkdf2".into(),
        keyslots: vec![slot],
        segments: vec![0],
        hash: p.hash.name().into(),
        iterations,
        salt,
        digest,
    })
}
