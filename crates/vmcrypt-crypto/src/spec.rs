//! Cipher specifications: what a LUKS header or a QEMU option names, parsed and validated.
//!
//! LUKS1 stores `cipher_name` ("aes"), `cipher_mode` ("xts-plain64", "cbc-essiv:sha256")
//! and the key bytes; LUKS2 stores one string ("aes-xts-plain64"); QEMU's options split it
//! into cipher-alg ("aes-256"), cipher-mode ("xts"), ivgen-alg ("plain64"), ivgen-hash-alg.
//!
//! Every constructor validates the combination: key sizes per family (XTS doubles the
//! key, LRW appends a 16-byte tweak key), XTS and LRW only over 16-byte blocks, and ESSIV
//! only with a hash whose digest length is a valid key size of the family (dm-crypt keys
//! the ESSIV cipher with H(volume key)). QEMU has no LRW mode.
//!
//! Every IV generator may carry a hash ("plain64:sha256", "benbi:sha1"): QEMU writes one
//! whenever `ivgen-hash-alg` is given, libvirt's `<ivgen hash=...>` and cryptsetup's
//! `-c aes-xts-plain64:sha256` do too. Only ESSIV uses it; dm-crypt and QEMU ignore it
//! for the others (QEMU's `crypto/block-luks.c` parses and then drops it "for compat
//! with dm-crypt"), so it changes no IV. It is kept in
//! [`CipherSpec::unused_iv_hash`] so the mode string is written back as it was read.
use crate::HashAlg;
use vmcrypt_error::{Error, Result, bail};

/// Block cipher family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherFamily {
    Aes,
    Twofish,
    Serpent,
    Cast5,
}

/// Block cipher mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherMode {
    Xts,
    Cbc,
    Ecb,
    /// LRW as the Linux kernel's `lrw(...)` runs it: key = cipher key || 16-byte tweak key.
    Lrw,
}

/// dm-crypt IV generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IvGen {
    /// le32 of the sector number (truncated), zero padded.
    Plain,
    /// le64 of the sector number, zero padded.
    Plain64,
    /// be64 of the sector number, right-aligned in the IV.
    Plain64Be,
    /// Encrypt le64(sector) with the family cipher keyed by H(volume key).
    Essiv(HashAlg),
    /// Big-endian narrow block count, starting at 1.
    Benbi,
    /// All-zero IV.
    Null,
}

/// A complete sector-cipher description plus the total key length in bytes
/// (for XTS: both halves, e.g. 64 for AES-256-XTS; for LRW: cipher key + 16, e.g. 32 for
/// AES-128-LRW).
///
/// For [`CipherMode::Ecb`] the IV generator is unused; it is kept (QEMU writes "ecb-plain64")
/// and is [`IvGen::Null`] for a bare "ecb".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSpec {
    pub family: CipherFamily,
    pub mode: CipherMode,
    pub ivgen: IvGen,
    /// The hash written after a generator that does not use one ("plain64:sha256"):
    /// ignored for the IV, kept so the mode string round-trips. Always `None` for ESSIV,
    /// whose hash is the one in [`IvGen::Essiv`].
    pub unused_iv_hash: Option<HashAlg>,
    pub key_bytes: usize,
}

impl CipherFamily {
    /// All supported families.
    pub const ALL: [CipherFamily; 4] = [
        CipherFamily::Aes,
        CipherFamily::Twofish,
        CipherFamily::Serpent,
        CipherFamily::Cast5,
    ];

    /// Parse "aes", "twofish", "serpent", "cast5" (any case).
    pub fn from_name(name: &str) -> Result<Self> {
        CipherFamily::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::unsupported(format!("unsupported cipher '{name}'")))
    }

    /// The lowercase name LUKS and QEMU use ("aes").
    pub fn name(self) -> &'static str {
        match self {
            CipherFamily::Aes => "aes",
            CipherFamily::Twofish => "twofish",
            CipherFamily::Serpent => "serpent",
            CipherFamily::Cast5 => "cast5",
        }
    }

    /// Block size in bytes (16, or 8 for CAST5).
    pub fn block_size(self) -> usize {
        match self {
            CipherFamily::Cast5 => 8,
            _ => 16,
        }
    }

    /// Key sizes (bytes) of ONE cipher key: 16/24/32, or only 16 for CAST5 as LUKS uses it.
    pub fn key_sizes(self) -> &'static [usize] {
        match self {
            CipherFamily::Cast5 => &[16],
            _ => &[16, 24, 32],
        }
    }

    /// Whether `len` is a valid key size for one cipher of this family.
    pub fn is_valid_key_size(self, len: usize) -> bool {
        self.key_sizes().contains(&len)
    }
}

impl CipherMode {
    /// All supported modes.
    pub const ALL: [CipherMode; 4] = [
        CipherMode::Xts,
        CipherMode::Cbc,
        CipherMode::Ecb,
        CipherMode::Lrw,
    ];

    /// Parse "xts", "cbc", "ecb", "lrw" (any case).
    pub fn from_name(name: &str) -> Result<Self> {
        CipherMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::unsupported(format!("unsupported cipher mode '{name}'")))
    }

    /// The lowercase name ("xts").
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Xts => "xts",
            CipherMode::Cbc => "cbc",
            CipherMode::Ecb => "ecb",
            CipherMode::Lrw => "lrw",
        }
    }

    /// How many block-cipher keys the volume key holds (2 for XTS; LRW holds one plus
    /// a tweak key, see [`CipherMode::total_key_bytes`]).
    pub fn key_parts(self) -> usize {
        match self {
            CipherMode::Xts => 2,
            _ => 1,
        }
    }

    /// The volume key length for one block-cipher key of `cipher_key` bytes: doubled for
    /// XTS, plus the 16-byte tweak key for LRW.
    pub fn total_key_bytes(self, cipher_key: usize) -> usize {
        match self {
            CipherMode::Xts => 2 * cipher_key,
            CipherMode::Lrw => cipher_key + crate::lrw::TWEAK_KEY_BYTES,
            _ => cipher_key,
        }
    }

    /// The length of one block-cipher key inside a `total`-byte volume key, or `None`
    /// if `total` cannot be split that way (odd XTS key, LRW key of 16 bytes or less).
    pub fn cipher_key_bytes(self, total: usize) -> Option<usize> {
        match self {
            CipherMode::Xts => total.is_multiple_of(2).then_some(total / 2),
            CipherMode::Lrw => total
                .checked_sub(crate::lrw::TWEAK_KEY_BYTES)
                .filter(|&k| k > 0),
            _ => Some(total),
        }
    }

    /// Whether the mode needs a 16-byte block cipher (XTS, LRW).
    pub fn needs_16_byte_blocks(self) -> bool {
        matches!(self, CipherMode::Xts | CipherMode::Lrw)
    }
}

impl IvGen {
    /// Parse a dm-crypt IV spec "NAME[:HASH]" ("plain64", "essiv:sha256",
    /// "plain64:sha256", any case): the generator and, for a generator that ignores it,
    /// the hash written after it. ESSIV needs its hash; an unknown hash name is refused
    /// for every generator, as QEMU does.
    pub fn parse_dm(spec: &str) -> Result<(Self, Option<HashAlg>)> {
        let (name, opt) = match spec.split_once(':') {
            Some((n, o)) => (n, Some(o)),
            None => (spec, None),
        };
        let hash = opt
            .map(|h| {
                HashAlg::from_name(h).map_err(|_| {
                    Error::unsupported(format!(
                        "IV generator '{spec}': unsupported hash algorithm '{h}'"
                    ))
                })
            })
            .transpose()?;
        let iv = match name.to_ascii_lowercase().as_str() {
            "essiv" => match hash {
                Some(h) => return Ok((IvGen::Essiv(h), None)),
                None => bail!(
                    Unsupported,
                    "IV generator 'essiv' needs a hash ('essiv:sha256')"
                ),
            },
            "plain" => IvGen::Plain,
            "plain64" => IvGen::Plain64,
            "plain64be" => IvGen::Plain64Be,
            "benbi" => IvGen::Benbi,
            "null" => IvGen::Null,
            _ => bail!(Unsupported, "unsupported IV generator '{name}'"),
        };
        Ok((iv, hash))
    }

    /// The dm-crypt spelling ("plain64", "essiv:sha256").
    pub fn dm_name(self) -> String {
        match self {
            IvGen::Essiv(h) => format!("essiv:{}", h.name()),
            other => other.base_name().to_string(),
        }
    }

    /// The name without options, as QEMU's ivgen-alg spells it ("essiv").
    pub fn base_name(self) -> &'static str {
        match self {
            IvGen::Plain => "plain",
            IvGen::Plain64 => "plain64",
            IvGen::Plain64Be => "plain64be",
            IvGen::Essiv(_) => "essiv",
            IvGen::Benbi => "benbi",
            IvGen::Null => "null",
        }
    }
}

impl CipherSpec {
    /// From LUKS1 fields: `("aes", "xts-plain64", 64)`, `("aes", "cbc-essiv:sha256", 32)`,
    /// `("cast5", "cbc-plain64", 16)`, `("aes", "ecb", 32)` (ECB has no IV part).
    /// Errors name the unsupported or inconsistent part (e.g. key size 24 for cast5).
    pub fn from_luks(cipher_name: &str, cipher_mode: &str, key_bytes: usize) -> Result<Self> {
        let family = CipherFamily::from_name(cipher_name)?;
        let (mode_name, iv_part) = match cipher_mode.split_once('-') {
            Some((m, iv)) => (m, Some(iv)),
            None => (cipher_mode, None),
        };
        let mode = CipherMode::from_name(mode_name)?;
        let (ivgen, unused_iv_hash) = match (mode, iv_part) {
            (CipherMode::Ecb, None) => (IvGen::Null, None),
            // ECB uses no IV, but QEMU writes (and requires) "ecb-plain64" & co.: keep the
            // generator so the name round-trips.
            (_, None) => bail!(
                Unsupported,
                "cipher mode '{mode_name}' needs an IV generator (e.g. '{mode_name}-plain64')"
            ),
            (_, Some(iv)) => IvGen::parse_dm(iv)?,
        };
        let spec = CipherSpec {
            family,
            mode,
            ivgen,
            unused_iv_hash,
            key_bytes,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// From a LUKS2 `encryption` string: "aes-xts-plain64", "aes-cbc-essiv:sha256".
    pub fn from_luks2(encryption: &str, key_bytes: usize) -> Result<Self> {
        match encryption.split_once('-') {
            Some((name, mode)) => Self::from_luks(name, mode, key_bytes),
            None => bail!(
                Unsupported,
                "unsupported encryption '{encryption}' (expected cipher-mode-iv, e.g. \
                 'aes-xts-plain64')"
            ),
        }
    }

    /// From QEMU's option names: cipher-alg "aes-256", cipher-mode "xts",
    /// ivgen-alg "plain64", ivgen-hash-alg "sha256".
    ///
    /// As in QEMU, essiv without a hash uses sha256; a hash given with another generator
    /// does not change the IV but is written into the mode ("xts-plain64:sha256", as
    /// qemu-img writes it); ECB ignores the IV generator. Besides QEMU's
    /// plain/plain64/essiv, the dm-crypt generators plain64be/benbi/null are accepted.
    /// QEMU has no LRW mode, so "lrw" is rejected.
    pub fn from_qemu(
        cipher_alg: &str,
        cipher_mode: &str,
        ivgen_alg: &str,
        ivgen_hash: Option<&str>,
    ) -> Result<Self> {
        let (family, one_key) = parse_qemu_cipher_alg(cipher_alg)?;
        let mode = CipherMode::from_name(cipher_mode)?;
        if mode == CipherMode::Lrw {
            bail!(
                Unsupported,
                "cipher-mode 'lrw' is not supported by QEMU (only dm-crypt/LUKS names it, \
                 e.g. LUKS cipher mode 'lrw-plain64')"
            );
        }
        let unsupported = || Error::unsupported(format!("unsupported ivgen-alg '{ivgen_alg}'"));
        if ivgen_alg.contains(':') {
            return Err(unsupported());
        }
        let hash = match ivgen_hash {
            Some(h) => Some(
                HashAlg::from_name(h)
                    .map_err(|_| Error::unsupported(format!("unsupported ivgen-hash-alg '{h}'")))?,
            ),
            None if ivgen_alg.eq_ignore_ascii_case("essiv") => Some(HashAlg::Sha256),
            None => None,
        };
        let (ivgen, unused_iv_hash) = match hash {
            Some(h) => IvGen::parse_dm(&format!("{ivgen_alg}:{}", h.name())),
            None => IvGen::parse_dm(ivgen_alg),
        }
        .map_err(|_| unsupported())?;
        let key_bytes = mode.total_key_bytes(one_key);
        let spec = CipherSpec {
            family,
            mode,
            ivgen,
            unused_iv_hash,
            key_bytes,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check that family, mode, IV generator and key size fit together.
    pub fn validate(&self) -> Result<()> {
        let fam = self.family.name();
        let mode = self.mode.name();
        if self.mode.needs_16_byte_blocks() && self.family.block_size() != 16 {
            bail!(
                Unsupported,
                "{} needs a 16-byte block cipher, but {fam} has {}-byte blocks",
                mode.to_ascii_uppercase(),
                self.family.block_size()
            );
        }
        let one_key = self.mode.cipher_key_bytes(self.key_bytes);
        if !one_key.is_some_and(|k| self.family.is_valid_key_size(k)) {
            let valid: Vec<String> = self
                .family
                .key_sizes()
                .iter()
                .map(|&k| self.mode.total_key_bytes(k).to_string())
                .collect();
            bail!(
                Unsupported,
                "invalid key size {} bytes for {fam}-{mode} (valid: {})",
                self.key_bytes,
                valid.join(", ")
            );
        }
        if let (IvGen::Essiv(h), CipherMode::Cbc | CipherMode::Xts | CipherMode::Lrw) =
            (self.ivgen, self.mode)
            && !self.family.is_valid_key_size(h.output_len())
        {
            bail!(
                Unsupported,
                "essiv:{h} needs a {}-byte {fam} key, which {fam} does not support",
                h.output_len()
            );
        }
        Ok(())
    }

    /// LUKS1 `cipher_name` ("aes").
    pub fn luks_cipher_name(&self) -> &'static str {
        self.family.name()
    }

    /// LUKS1 `cipher_mode` ("xts-plain64", "cbc-essiv:sha256", "xts-plain64:sha256",
    /// "ecb").
    pub fn luks_cipher_mode(&self) -> String {
        match (self.mode, self.ivgen, self.unused_iv_hash) {
            (CipherMode::Ecb, IvGen::Null, None) => "ecb".to_string(),
            (m, iv, None) => format!("{}-{}", m.name(), iv.dm_name()),
            (m, iv, Some(h)) => format!("{}-{}:{}", m.name(), iv.dm_name(), h.name()),
        }
    }

    /// The LUKS2 `encryption` string ("aes-xts-plain64").
    pub fn luks2_encryption(&self) -> String {
        format!("{}-{}", self.luks_cipher_name(), self.luks_cipher_mode())
    }

    /// QEMU's cipher-alg name: family + bits of ONE cipher key ("aes-256" for a 64-byte
    /// XTS key, "cast5-128"; "aes-128" for a 32-byte LRW key).
    pub fn qemu_cipher_alg(&self) -> String {
        format!("{}-{}", self.family.name(), self.cipher_key_bytes() * 8)
    }

    /// The length of one block-cipher key (the XTS half, the LRW key without its tweak
    /// key); 0 only for a spec that fails [`CipherSpec::validate`].
    pub fn cipher_key_bytes(&self) -> usize {
        self.mode.cipher_key_bytes(self.key_bytes).unwrap_or(0)
    }

    /// QEMU's cipher-mode name ("xts", "cbc", "ecb"; "lrw", which QEMU does not know).
    pub fn qemu_cipher_mode(&self) -> &'static str {
        self.mode.name()
    }

    /// QEMU's ivgen-alg name ("plain64", "essiv", ...); `None` for a bare "ecb".
    pub fn qemu_ivgen_alg(&self) -> Option<&'static str> {
        match (self.mode, self.ivgen) {
            (CipherMode::Ecb, IvGen::Null) => None,
            _ => Some(self.ivgen.base_name()),
        }
    }

    /// QEMU's ivgen-hash-alg ("sha256") as `qemu-img info` shows it: only for essiv
    /// (an unused hash is in [`CipherSpec::unused_iv_hash`]).
    pub fn qemu_ivgen_hash_alg(&self) -> Option<&'static str> {
        match self.ivgen {
            IvGen::Essiv(h) => Some(h.name()),
            _ => None,
        }
    }

    /// The cipher block size in bytes (16, or 8 for cast5).
    pub fn block_size(&self) -> usize {
        self.family.block_size()
    }
}

impl std::fmt::Display for CipherSpec {
    /// "aes-xts-plain64 (512-bit key)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}-bit key)",
            self.luks2_encryption(),
            self.key_bytes * 8
        )
    }
}

/// "aes-256" -> (Aes, 32).
fn parse_qemu_cipher_alg(alg: &str) -> Result<(CipherFamily, usize)> {
    let unsupported = || Error::unsupported(format!("unsupported cipher-alg '{alg}'"));
    let (name, bits) = alg.rsplit_once('-').ok_or_else(unsupported)?;
    let family = CipherFamily::from_name(name).map_err(|_| unsupported())?;
    let bits: usize = bits.parse().map_err(|_| unsupported())?;
    if !bits.is_multiple_of(8) || !family.is_valid_key_size(bits / 8) {
        return Err(unsupported());
    }
    Ok((family, bits / 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmcrypt_error::ErrorKind;

    fn spec(family: CipherFamily, mode: CipherMode, ivgen: IvGen, key_bytes: usize) -> CipherSpec {
        CipherSpec {
            family,
            mode,
            ivgen,
            unused_iv_hash: None,
            key_bytes,
        }
    }

    #[test]
    fn luks1_examples() {
        use CipherFamily::*;
        use CipherMode::*;
        let cases = [
            ("aes", "xts-plain64", 64, spec(Aes, Xts, IvGen::Plain64, 64)),
            (
                "aes",
                "cbc-essiv:sha256",
                16,
                spec(Aes, Cbc, IvGen::Essiv(HashAlg::Sha256), 16),
            ),
            (
                "cast5",
                "cbc-plain64",
                16,
                spec(Cast5, Cbc, IvGen::Plain64, 16),
            ),
            ("aes", "ecb", 32, spec(Aes, Ecb, IvGen::Null, 32)),
            (
                "serpent",
                "cbc-plain",
                16,
                spec(Serpent, Cbc, IvGen::Plain, 16),
            ),
            (
                "twofish",
                "xts-plain64be",
                48,
                spec(Twofish, Xts, IvGen::Plain64Be, 48),
            ),
            ("aes", "cbc-benbi", 24, spec(Aes, Cbc, IvGen::Benbi, 24)),
            ("aes", "cbc-null", 32, spec(Aes, Cbc, IvGen::Null, 32)),
            ("aes", "lrw-plain64", 32, spec(Aes, Lrw, IvGen::Plain64, 32)),
            ("aes", "lrw-benbi", 48, spec(Aes, Lrw, IvGen::Benbi, 48)),
            (
                "serpent",
                "lrw-essiv:sha256",
                40,
                spec(Serpent, Lrw, IvGen::Essiv(HashAlg::Sha256), 40),
            ),
            (
                "aes",
                "xts-essiv:wp256",
                32,
                spec(Aes, Xts, IvGen::Essiv(HashAlg::Wp256), 32),
            ),
            (
                "twofish",
                "cbc-essiv:wp256",
                16,
                spec(Twofish, Cbc, IvGen::Essiv(HashAlg::Wp256), 16),
            ),
        ];
        for (name, mode, kb, want) in cases {
            let got = CipherSpec::from_luks(name, mode, kb).unwrap();
            assert_eq!(got, want, "{name} {mode}");
            assert_eq!(got.luks_cipher_name(), name);
            assert_eq!(got.luks_cipher_mode(), mode);
            let s2 = format!("{name}-{mode}");
            assert_eq!(CipherSpec::from_luks2(&s2, kb).unwrap(), want);
            assert_eq!(got.luks2_encryption(), s2);
        }
    }

    fn unsupported(r: Result<CipherSpec>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        e.message().to_string()
    }

    #[test]
    fn luks1_rejections_name_the_part() {
        let m = unsupported(CipherSpec::from_luks("aes", "ctr-plain64", 32));
        assert_eq!(m, "unsupported cipher mode 'ctr'");
        let m = unsupported(CipherSpec::from_luks("des", "cbc-plain", 8));
        assert_eq!(m, "unsupported cipher 'des'");
        let m = unsupported(CipherSpec::from_luks("aes", "cbc-lmk", 32));
        assert_eq!(m, "unsupported IV generator 'lmk'");
        let m = unsupported(CipherSpec::from_luks("aes", "cbc-essiv:md4", 32));
        assert_eq!(
            m,
            "IV generator 'essiv:md4': unsupported hash algorithm 'md4'"
        );
        let m = unsupported(CipherSpec::from_luks("aes", "xts-plain64:foo", 64));
        assert_eq!(
            m,
            "IV generator 'plain64:foo': unsupported hash algorithm 'foo'"
        );
        let m = unsupported(CipherSpec::from_luks("cast5", "cbc-plain", 24));
        assert!(m.contains("invalid key size 24 bytes for cast5-cbc"), "{m}");
        let m = unsupported(CipherSpec::from_luks("aes", "xts-plain64", 32 + 1));
        assert!(m.contains("valid: 32, 48, 64"), "{m}");
        let m = unsupported(CipherSpec::from_luks("cast5", "xts-plain64", 32));
        assert!(m.contains("XTS needs a 16-byte block"), "{m}");
        let m = unsupported(CipherSpec::from_luks("cast5", "cbc-essiv:sha256", 16));
        assert!(m.contains("essiv:sha256 needs a 32-byte cast5 key"), "{m}");
        let m = unsupported(CipherSpec::from_luks("aes", "cbc-essiv:sha1", 16));
        assert!(m.contains("essiv:sha1 needs a 20-byte aes key"), "{m}");
        unsupported(CipherSpec::from_luks("aes", "cbc", 32));
        unsupported(CipherSpec::from_luks("aes", "cbc-essiv", 32));
        let ecb = CipherSpec::from_luks("aes", "ecb-plain64", 32).unwrap();
        assert_eq!(ecb.luks_cipher_mode(), "ecb-plain64");
        unsupported(CipherSpec::from_luks2("aes", 32));
    }

    #[test]
    fn lrw_key_sizes_and_rejections() {
        for (key_bytes, cipher_key) in [(32, 16), (40, 24), (48, 32)] {
            let s = CipherSpec::from_luks("aes", "lrw-plain64", key_bytes).unwrap();
            assert_eq!(s.cipher_key_bytes(), cipher_key);
            assert_eq!(s.qemu_cipher_alg(), format!("aes-{}", cipher_key * 8));
            assert_eq!(CipherMode::Lrw.total_key_bytes(cipher_key), key_bytes);
        }
        for bad in [0, 16, 24, 33, 64] {
            let m = unsupported(CipherSpec::from_luks("aes", "lrw-plain64", bad));
            assert!(m.contains("for aes-lrw (valid: 32, 40, 48)"), "{m}");
        }
        let m = unsupported(CipherSpec::from_luks("cast5", "lrw-plain64", 32));
        assert!(m.contains("LRW needs a 16-byte block"), "{m}");
        let m = unsupported(CipherSpec::from_luks("aes", "lrw", 32));
        assert!(
            m.contains("needs an IV generator (e.g. 'lrw-plain64')"),
            "{m}"
        );
        // ESSIV keys the cipher with H(whole key): sha1 gives a 20-byte key.
        let m = unsupported(CipherSpec::from_luks("aes", "lrw-essiv:sha1", 32));
        assert!(m.contains("essiv:sha1 needs a 20-byte aes key"), "{m}");
        let m = unsupported(CipherSpec::from_qemu("aes-128", "lrw", "plain64", None));
        assert!(m.contains("'lrw' is not supported by QEMU"), "{m}");
    }

    /// Every generator takes a hash after ':' (QEMU, libvirt and cryptsetup write one);
    /// only ESSIV uses it, the others keep it for the name and compute the same IVs.
    #[test]
    fn hashed_iv_generators_keep_the_hash_and_ignore_it() {
        use crate::SectorCipher;
        let key: Vec<u8> = (0..64u8).collect();
        for iv in ["plain", "plain64", "plain64be", "benbi", "null"] {
            for (mode, kb) in [("xts", 64), ("cbc", 32), ("ecb", 16)] {
                let key = &key[..kb];
                let bare = format!("{mode}-{iv}");
                let plain = CipherSpec::from_luks("aes", &bare, kb).unwrap();
                let mut want = vec![7u8; 4096];
                SectorCipher::new(&plain, key)
                    .unwrap()
                    .encrypt(5, 512, &mut want)
                    .unwrap();
                for h in HashAlg::ALL {
                    let name = format!("{bare}:{}", h.name());
                    let s = CipherSpec::from_luks("aes", &name, kb).unwrap();
                    assert_eq!(
                        (s.ivgen, s.unused_iv_hash),
                        (plain.ivgen, Some(h)),
                        "{name}"
                    );
                    assert_eq!(s.luks_cipher_mode(), name);
                    assert_eq!(s.luks2_encryption(), format!("aes-{name}"));
                    assert_eq!(
                        CipherSpec::from_luks2(&format!("aes-{name}"), kb).unwrap(),
                        s
                    );
                    let mut got = vec![7u8; 4096];
                    let c = SectorCipher::new(&s, key).unwrap();
                    c.encrypt(5, 512, &mut got).unwrap();
                    assert_eq!(got, want, "{name} must encrypt as {bare}");
                }
            }
        }
        let s = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 32).unwrap();
        assert_eq!(s.unused_iv_hash, None);
    }

    #[test]
    fn qemu_ivgen_hash_is_written_for_every_generator() {
        for (iv, hash, want) in [
            ("plain64", Some("sha256"), "xts-plain64:sha256"),
            ("plain", Some("sm3"), "xts-plain:sm3"),
            ("plain64", None, "xts-plain64"),
            ("essiv", None, "xts-essiv:sha256"),
            ("essiv", Some("md5"), "xts-essiv:md5"),
            ("benbi", Some("sha1"), "xts-benbi:sha1"),
        ] {
            let s = CipherSpec::from_qemu("aes-256", "xts", iv, hash).unwrap();
            assert_eq!(s.luks_cipher_mode(), want, "{iv} {hash:?}");
            let ivgen_hash = (iv == "essiv").then(|| want.rsplit(':').next().unwrap());
            assert_eq!(s.qemu_ivgen_hash_alg(), ivgen_hash);
        }
        let s = CipherSpec::from_qemu("aes-128", "ecb", "plain64", Some("sha1")).unwrap();
        assert_eq!(s.luks_cipher_mode(), "ecb-plain64:sha1");
        let m = unsupported(CipherSpec::from_qemu(
            "aes-256",
            "xts",
            "plain64",
            Some("md4"),
        ));
        assert_eq!(m, "unsupported ivgen-hash-alg 'md4'");
    }

    #[test]
    fn modes_round_trip_names() {
        for m in CipherMode::ALL {
            assert_eq!(CipherMode::from_name(m.name()).unwrap(), m);
            assert_eq!(CipherMode::from_name(&m.name().to_uppercase()).unwrap(), m);
        }
    }

    #[test]
    fn qemu_names() {
        let s = CipherSpec::from_qemu("aes-256", "xts", "plain64", None).unwrap();
        assert_eq!(
            s,
            spec(CipherFamily::Aes, CipherMode::Xts, IvGen::Plain64, 64)
        );
        assert_eq!(s.qemu_cipher_alg(), "aes-256");
        assert_eq!(s.qemu_cipher_mode(), "xts");
        assert_eq!(s.qemu_ivgen_alg(), Some("plain64"));

        let s = CipherSpec::from_qemu("aes-128", "cbc", "essiv", Some("sha256")).unwrap();
        assert_eq!(s.luks_cipher_mode(), "cbc-essiv:sha256");
        assert_eq!(s.key_bytes, 16);
        assert_eq!(s.qemu_ivgen_alg(), Some("essiv"));
        assert_eq!(s.qemu_ivgen_hash_alg(), Some("sha256"));

        let s = CipherSpec::from_qemu("cast5-128", "cbc", "plain", Some("sha1")).unwrap();
        assert_eq!(s.ivgen, IvGen::Plain);
        assert_eq!(s.qemu_cipher_alg(), "cast5-128");
        assert_eq!(s.block_size(), 8);

        let s = CipherSpec::from_qemu("serpent-192", "ecb", "plain64", None).unwrap();
        assert_eq!(s.qemu_ivgen_alg(), Some("plain64"));
        assert_eq!(s.luks_cipher_mode(), "ecb-plain64");
        assert_eq!(s.key_bytes, 24);
        let s = CipherSpec::from_qemu("twofish-128", "xts", "benbi", None).unwrap();
        assert_eq!(s.key_bytes, 32);

        for (alg, mode, iv) in [
            ("aes-512", "xts", "plain64"),
            ("cast5-256", "cbc", "plain64"),
            ("des-56", "cbc", "plain64"),
            ("aes", "cbc", "plain64"),
            ("aes-256", "ctr", "plain64"),
            ("aes-256", "cbc", "lmk"),
            ("aes-256", "cbc", "essiv:sha256"),
        ] {
            unsupported(CipherSpec::from_qemu(alg, mode, iv, None));
        }
    }
}
