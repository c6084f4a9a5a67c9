//! The `vmcrypt bench` measurement suite: PBKDF2 iterations per second and sector-cipher
//! throughput for the ciphers LUKS volumes use, like `cryptsetup benchmark` (which cannot
//! run its cipher part without dm-crypt).
use crate::bench::{Throughput, throughput};
use crate::{CipherSpec, HashAlg, SectorCipher, kdf};
use std::time::Duration;

/// One PBKDF2 result.
#[derive(Clone, Debug)]
pub struct KdfRow {
    pub hash: HashAlg,
    pub iterations_per_sec: u64,
}

/// One cipher result (MiB/s medians).
#[derive(Clone, Debug)]
pub struct CipherRow {
    /// LUKS2-style name, e.g. "aes-xts".
    pub name: String,
    pub key_bits: usize,
    pub encrypt: Throughput,
    pub decrypt: Throughput,
}

/// The ciphers measured: (LUKS cipher, LUKS mode, key bytes).
pub const CIPHERS: &[(&str, &str, usize)] = &[
    ("aes", "cbc-essiv:sha256", 16),
    ("aes", "cbc-essiv:sha256", 32),
    ("serpent", "cbc-plain64", 32),
    ("twofish", "cbc-plain64", 32),
    ("cast5", "cbc-plain64", 16),
    ("aes", "xts-plain64", 32),
    ("aes", "xts-plain64", 64),
    ("serpent", "xts-plain64", 64),
    ("twofish", "xts-plain64", 64),
    ("aes", "lrw-plain64", 32),
];

/// Hashes measured for PBKDF2.
pub const KDF_HASHES: [HashAlg; 5] = [
    HashAlg::Sha1,
    HashAlg::Sha256,
    HashAlg::Sha512,
    HashAlg::Ripemd160,
    HashAlg::Whirlpool,
];

/// PBKDF2 speed for a 256-bit key (as cryptsetup reports it).
pub fn kdf_rows(budget: Duration) -> Vec<KdfRow> {
    KDF_HASHES
        .iter()
        .map(|&hash| KdfRow {
            hash,
            iterations_per_sec: kdf::pbkdf2_iterations_per_second(hash, 32, budget),
        })
        .collect()
}

/// Throughput of one cipher over a 64 KiB buffer of 512-byte sectors on one thread, median
/// of three runs of at least `budget` each (wall-clock time).
pub fn cipher_row(
    cipher: &str,
    mode: &str,
    key_bytes: usize,
    budget: Duration,
) -> vmcrypt_error::Result<CipherRow> {
    let spec = CipherSpec::from_luks(cipher, mode, key_bytes)?;
    let key: Vec<u8> = (0..key_bytes).map(|i| (i * 37 + 11) as u8).collect();
    let sc = SectorCipher::new(&spec, &key)?;
    let mut buf = vec![0x5au8; 64 * 1024];
    let measure = |buf: &mut [u8], enc: bool| {
        let run = |b: &mut [u8]| {
            let r = if enc {
                sc.encrypt(0, 512, b)
            } else {
                sc.decrypt(0, 512, b)
            };
            r.expect("valid sector buffer");
        };
        throughput(buf, 3, budget, run)
    };
    let encrypt = measure(&mut buf, true);
    let decrypt = measure(&mut buf, false);
    let family = mode.split('-').next().unwrap_or(mode);
    Ok(CipherRow {
        name: format!("{cipher}-{family}"),
        key_bits: key_bytes * 8,
        encrypt,
        decrypt,
    })
}

/// The table `vmcrypt bench` prints.
pub fn render(kdf: &[KdfRow], ciphers: &[CipherRow]) -> String {
    let mut s =
        String::from("# Tests are approximate using memory only (no storage IO), one thread.\n");
    for r in kdf {
        s += &format!(
            "PBKDF2-{:<10} {:>9} iterations per second for 256-bit key\n",
            r.hash.name(),
            r.iterations_per_sec
        );
    }
    s += "#     Algorithm |       Key |      Encryption |      Decryption\n";
    for r in ciphers {
        s += &format!(
            "{:>15}   {:>8}b   {:>10.1} MiB/s   {:>10.1} MiB/s\n",
            r.name,
            r.key_bits,
            r.encrypt.mib_per_sec(),
            r.decrypt.mib_per_sec()
        );
    }
    s
}
