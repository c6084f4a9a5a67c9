//! The `vmcrypt bench` measurement suite: PBKDF2 iterations per second, calibrated
//! Argon2 costs and sector-cipher throughput for the ciphers LUKS volumes use, like
//! `cryptsetup benchmark` (which cannot run its cipher part without dm-crypt).
use crate::argon::{self, Argon2Cost, Argon2Type};
use crate::bench::{Throughput, throughput};
use crate::{CipherSpec, HashAlg, SectorCipher, kdf};
use std::time::Duration;

/// One KDF result.
#[derive(Clone, Debug)]
pub enum KdfRow {
    /// PBKDF2 speed for a 256-bit key.
    Pbkdf2 {
        hash: HashAlg,
        iterations_per_sec: u64,
    },
    /// The Argon2 cost calibrated for a 256-bit key to take about `target`, with
    /// cryptsetup's default memory maximum and lanes.
    Argon2 {
        ty: Argon2Type,
        cost: Argon2Cost,
        target: Duration,
    },
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

/// Argon2 variants calibrated.
pub const ARGON2_TYPES: [Argon2Type; 2] = [Argon2Type::Argon2i, Argon2Type::Argon2id];

/// The Argon2 calibration target for a measurement `budget`: 4 x `budget`, at most
/// cryptsetup's default 2000 ms (so the default 0.5 s budget requests 2000 ms, as
/// `cryptsetup benchmark` does).
pub fn argon2_target(budget: Duration) -> Duration {
    (budget * 4).min(Duration::from_millis(2000))
}

/// PBKDF2 speed and calibrated Argon2 costs for a 256-bit key (as cryptsetup reports
/// them).
pub fn kdf_rows(budget: Duration) -> Vec<KdfRow> {
    let pbkdf2 = KDF_HASHES.iter().map(|&hash| KdfRow::Pbkdf2 {
        hash,
        iterations_per_sec: kdf::pbkdf2_iterations_per_second(hash, 32, budget),
    });
    let target = argon2_target(budget);
    let (memory, lanes) = (
        argon::default_argon2_memory_kib(),
        argon::default_argon2_lanes(),
    );
    let argon2 = ARGON2_TYPES.iter().map(|&ty| KdfRow::Argon2 {
        ty,
        cost: argon::calibrate_argon2(ty, target, memory, lanes, 32),
        target,
    });
    pbkdf2.chain(argon2).collect()
}

/// The comment line `vmcrypt bench` prints above its table: the CPU model, the AES
/// kernel and the SHA-256 kernel of reencryption checksums in use (an error if
/// `VMCRYPT_AES_KERNEL` or `VMCRYPT_SHA256_KERNEL` names one this CPU lacks).
pub fn kernel_line() -> vmcrypt_error::Result<String> {
    Ok(format!(
        "# CPU: {}; AES kernel (XTS, CBC decryption): {}; SHA-256 kernel (checksums): {}",
        crate::aes_xts::cpu_model(),
        crate::aes_xts::Kernel::selected()?,
        crate::sha256_kernel::Sha256Kernel::selected()?.name()
    ))
}

/// One KDF line of the table.
fn render_kdf(row: &KdfRow) -> String {
    match row {
        KdfRow::Pbkdf2 {
            hash,
            iterations_per_sec,
        } => format!(
            "PBKDF2-{:<10} {:>9} iterations per second for 256-bit key\n",
            hash.name(),
            iterations_per_sec
        ),
        KdfRow::Argon2 { ty, cost, target } => format!(
            "{:<17} {:>4} iterations, {:>7} memory, {} parallel threads (CPUs) for 256-bit \
             key (requested {} ms time)\n",
            ty.display_name(),
            cost.time,
            cost.memory_kib,
            cost.lanes,
            target.as_millis()
        ),
    }
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

/// The first line of every `vmcrypt bench` table (cryptsetup's, plus how ciphers run).
pub const APPROXIMATE: &str =
    "# Tests are approximate using memory only (no storage IO), ciphers on one thread.";

/// The table `vmcrypt bench` prints.
pub fn render(kdf: &[KdfRow], ciphers: &[CipherRow]) -> String {
    let mut s = format!("{APPROXIMATE}\n");
    for r in kdf {
        s += &render_kdf(r);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_line_names_cpu_and_kernel() {
        let line = kernel_line().unwrap();
        let kernel = crate::aes_xts::Kernel::selected().unwrap();
        let sha = crate::sha256_kernel::Sha256Kernel::selected().unwrap();
        assert!(line.starts_with("# CPU: "), "{line}");
        assert!(line.contains(&crate::aes_xts::cpu_model()), "{line}");
        assert!(
            line.contains(&format!("(XTS, CBC decryption): {kernel};")),
            "{line}"
        );
        assert!(
            line.ends_with(&format!("(checksums): {}", sha.name())),
            "{line}"
        );
    }

    #[test]
    fn kdf_lines_look_like_cryptsetup() {
        let rows = [
            KdfRow::Pbkdf2 {
                hash: HashAlg::Sha256,
                iterations_per_sec: 1_234_567,
            },
            KdfRow::Argon2 {
                ty: Argon2Type::Argon2id,
                cost: Argon2Cost {
                    time: 4,
                    memory_kib: 1_048_576,
                    lanes: 4,
                },
                target: Duration::from_millis(2000),
            },
        ];
        let text = render(&rows, &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "PBKDF2-sha256       1234567 iterations per second for 256-bit key"
        );
        assert_eq!(
            lines[2],
            "Argon2id             4 iterations, 1048576 memory, 4 parallel threads (CPUs) \
             for 256-bit key (requested 2000 ms time)"
        );
        assert_eq!(argon2_target(Duration::from_millis(500)).as_millis(), 2000);
        assert_eq!(argon2_target(Duration::from_millis(50)).as_millis(), 200);
    }
}
