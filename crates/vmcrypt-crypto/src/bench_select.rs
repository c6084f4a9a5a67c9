//! `vmcrypt bench -c CIPHER [-s BITS]`, cryptsetup's `benchmark -c ... -s ...`: one
//! cipher named as cryptsetup names it (`aes-xts`, `aes-xts-plain64`, `serpent-cbc`,
//! `aes` alone meaning `aes-cbc`), measured like every row of the full table and printed
//! in cryptsetup's one-row layout.
//!
//! As in cryptsetup, only the cipher and the mode count: the IV generator part
//! (`-plain64`, `-essiv:sha256`) is dropped and the mode runs with a 64-bit sector IV
//! (no IV for ECB); the key size is the whole key (`-s 512` for `aes-xts` is AES-256 in
//! XTS), 256 bits unless given.
use crate::CipherSpec;
use crate::bench_suite::{APPROXIMATE, CipherRow, cipher_row};
use std::time::Duration;
use vmcrypt_error::{Error, Result, ensure};

/// cryptsetup's key size when `-s` is not given (`DEFAULT_PLAIN_KEYBITS`).
pub const DEFAULT_KEY_BITS: u32 = 256;

/// One cipher to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchCipher {
    /// The block cipher, e.g. "aes".
    pub cipher: String,
    /// The mode without its IV generator, e.g. "xts".
    pub mode: String,
    pub key_bytes: usize,
}

impl BenchCipher {
    /// Parse `-c SPEC` and `-s BITS` as cryptsetup does; a cipher, mode or key size
    /// vmcrypt cannot run is refused now, naming the cipher and key size.
    pub fn parse(spec: &str, key_bits: Option<u32>) -> Result<BenchCipher> {
        let bits = key_bits.unwrap_or(DEFAULT_KEY_BITS);
        ensure!(
            bits > 0 && bits.is_multiple_of(8),
            Usage,
            "-s {bits}: the key size must be a positive multiple of 8 bits"
        );
        let (cipher, mode) = match spec.split_once('-') {
            Some((c, "plain")) => (c, "cbc"),
            Some((c, m)) => (c, m.split('-').next().unwrap_or(m)),
            // cryptsetup reads a bare cipher name as CIPHER-cbc-plain.
            None => (spec, "cbc"),
        };
        ensure!(
            !cipher.is_empty() && !mode.is_empty(),
            Usage,
            "-c '{spec}': no known cipher specification pattern (expected CIPHER-MODE, e.g. aes-xts)"
        );
        let b = BenchCipher {
            cipher: cipher.to_string(),
            mode: mode.to_string(),
            key_bytes: bits as usize / 8,
        };
        b.spec().map_err(|e| {
            Error::usage(format!(
                "cipher {spec} (with {bits} bits key) is not available: {}",
                e.message()
            ))
        })?;
        Ok(b)
    }

    /// The LUKS mode string the measurement runs (`xts-plain64`, `ecb`).
    fn luks_mode(&self) -> String {
        if self.mode == "ecb" {
            self.mode.clone()
        } else {
            format!("{}-plain64", self.mode)
        }
    }

    fn spec(&self) -> Result<CipherSpec> {
        CipherSpec::from_luks(&self.cipher, &self.luks_mode(), self.key_bytes)
    }

    /// Measure it as the full table measures each row (`budget` per run).
    pub fn measure(&self, budget: Duration) -> Result<CipherRow> {
        cipher_row(&self.cipher, &self.luks_mode(), self.key_bytes, budget)
    }
}

/// cryptsetup's table for one cipher: the "approximate" line, the header and the row,
/// right-aligned to the cipher's name (at least 11 columns).
pub fn render_one(row: &CipherRow) -> String {
    let width = row.name.len().max(11);
    format!(
        "{APPROXIMATE}\n#{:pad$} Algorithm |       Key |      Encryption |      Decryption\n\
         {:>width$}  {:>9}b  {:>10.1} MiB/s  {:>10.1} MiB/s\n",
        "",
        row.name,
        row.key_bits,
        row.encrypt.mib_per_sec(),
        row.decrypt.mib_per_sec(),
        pad = width - 11,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Throughput;

    fn parsed(spec: &str, bits: Option<u32>) -> (String, String, usize) {
        let b = BenchCipher::parse(spec, bits).unwrap();
        (b.cipher, b.mode, b.key_bytes)
    }

    #[test]
    fn specs_parse_as_cryptsetup_parses_them() {
        let t = |c: &str, m: &str, k| (c.to_string(), m.to_string(), k);
        assert_eq!(parsed("aes-xts", Some(512)), t("aes", "xts", 64));
        assert_eq!(parsed("aes-xts-plain64", None), t("aes", "xts", 32));
        assert_eq!(parsed("serpent-cbc", Some(256)), t("serpent", "cbc", 32));
        assert_eq!(
            parsed("aes-cbc-essiv:sha256", Some(128)),
            t("aes", "cbc", 16)
        );
        assert_eq!(parsed("twofish", None), t("twofish", "cbc", 32));
        assert_eq!(parsed("aes-plain", None), t("aes", "cbc", 32));
        assert_eq!(parsed("aes-ecb", Some(128)), t("aes", "ecb", 16));
        assert_eq!(parsed("cast5-cbc", Some(128)), t("cast5", "cbc", 16));
    }

    #[test]
    fn what_cannot_run_is_refused_naming_cipher_and_key_size() {
        for (spec, bits, want) in [
            (
                "foo-xts",
                Some(512),
                "cipher foo-xts (with 512 bits key) is not available",
            ),
            (
                "aes-gcm",
                None,
                "cipher aes-gcm (with 256 bits key) is not available",
            ),
            (
                "aes-xts",
                Some(100),
                "-s 100: the key size must be a positive multiple of 8",
            ),
            ("aes-xts", Some(0), "-s 0: the key size must be"),
            (
                "cast5-cbc",
                Some(256),
                "cipher cast5-cbc (with 256 bits key) is not available",
            ),
            ("-xts", None, "no known cipher specification pattern"),
        ] {
            let e = BenchCipher::parse(spec, bits).unwrap_err();
            assert!(e.message().contains(want), "{spec}: {e}");
            assert_eq!(e.kind(), vmcrypt_error::ErrorKind::Usage);
        }
    }

    #[test]
    fn one_row_is_laid_out_as_cryptsetup_lays_it_out() {
        let mib = |m: f64| Throughput {
            median: m * 1024.0 * 1024.0,
            runs: vec![],
        };
        let row = |name: &str, bits| CipherRow {
            name: name.into(),
            key_bits: bits,
            encrypt: mib(2050.6),
            decrypt: mib(812.3),
        };
        // cryptsetup: "#%*s Algorithm |..." padded by width-11, then
        // "%*s-%s  %9db  %10.1f MiB/s  %10.1f MiB/s" right-aligned to that width.
        assert_eq!(
            render_one(&row("aes-xts", 512)),
            APPROXIMATE.to_string()
                + "\n# Algorithm |       Key |      Encryption |      Decryption\n    \
             aes-xts        512b      2050.6 MiB/s       812.3 MiB/s\n"
        );
        assert_eq!(
            render_one(&row("twofish-cbc", 256)).lines().nth(2).unwrap(),
            "twofish-cbc        256b      2050.6 MiB/s       812.3 MiB/s"
        );
        let long = render_one(&row("serpent-xts-x", 256));
        assert!(
            long.lines().nth(1).unwrap().starts_with("#   Algorithm |"),
            "{long}"
        );
    }

    #[test]
    fn a_measured_row_is_named_cipher_dash_mode() {
        let b = BenchCipher::parse("aes-xts-plain64", Some(512)).unwrap();
        let row = b.measure(Duration::from_millis(5)).unwrap();
        assert_eq!((row.name.as_str(), row.key_bits), ("aes-xts", 512));
        assert!(row.encrypt.median > 0.0 && row.decrypt.median > 0.0);
    }
}
