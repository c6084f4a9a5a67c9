//! librbd's image encryption, done by vmcrypt: `encrypt.format=luks|luks2|luks-any`.
//!
//! The layout is librbd's (Ceph Pacific 16.2, `rbd encryption format`): a standard
//! LUKS1/LUKS2 header at raw offset 0, the data at the header's data offset (librbd
//! rounds it up to the object size), AES-XTS-plain64, LUKS2 with 4096-byte sectors
//! whose IV counts 512-byte units. A [`LuksDriver`] over the raw image does the header,
//! the key slots and the sector crypto.
//!
//! What differs from a LUKS file is the holes: librbd does not decrypt what RADOS does
//! not store. A read of an object that does not exist, or of the bytes past the end of
//! an object, returns zeros, not the decryption of zeros. So this node knows each
//! touched object's length (asked once from librbd with `rbd_diff_iterate2` over its
//! written extents, then kept up to date by its own writes) and serves zeros beyond it.
//! librbd itself, writing past the end of an object, leaves a gap that RADOS fills with
//! zeros and librbd then decrypts into garbage; vmcrypt writes encrypted zeros over such
//! a gap first, so what it writes reads back the same in both. A write that does not
//! cover whole sectors is completed from what a read returns (zeros in a hole), as
//! librbd's read-modify-write is. Zeroing and discarding whole
//! objects delete them (they read as zeros again, in librbd too); the edges of a zeroed
//! range are written as encrypted zeros, and a discard leaves partial objects alone.
use super::RbdDriver;
use crate::driver::{Allocation, BlockDriver, Extent, Introspect, check_range};
use crate::drivers::luks::{LuksDriver, Version};
use crate::spec::RbdEncryptFormat;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Result, bail};

/// An rbd image encrypted the way librbd encrypts it.
pub struct RbdCryptDriver {
    raw: Arc<RbdDriver>,
    luks: LuksDriver,
    object_size: u64,
    data_offset: u64,
    sector: u64,
    /// Object number -> bytes from the object's start that RADOS stores (0: absent).
    lengths: Mutex<HashMap<u64, u64>>,
    /// Shared by whole-sector writes, exclusive for read-modify-writes.
    rmw: RwLock<()>,
}

impl RbdCryptDriver {
    /// Open the encryption of `raw` with `passphrase` (metadata only without one),
    /// refusing a header of another version than `format` asks for.
    pub fn open(
        raw: Arc<RbdDriver>,
        format: RbdEncryptFormat,
        passphrase: Option<&[u8]>,
        limits: &KdfLimits,
    ) -> Result<RbdCryptDriver> {
        let file: Arc<dyn BlockDriver> = raw.clone();
        let luks = LuksDriver::open(file, None, passphrase, None, limits)?;
        let version = luks.header().version();
        match (format, version) {
            (RbdEncryptFormat::Luks1, Version::V2) | (RbdEncryptFormat::Luks2, Version::V1) => {
                bail!(
                    Usage,
                    "rbd image {} holds a LUKS{} header, but encrypt.format={} was asked for \
                     (use luks-any to accept either)",
                    raw.image().name(),
                    version.number(),
                    format.name()
                )
            }
            _ => {}
        }
        Ok(RbdCryptDriver {
            object_size: raw.object_size(),
            data_offset: luks.data_offset(),
            sector: luks.sector_size(),
            raw,
            luks,
            lengths: Mutex::new(HashMap::new()),
            rmw: RwLock::new(()),
        })
    }

    /// The LUKS node underneath (header, key slots).
    pub fn luks(&self) -> &LuksDriver {
        &self.luks
    }

    fn objects(&self, host: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        host / self.object_size..(host + len - 1) / self.object_size + 1
    }

    /// The stored length of every object touched by host bytes `[host, host+len)`,
    /// asking librbd (one call) about those not known yet.
    fn lengths_of(&self, host: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let objs = self.objects(host, len);
        let missing: Vec<u64> = {
            let known = self.lengths.lock().expect("lengths lock");
            objs.clone().filter(|o| !known.contains_key(o)).collect()
        };
        if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
            let start = first * self.object_size;
            let span = (last + 1) * self.object_size - start;
            let span = span.min(self.raw.size().saturating_sub(start));
            let ext = self.raw.written_extents(start, span, true)?;
            let mut found: HashMap<u64, u64> = missing.iter().map(|&o| (o, 0)).collect();
            for (o, l) in ext {
                for obj in self.objects(o, l) {
                    let end = (o + l).min((obj + 1) * self.object_size) - obj * self.object_size;
                    if let Some(v) = found.get_mut(&obj) {
                        *v = (*v).max(end);
                    }
                }
            }
            let mut known = self.lengths.lock().expect("lengths lock");
            for (o, l) in found {
                known.entry(o).or_insert(l);
            }
        }
        let known = self.lengths.lock().expect("lengths lock");
        Ok(objs.map(|o| (o, known[&o])).collect())
    }

    /// Record that host bytes `[host, host+len)` were written.
    fn wrote(&self, host: u64, len: u64) {
        let mut known = self.lengths.lock().expect("lengths lock");
        for obj in self.objects(host, len) {
            let end = (host + len).min((obj + 1) * self.object_size) - obj * self.object_size;
            let v = known.entry(obj).or_insert(0);
            *v = (*v).max(end);
        }
    }

    /// Zero the parts of `buf` (host bytes from `host`) that lie where RADOS stores
    /// nothing.
    fn zero_holes(&self, buf: &mut [u8], host: u64, lengths: &[(u64, u64)]) {
        for &(obj, stored) in lengths {
            let ostart = obj * self.object_size;
            let hole_start = (ostart + stored).max(host);
            let hole_end = (ostart + self.object_size).min(host + buf.len() as u64);
            if hole_end > hole_start {
                buf[(hole_start - host) as usize..(hole_end - host) as usize].fill(0);
            }
        }
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        offset.is_multiple_of(self.sector) && len.is_multiple_of(self.sector)
    }

    /// The host range between the stored end of the object holding host byte `host`
    /// and `host` (`lengths` from [`Self::lengths_of`] starting with that object), if
    /// any: a write there would leave a gap librbd reads as decrypted zeros (garbage).
    fn gap_before(&self, host: u64, lengths: &[(u64, u64)]) -> Option<(u64, u64)> {
        let &(obj, stored) = lengths.first()?;
        let start = (obj * self.object_size + stored).div_ceil(self.sector) * self.sector;
        let start = start.max(self.data_offset);
        (host > start).then(|| (start, host - start))
    }

    /// Write whole sectors under the exclusive lock: first encrypted zeros over the gap
    /// the write would leave in its object (so every stored byte decrypts to what was
    /// written, in librbd too), then the data.
    fn write_locked(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let host = self.data_offset + offset;
        let lengths = self.lengths_of(host, buf.len() as u64)?;
        if let Some((gap, len)) = self.gap_before(host, &lengths) {
            let mut done = 0;
            while done < len {
                let n = (4u64 << 20).min(len - done);
                let mut z = vec![0u8; n as usize];
                self.luks
                    .write_at_mut(&mut z, gap + done - self.data_offset)?;
                done += n;
            }
            self.wrote(gap, len);
        }
        self.luks.write_at_mut(buf, offset)?;
        self.wrote(host, buf.len() as u64);
        Ok(())
    }

    /// A write not covering whole sectors: read the covering sectors (holes as zeros,
    /// as librbd reads them), patch, write back, exclusive of other writes.
    fn write_rmw(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _g = self.rmw.write().expect("rmw lock");
        let start = offset / self.sector * self.sector;
        let end = (offset + buf.len() as u64).div_ceil(self.sector) * self.sector;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_at(&mut tmp, start)?;
        let at = (offset - start) as usize;
        tmp[at..at + buf.len()].copy_from_slice(buf);
        self.write_locked(&mut tmp, start)
    }

    /// Whole objects (in guest offsets) inside `[offset, offset+len)`.
    fn whole_objects(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let host = self.data_offset + offset;
        let first = host.div_ceil(self.object_size) * self.object_size;
        let last = (host + len) / self.object_size * self.object_size;
        (last > first).then(|| (first - self.data_offset, last - first))
    }

    fn forget(&self, offset: u64, len: u64) {
        let mut known = self.lengths.lock().expect("lengths lock");
        for obj in self.objects(self.data_offset + offset, len) {
            known.insert(obj, 0);
        }
    }
}

impl BlockDriver for RbdCryptDriver {
    fn driver_name(&self) -> &'static str {
        "rbd"
    }
    fn filename(&self) -> String {
        self.raw.filename()
    }
    fn is_read_only(&self) -> bool {
        self.luks.is_read_only()
    }
    fn size(&self) -> u64 {
        self.luks.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("rbd read", offset, buf.len(), self.size())?;
        let host = self.data_offset + offset;
        let lengths = self.lengths_of(host, buf.len() as u64)?;
        if lengths.iter().all(|&(_, l)| l == 0) {
            buf.fill(0);
            return Ok(());
        }
        self.luks.read_at(buf, offset)?;
        self.zero_holes(buf, host, &lengths);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut copy = buf.to_vec();
        self.write_at_mut(&mut copy, offset)
    }
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("rbd write", offset, buf.len(), self.size())?;
        if !self.aligned(offset, buf.len() as u64) {
            return self.write_rmw(buf, offset);
        }
        let host = self.data_offset + offset;
        {
            // Whole sectors that leave no gap run in parallel with each other.
            let _g = self.rmw.read().expect("rmw lock");
            let lengths = self.lengths_of(host, buf.len() as u64)?;
            if self.gap_before(host, &lengths).is_none() {
                self.luks.write_at_mut(buf, offset)?;
                self.wrote(host, buf.len() as u64);
                return Ok(());
            }
        }
        let _g = self.rmw.write().expect("rmw lock");
        self.write_locked(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.luks.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range("rbd write zeroes", offset, len as usize, self.size())?;
        let Some((wo, wl)) = self.whole_objects(offset, len) else {
            return zero_fill(self, offset, len);
        };
        zero_fill(self, offset, wo - offset)?;
        {
            let _g = self.rmw.write().expect("rmw lock");
            self.raw.discard(self.data_offset + wo, wl)?;
            self.forget(wo, wl);
        }
        zero_fill(self, wo + wl, offset + len - wo - wl)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range("rbd discard", offset, len as usize, self.size())?;
        if let Some((wo, wl)) = self.whole_objects(offset, len) {
            let _g = self.rmw.write().expect("rmw lock");
            self.raw.discard(self.data_offset + wo, wl)?;
            self.forget(wo, wl);
        }
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        let len = len.min(self.size().saturating_sub(offset)).min(1 << 30);
        let host = self.data_offset + offset;
        let lengths = self.lengths_of(host, len)?;
        let mut state = None;
        let mut end = host;
        for (obj, stored) in lengths {
            let ostart = obj * self.object_size;
            for (s, e, a) in [
                (ostart, ostart + stored, Allocation::Data),
                (ostart + stored, ostart + self.object_size, Allocation::Zero),
            ] {
                let (s, e) = (s.max(end), e.min(host + len));
                if e <= s {
                    continue;
                }
                if state.is_some_and(|st| st != a) {
                    return Ok(extent(offset, end - host, state.unwrap_or(a)));
                }
                state = Some(a);
                end = e;
            }
        }
        Ok(extent(
            offset,
            (end - host).max(1),
            state.unwrap_or(Allocation::Zero),
        ))
    }
    fn has_zero_init(&self) -> bool {
        true
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.luks.resize(new_size)
    }
    fn as_introspect(&self) -> Option<&dyn Introspect> {
        self.luks.as_introspect()
    }
}

fn extent(offset: u64, length: u64, allocation: Allocation) -> Extent {
    Extent {
        offset,
        length,
        allocation,
    }
}

/// Write encrypted zeros over `[offset, offset+len)`.
fn zero_fill(d: &RbdCryptDriver, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 4 << 20;
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        let mut z = vec![0u8; n as usize];
        d.write_at_mut(&mut z, offset + done)?;
        done += n;
    }
    Ok(())
}
