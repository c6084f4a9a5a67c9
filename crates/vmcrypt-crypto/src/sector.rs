//! [`SectorCipher`]: a keyed sector cipher, the thing the luks block driver calls.
//!
//! Modes are XTS (IEEE 1619 without ciphertext stealing, as dm-crypt runs it: the IV
//! generator's output is the tweak block), CBC (the chain restarts at every sector with
//! that sector's IV), ECB and LRW (the kernel's `lrw(...)`: the IV is the big-endian
//! index of the sector's first block, see [`crate::lrw`]), over any
//! [`crate::CipherFamily`], with the dm-crypt IV generators plain, plain64, plain64be,
//! essiv:HASH, benbi and null.
//!
//! Work is batched so that the block cipher sees long runs of independent blocks (which
//! is what lets AES-NI pipeline): XTS computes every tweak of a chunk first and then
//! encrypts the chunk in one call (LRW likewise); CBC encryption interleaves the chains
//! of all sectors of a chunk; CBC decryption decrypts a whole chunk at once and XORs
//! afterwards, except AES-CBC decryption, which runs on the [`crate::aes_cbc`] kernels
//! (the XOR folded into the last AES round, no copy of the chunk).
use crate::aes_cbc::AesCbc;
use crate::aes_xts::AesXts;
use crate::blockcipher::{BlockCipher, new_block_cipher};
use crate::lrw::{LrwKey, TWEAK_KEY_BYTES};
use crate::{CipherFamily, CipherMode, CipherSpec, IvGen};
use vmcrypt_error::{Result, bail};
use zeroize::Zeroizing;

/// Bytes processed per batch: big enough to amortise per-batch work, small enough that
/// the data and its tweaks stay in L1/L2.
const CHUNK_BYTES: usize = 16 * 1024;

/// A cipher keyed with a volume key (or a key-slot key), encrypting runs of sectors.
///
/// `iv_sector` is the dm-crypt IV sector number of the first sector in `data`; each
/// following sector of `sector_size` bytes advances it by `sector_size / 512` (LUKS2 does
/// not set `iv_large_sectors`). `data.len()` must be a multiple of `sector_size`,
/// `sector_size` a power of two in 512..=4096.
/// Holds expanded keys; they are zeroized on drop.
pub struct SectorCipher {
    spec: CipherSpec,
    backend: Backend,
    iv: IvSource,
}

/// The engine doing the bulk work: the single place that picks an implementation.
///
/// AES-XTS with plain64 IVs (the LUKS and QEMU default) runs on the fast
/// [`crate::aes_xts::AesXts`] kernel: its tweak le128(sector) equals the plain64 IV, so it
/// takes the whole buffer at once. Every other combination uses the generic paths.
enum Backend {
    /// AES-XTS-plain64 on the VAES/AES-NI kernels.
    AesXts(AesXts),
    /// XTS over any 16-byte block cipher: `data` = first key half, `tweak` = second.
    Xts {
        data: Box<dyn BlockCipher>,
        tweak: Box<dyn BlockCipher>,
    },
    Cbc(Box<dyn BlockCipher>),
    /// AES-CBC: decryption on the VAES/AES-NI kernels, encryption on the generic path.
    AesCbc(AesCbc),
    Ecb(Box<dyn BlockCipher>),
    /// LRW: the block cipher keyed with K1 and the tables of the tweak key K2.
    Lrw {
        data: Box<dyn BlockCipher>,
        tweak: LrwKey,
    },
}

/// An IV generator bound to a cipher block size (and, for ESSIV, to its own cipher).
struct IvSource {
    kind: IvGen,
    /// IV length = cipher block size.
    len: usize,
    /// ESSIV: the family cipher keyed with H(volume key).
    essiv: Option<Box<dyn BlockCipher>>,
    /// benbi: log2(512 / block size), turning sectors into block counts.
    benbi_shift: u32,
}

impl SectorCipher {
    /// Key `spec` with `key` (`key.len()` must equal `spec.key_bytes`).
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self> {
        spec.validate()?;
        if key.len() != spec.key_bytes {
            bail!(
                Usage,
                "{} needs a {}-byte key, got {} bytes",
                spec.luks2_encryption(),
                spec.key_bytes,
                key.len()
            );
        }
        Ok(SectorCipher {
            spec: *spec,
            backend: Backend::new(spec, key)?,
            iv: IvSource::new(spec, key)?,
        })
    }

    pub fn spec(&self) -> &CipherSpec {
        &self.spec
    }

    /// The hardware AES kernel doing the bulk work ("vaes-avx512", "vaes-avx2", "aesni"
    /// or "soft"; for CBC the decryption kernel), or `None` for the generic paths.
    pub fn kernel(&self) -> Option<&'static str> {
        match &self.backend {
            Backend::AesXts(k) => Some(k.backend()),
            Backend::AesCbc(k) => Some(k.kernel().name()),
            _ => None,
        }
    }

    /// Encrypt `data` in place.
    pub fn encrypt(&self, iv_sector: u64, sector_size: usize, data: &mut [u8]) -> Result<()> {
        self.run(iv_sector, sector_size, data, true)
    }

    /// Decrypt `data` in place.
    pub fn decrypt(&self, iv_sector: u64, sector_size: usize, data: &mut [u8]) -> Result<()> {
        self.run(iv_sector, sector_size, data, false)
    }

    fn run(&self, iv_sector: u64, sector_size: usize, data: &mut [u8], enc: bool) -> Result<()> {
        check_geometry(sector_size, data.len())?;
        let step = (sector_size / 512) as u64;
        if let Backend::AesXts(k) = &self.backend {
            if enc {
                k.encrypt_sectors(iv_sector, step, sector_size, data);
            } else {
                k.decrypt_sectors(iv_sector, step, sector_size, data);
            }
            return Ok(());
        }
        let chunk_len = CHUNK_BYTES.max(sector_size);
        // Only the generic XTS/CBC-decrypt/LRW paths need a chunk-sized work buffer.
        let needs_buf = !matches!(
            (&self.backend, enc),
            (Backend::AesCbc(_) | Backend::Ecb(_), _) | (Backend::Cbc(_), true)
        );
        let buf_len = if needs_buf {
            data.len().min(chunk_len)
        } else {
            0
        };
        let mut scratch =
            Scratch::new(data.len().min(chunk_len), buf_len, sector_size, self.iv.len);
        for (i, chunk) in data.chunks_mut(chunk_len).enumerate() {
            let sectors_before = (i * (chunk_len / sector_size)) as u64;
            let first = iv_sector.wrapping_add(sectors_before.wrapping_mul(step));
            let n = chunk.len() / sector_size;
            let ivs = &mut scratch.ivs[..n * self.iv.len];
            self.iv.fill(first, step, ivs);
            match (&self.backend, enc) {
                (Backend::Xts { data: d, tweak }, _) => xts_chunk(
                    d.as_ref(),
                    tweak.as_ref(),
                    ivs,
                    sector_size,
                    chunk,
                    &mut scratch.buf,
                    enc,
                ),
                (Backend::Cbc(c), true) => cbc_encrypt_chunk(c.as_ref(), ivs, sector_size, chunk),
                (Backend::Cbc(c), false) => {
                    cbc_decrypt_chunk(c.as_ref(), ivs, sector_size, chunk, &mut scratch.buf)
                }
                (Backend::AesCbc(c), true) => {
                    cbc_encrypt_chunk(c.cipher(), ivs, sector_size, chunk)
                }
                (Backend::AesCbc(c), false) => c
                    .decrypt_sectors(ivs, sector_size, chunk)
                    .expect("whole sectors with one IV each"),
                (Backend::Ecb(c), true) => c.encrypt_blocks(chunk),
                (Backend::Ecb(c), false) => c.decrypt_blocks(chunk),
                (Backend::AesXts(_), _) => unreachable!("handled before the chunk loop"),
                (Backend::Lrw { data: d, tweak }, _) => lrw_chunk(
                    d.as_ref(),
                    tweak,
                    ivs,
                    sector_size,
                    chunk,
                    &mut scratch.buf,
                    enc,
                ),
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Backend {
    fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self> {
        Ok(match spec.mode {
            CipherMode::Xts if spec.family == CipherFamily::Aes && spec.ivgen == IvGen::Plain64 => {
                Backend::AesXts(AesXts::new(key)?)
            }
            CipherMode::Xts => {
                let (k1, k2) = key.split_at(key.len() / 2);
                Backend::Xts {
                    data: new_block_cipher(spec.family, k1)?,
                    tweak: new_block_cipher(spec.family, k2)?,
                }
            }
            CipherMode::Cbc if spec.family == CipherFamily::Aes => {
                Backend::AesCbc(AesCbc::new(key)?)
            }
            CipherMode::Cbc => Backend::Cbc(new_block_cipher(spec.family, key)?),
            CipherMode::Ecb => Backend::Ecb(new_block_cipher(spec.family, key)?),
            CipherMode::Lrw => {
                let (k1, k2) = key.split_at(key.len() - TWEAK_KEY_BYTES);
                let k2 = Zeroizing::new(<[u8; TWEAK_KEY_BYTES]>::try_from(k2).expect("16 bytes"));
                Backend::Lrw {
                    data: new_block_cipher(spec.family, k1)?,
                    tweak: LrwKey::new(&k2),
                }
            }
        })
    }
}

impl IvSource {
    fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self> {
        let len = spec.block_size();
        let essiv = match (spec.mode, spec.ivgen) {
            (CipherMode::Ecb, _) => None,
            // dm-crypt hashes the whole volume key (both XTS halves) and keys the same
            // cipher family with the digest, whatever the data key size is.
            (_, IvGen::Essiv(h)) => {
                let salt = Zeroizing::new(h.digest(key));
                Some(new_block_cipher(spec.family, &salt)?)
            }
            _ => None,
        };
        Ok(IvSource {
            kind: spec.ivgen,
            len,
            essiv,
            benbi_shift: 9 - len.trailing_zeros(),
        })
    }

    /// Write the IVs of `out.len() / self.len` consecutive sectors, the first with IV
    /// sector `first`, each next one `step` further.
    fn fill(&self, first: u64, step: u64, out: &mut [u8]) {
        let len = self.len;
        out.fill(0);
        for (k, iv) in out.chunks_exact_mut(len).enumerate() {
            let sector = first.wrapping_add((k as u64).wrapping_mul(step));
            match self.kind {
                IvGen::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
                IvGen::Plain64 | IvGen::Essiv(_) => iv[..8].copy_from_slice(&sector.to_le_bytes()),
                IvGen::Plain64Be => iv[len - 8..].copy_from_slice(&sector.to_be_bytes()),
                IvGen::Benbi => {
                    let count = (sector << self.benbi_shift).wrapping_add(1);
                    iv[len - 8..].copy_from_slice(&count.to_be_bytes());
                }
                IvGen::Null => {}
            }
        }
        if let Some(essiv) = &self.essiv {
            essiv.encrypt_blocks(out);
        }
    }
}

/// Per-call work buffers, wiped on drop (tweaks and IVs derive from the key).
struct Scratch {
    /// One IV per sector of a chunk.
    ivs: Zeroizing<Vec<u8>>,
    /// XTS tweaks or a copy of CBC ciphertext, one chunk long.
    buf: Zeroizing<Vec<u8>>,
}

impl Scratch {
    /// IVs for a chunk of `chunk_len` bytes, and a `buf_len`-byte work buffer.
    fn new(chunk_len: usize, buf_len: usize, sector_size: usize, iv_len: usize) -> Self {
        Scratch {
            ivs: Zeroizing::new(vec![0u8; chunk_len / sector_size * iv_len]),
            buf: Zeroizing::new(vec![0u8; buf_len]),
        }
    }
}

/// Sector sizes dm-crypt allows, and whole sectors only.
fn check_geometry(sector_size: usize, len: usize) -> Result<()> {
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        bail!(
            Usage,
            "invalid sector size {sector_size} (must be a power of two from 512 to 4096)"
        );
    }
    if !len.is_multiple_of(sector_size) {
        bail!(
            OutOfRange,
            "data length {len} is not a multiple of the sector size {sector_size}"
        );
    }
    Ok(())
}

fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (a, b) in (&mut d).zip(&mut s) {
        xor16(a, b);
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= b;
    }
}

/// XOR one 16-byte block (as a u128, so it is a single vector operation).
fn xor16(dst: &mut [u8], src: &[u8]) {
    let a = u128::from_ne_bytes(dst[..16].try_into().expect("16 bytes"));
    let b = u128::from_ne_bytes(src[..16].try_into().expect("16 bytes"));
    dst[..16].copy_from_slice(&(a ^ b).to_ne_bytes());
}

/// Multiply an XTS tweak by the primitive element alpha of GF(2^128) (little-endian).
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ (((t as i128 >> 127) as u128) & 0x87)
}

/// XTS over whole sectors: tweaks for every block first, then one bulk cipher call.
fn xts_chunk(
    cipher: &dyn BlockCipher,
    tweak_cipher: &dyn BlockCipher,
    ivs: &mut [u8],
    sector_size: usize,
    chunk: &mut [u8],
    tweak_buf: &mut [u8],
    enc: bool,
) {
    tweak_cipher.encrypt_blocks(ivs);
    let tweaks = &mut tweak_buf[..chunk.len()];
    let sectors = chunk
        .chunks_exact_mut(sector_size)
        .zip(tweaks.chunks_exact_mut(sector_size));
    for (iv, (sector, sector_tweaks)) in ivs.chunks_exact(16).zip(sectors) {
        let mut t = u128::from_le_bytes(iv.try_into().expect("16-byte IV"));
        let blocks = sector
            .chunks_exact_mut(16)
            .zip(sector_tweaks.chunks_exact_mut(16));
        for (block, tweak) in blocks {
            let tb = t.to_le_bytes();
            tweak.copy_from_slice(&tb);
            xor16(block, &tb);
            t = mul_alpha(t);
        }
    }
    if enc {
        cipher.encrypt_blocks(chunk);
    } else {
        cipher.decrypt_blocks(chunk);
    }
    xor_in_place(chunk, tweaks);
}

/// LRW over whole sectors: every block's tweak `K2 * (I + j)` first (`I` = the sector's
/// IV as a big-endian block index), then one bulk cipher call.
fn lrw_chunk(
    cipher: &dyn BlockCipher,
    key: &LrwKey,
    ivs: &[u8],
    sector_size: usize,
    chunk: &mut [u8],
    tweak_buf: &mut [u8],
    enc: bool,
) {
    let tweaks = &mut tweak_buf[..chunk.len()];
    let sectors = tweaks.chunks_exact_mut(sector_size);
    for (iv, sector_tweaks) in ivs.chunks_exact(16).zip(sectors) {
        let first = u128::from_be_bytes(iv.try_into().expect("16-byte IV"));
        key.tweaks(first, sector_tweaks);
    }
    xor_in_place(chunk, tweaks);
    if enc {
        cipher.encrypt_blocks(chunk);
    } else {
        cipher.decrypt_blocks(chunk);
    }
    xor_in_place(chunk, tweaks);
}

/// CBC encryption: the chains of all sectors advance together, one block each per
/// cipher call, so the cipher always sees `sectors` independent blocks.
fn cbc_encrypt_chunk(
    cipher: &dyn BlockCipher,
    ivs: &mut [u8],
    sector_size: usize,
    chunk: &mut [u8],
) {
    let bs = cipher.block_size();
    // `ivs` holds the chaining value of every sector: its IV, then its last ciphertext.
    for off in (0..sector_size).step_by(bs) {
        for (s, chain) in ivs.chunks_exact_mut(bs).enumerate() {
            let p = s * sector_size + off;
            xor_in_place(chain, &chunk[p..p + bs]);
        }
        cipher.encrypt_blocks(ivs);
        for (s, chain) in ivs.chunks_exact(bs).enumerate() {
            let p = s * sector_size + off;
            chunk[p..p + bs].copy_from_slice(chain);
        }
    }
}

/// CBC decryption: decrypt every block at once, then XOR each with the ciphertext block
/// before it (or the sector's IV). `copy_buf` is at least `chunk.len()` bytes.
pub(crate) fn cbc_decrypt_chunk(
    cipher: &dyn BlockCipher,
    ivs: &[u8],
    sector_size: usize,
    chunk: &mut [u8],
    copy_buf: &mut [u8],
) {
    let bs = cipher.block_size();
    let copy = &mut copy_buf[..chunk.len()];
    copy.copy_from_slice(chunk);
    cipher.decrypt_blocks(chunk);
    let sectors = chunk
        .chunks_exact_mut(sector_size)
        .zip(copy.chunks_exact(sector_size));
    for ((plain, cipher_text), iv) in sectors.zip(ivs.chunks_exact(bs)) {
        xor_in_place(&mut plain[..bs], iv);
        xor_in_place(&mut plain[bs..], &cipher_text[..sector_size - bs]);
    }
}
