//! The `luks` format driver: decrypts on read and encrypts on write.
//!
//! A luks node has a `file` child holding the payload and an optional `header` child
//! (a detached LUKS header). Guest offset `g` lives at `payload_offset + g` in `file`
//! and is encrypted in 512-byte sectors with IV sector `g / 512`. Unaligned requests are
//! read-modify-write on whole sectors. Large requests are split over threads.
//!
//! Opened without a passphrase, the node serves metadata only (for `info`, `dump`).
pub mod dump;
pub mod volume;

use crate::driver::{BlockDriver, Child, check_range};
use std::sync::{Arc, Mutex};
use vmcrypt_crypto::SectorCipher;
use vmcrypt_error::{Result, bail};
use vmcrypt_format::luks1::Limits;
pub use volume::{CreateParams, KdfParams, Luks1Volume, Unlocked};

/// LUKS1 data sectors are 512 bytes.
pub const SECTOR: u64 = 512;
/// Requests at least this large are encrypted on several threads.
const PARALLEL_MIN: usize = 256 * 1024;
/// Largest buffer encrypted in one piece on the write path.
const WRITE_CHUNK: usize = 4 << 20;

/// A byte offset in the decrypted (guest) address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestOffset(pub u64);

/// A byte offset in the `file` child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostOffset(pub u64);

/// An open LUKS1 node.
pub struct LuksDriver {
    file: Arc<dyn BlockDriver>,
    header_node: Option<Arc<dyn BlockDriver>>,
    volume: Luks1Volume,
    cipher: Option<SectorCipher>,
    unlocked_slot: Option<usize>,
    rmw: Mutex<()>,
}

impl LuksDriver {
    /// Open a LUKS1 node. Without `passphrase`, only metadata is available.
    pub fn open(
        file: Arc<dyn BlockDriver>,
        header_node: Option<Arc<dyn BlockDriver>>,
        passphrase: Option<&[u8]>,
        slot: Option<usize>,
        limits: &Limits,
    ) -> Result<Self> {
        let hdev = header_node.clone().unwrap_or_else(|| file.clone());
        let volume = Luks1Volume::open(hdev, header_node.is_some(), limits)?;
        let (cipher, unlocked_slot) = match passphrase {
            Some(p) => {
                let u = volume.unlock(p, slot)?;
                (
                    Some(SectorCipher::new(volume.spec(), u.volume_key.as_bytes())?),
                    Some(u.slot),
                )
            }
            None => (None, None),
        };
        Ok(LuksDriver {
            file,
            header_node,
            volume,
            cipher,
            unlocked_slot,
            rmw: Mutex::new(()),
        })
    }

    pub fn volume(&self) -> &Luks1Volume {
        &self.volume
    }

    /// The slot the passphrase opened.
    pub fn unlocked_slot(&self) -> Option<usize> {
        self.unlocked_slot
    }

    fn host(&self, g: GuestOffset) -> HostOffset {
        HostOffset(self.volume.payload_offset() + g.0)
    }

    fn cipher(&self) -> Result<&SectorCipher> {
        match &self.cipher {
            Some(c) => Ok(c),
            None => bail!(
                Usage,
                "'{}' is encrypted: give its passphrase with key-secret=ID and --object secret,id=ID,file=PATH",
                self.file.filename()
            ),
        }
    }

    /// Read and decrypt whole sectors starting at the sector-aligned `g`.
    fn read_sectors(&self, buf: &mut [u8], g: GuestOffset) -> Result<()> {
        let cipher = self.cipher()?;
        self.file.read_at(buf, self.host(g).0)?;
        crypt(cipher, g.0 / SECTOR, buf, false)
    }

    /// Encrypt and write whole sectors starting at the sector-aligned `g`.
    fn write_sectors(&self, data: &[u8], g: GuestOffset) -> Result<()> {
        let cipher = self.cipher()?;
        let mut scratch = vec![0u8; data.len().min(WRITE_CHUNK)];
        for (i, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
            let off = g.0 + (i * WRITE_CHUNK) as u64;
            let buf = &mut scratch[..chunk.len()];
            buf.copy_from_slice(chunk);
            crypt(cipher, off / SECTOR, buf, true)?;
            self.file.write_at(buf, self.host(GuestOffset(off)).0)?;
        }
        Ok(())
    }
}

/// Encrypt or decrypt `buf` (whole sectors, first IV sector `iv`), on several threads
/// when it is large.
fn crypt(cipher: &SectorCipher, iv: u64, buf: &mut [u8], encrypt: bool) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |iv: u64, b: &mut [u8]| {
        if encrypt {
            cipher.encrypt(iv, SECTOR as usize, b)
        } else {
            cipher.decrypt(iv, SECTOR as usize, b)
        }
    };
    if threads < 2 || buf.len() < PARALLEL_MIN {
        return run(iv, buf);
    }
    let sectors = buf.len() / SECTOR as usize;
    let per = sectors.div_ceil(threads) * SECTOR as usize;
    std::thread::scope(|s| {
        let handles: Vec<_> = buf
            .chunks_mut(per)
            .enumerate()
            .map(|(i, b)| {
                let iv = iv + (i * per) as u64 / SECTOR;
                s.spawn(move || run(iv, b))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("crypto thread panicked"))
    })
}

impl BlockDriver for LuksDriver {
    fn driver_name(&self) -> &'static str {
        "luks"
    }

    fn size(&self) -> u64 {
        let raw = self
            .file
            .size()
            .saturating_sub(self.volume.payload_offset());
        raw / SECTOR * SECTOR
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("luks read", offset, buf.len(), self.size())?;
        let start = offset / SECTOR * SECTOR;
        let end = (offset + buf.len() as u64).div_ceil(SECTOR) * SECTOR;
        if start == offset && end == offset + buf.len() as u64 {
            return self.read_sectors(buf, GuestOffset(offset));
        }
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_sectors(&mut tmp, GuestOffset(start))?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("luks write", offset, buf.len(), self.size())?;
        self.cipher()?;
        let start = offset / SECTOR * SECTOR;
        let end = (offset + buf.len() as u64).div_ceil(SECTOR) * SECTOR;
        if start == offset && end == offset + buf.len() as u64 {
            return self.write_sectors(buf, GuestOffset(offset));
        }
        // Read-modify-write of the partial head/tail sectors, serialised so that two
        // unaligned writers to one sector cannot lose each other's bytes.
        let _guard = self.rmw.lock().expect("rmw lock");
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_sectors(&mut tmp[..SECTOR as usize], GuestOffset(start))?;
        if end - start > SECTOR {
            let last = tmp.len() - SECTOR as usize;
            self.read_sectors(&mut tmp[last..], GuestOffset(end - SECTOR))?;
        }
        let skip = (offset - start) as usize;
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_sectors(&tmp, GuestOffset(start))
    }

    fn flush(&self) -> Result<()> {
        self.file.flush()
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        if !new_size.is_multiple_of(SECTOR) {
            bail!(
                Usage,
                "luks: the new size {new_size} is not a multiple of 512 bytes"
            );
        }
        self.file.resize(self.volume.payload_offset() + new_size)
    }

    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }

    /// `header` first, then `file`, in the order qemu-img lists a detached LUKS image's
    /// children.
    fn children(&self) -> Vec<Child> {
        let mut v = Vec::new();
        if let Some(h) = &self.header_node {
            v.push(Child {
                role: "header",
                node: h.clone(),
            });
        }
        v.push(Child {
            role: "file",
            node: self.file.clone(),
        });
        v
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn format_specific(&self) -> Option<serde_json::Value> {
        Some(dump::qemu_info_json(&self.volume))
    }

    fn is_encrypted(&self) -> bool {
        true
    }
}
