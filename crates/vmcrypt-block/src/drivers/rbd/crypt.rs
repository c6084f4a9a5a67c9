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
#[path = "crypt_aio.rs"]
mod aio;

use super::RbdDriver;
use super::magic::{CloneMagicView, is_clone_header};
use crate::driver::{Allocation, AsyncIo, BlockDriver, Extent, Introspect, check_range};
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
    /// A clone with its own key: where the data it does not hold yet comes from.
    parent: Option<ParentLayer>,
    /// A clone opened without a parent layer: it shares its parent's key (Pacific's
    /// `rbd clone`), and librbd reads what it does not hold from the parent's raw bytes.
    shares_parent_key: bool,
}

/// The parent of a clone with its own key (Reef's layered encryption): the clone's data
/// at offset X that the clone does not hold is the parent's data at offset X, read
/// through the parent's own encryption (its key).
pub struct ParentLayer {
    /// The parent's encrypted node (data offsets), opened with the parent's key.
    pub node: Arc<dyn BlockDriver>,
    /// Bytes of the clone's raw image that still come from the parent
    /// (`rbd_get_overlap`).
    pub raw_overlap: u64,
}

impl RbdCryptDriver {
    /// Open the encryption of `raw` with `passphrase` (metadata only without one; only
    /// key slot `key_slot` if given), refusing a header of another version than `format`
    /// asks for.
    pub fn open(
        raw: Arc<RbdDriver>,
        format: RbdEncryptFormat,
        passphrase: Option<&[u8]>,
        key_slot: Option<u32>,
        limits: &KdfLimits,
        parent: Option<ParentLayer>,
    ) -> Result<RbdCryptDriver> {
        let mut head = [0u8; 6];
        raw.read_at(&mut head, 0)?;
        let file: Arc<dyn BlockDriver> = if is_clone_header(&head) {
            if parent.is_none() {
                bail!(
                    Usage,
                    "rbd image {} is a clone encrypted with its own key: pass its parent's \
                     encryption too (encrypt.parent.format=..., encrypt.parent.key-secret=ID)",
                    raw.image().name()
                );
            }
            Arc::new(CloneMagicView::new(raw.clone(), None)?)
        } else {
            raw.clone()
        };
        let luks = LuksDriver::open(file, None, passphrase, key_slot, limits)?;
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
        let shares_parent_key = parent.is_none() && raw.image().parent()?.is_some();
        Ok(RbdCryptDriver {
            shares_parent_key,
            object_size: raw.object_size(),
            data_offset: luks.data_offset(),
            sector: luks.sector_size(),
            raw,
            luks,
            lengths: Mutex::new(HashMap::new()),
            rmw: RwLock::new(()),
            parent,
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
            let found = self.ask_lengths(&missing, start, span)?;
            let mut known = self.lengths.lock().expect("lengths lock");
            for (o, l) in found {
                known.entry(o).or_insert(l);
            }
        }
        let known = self.lengths.lock().expect("lengths lock");
        Ok(objs.map(|o| (o, known[&o])).collect())
    }

    /// Ask librbd how many bytes of each of `objects` (all inside host bytes
    /// `[start, start+span)`) RADOS stores. For a clone sharing its parent's key
    /// (Pacific's `rbd clone` of an encrypted image) that is librbd's read rule: an object
    /// the clone has (even emptied by a discard) is read from the clone alone, one it
    /// does not have falls through to the parent's. A clone with its own key reads
    /// the parent through the parent's node, so only the clone's own objects count.
    fn ask_lengths(&self, objects: &[u64], start: u64, span: u64) -> Result<HashMap<u64, u64>> {
        let own = self.raw.written_extents(start, span, false)?;
        let mut found = self.ends_of(objects, &own);
        if self.parent.is_some() || !self.shares_parent_key {
            return Ok(found);
        }
        let exists = self.raw.image().extents(start, span, false, true)?;
        let in_clone = self.ends_of(objects, &exists);
        let fall_through = self.ends_of(objects, &self.raw.written_extents(start, span, true)?);
        for (obj, end) in found.iter_mut() {
            if in_clone[obj] == 0 {
                *end = fall_through[obj];
            }
        }
        Ok(found)
    }

    /// For each of `objects`, the end (from the object's start) of the last of
    /// `extents` (host offsets) inside it; 0 for none.
    fn ends_of(&self, objects: &[u64], extents: &[(u64, u64)]) -> HashMap<u64, u64> {
        let mut found: HashMap<u64, u64> = objects.iter().map(|&o| (o, 0)).collect();
        for &(o, l) in extents {
            for obj in self.objects(o, l) {
                let end = (o + l).min((obj + 1) * self.object_size) - obj * self.object_size;
                if let Some(v) = found.get_mut(&obj) {
                    *v = (*v).max(end);
                }
            }
        }
        found
    }

    /// The stored length of every object touched by host bytes `[host, host+len)`,
    /// if all are known already (so nothing has to be asked of librbd).
    fn known_lengths(&self, host: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        let known = self.lengths.lock().expect("lengths lock");
        self.objects(host, len)
            .map(|o| known.get(&o).map(|&l| (o, l)))
            .collect()
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
        zero_holes(buf, host, lengths, self.object_size);
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
        self.copy_up(offset, buf.len() as u64)?;
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

    /// The guest bytes of object `obj`, clipped to the data area and the node's size.
    fn object_guest_range(&self, obj: u64) -> (u64, u64) {
        let s = (obj * self.object_size).max(self.data_offset) - self.data_offset;
        let e = ((obj + 1) * self.object_size)
            .saturating_sub(self.data_offset)
            .min(self.size());
        (s, e.max(s))
    }

    /// Guest bytes the parent still provides.
    fn parent_overlap(&self) -> u64 {
        self.parent.as_ref().map_or(0, |p| {
            p.raw_overlap
                .saturating_sub(self.data_offset)
                .min(p.node.size())
        })
    }

    /// Whether object `obj`, which the clone stores `stored` bytes of, reads from the
    /// parent.
    fn reads_parent(&self, obj: u64, stored: u64) -> bool {
        self.parent.is_some()
            && stored == 0
            && self.object_guest_range(obj).0 < self.parent_overlap()
    }

    /// Fill the parts of `buf` (guest bytes from `offset`) that lie in objects the clone
    /// does not hold from the parent (its data, decrypted with its key).
    fn read_parent_parts(&self, buf: &mut [u8], offset: u64, lengths: &[(u64, u64)]) -> Result<()> {
        let Some(p) = &self.parent else {
            return Ok(());
        };
        let (overlap, end) = (self.parent_overlap(), offset + buf.len() as u64);
        for &(obj, stored) in lengths {
            if stored != 0 {
                continue;
            }
            let (s, e) = self.object_guest_range(obj);
            let (s, e) = (s.max(offset), e.min(end).min(overlap));
            if e > s {
                p.node
                    .read_at(&mut buf[(s - offset) as usize..(e - offset) as usize], s)?;
            }
        }
        Ok(())
    }

    /// Whether a first write to object `obj` (the clone stores `stored` bytes of it)
    /// must write the whole object: librbd copies a clone's missing object up from the
    /// parent's raw bytes (the parent's ciphertext) wherever the raw overlap reaches, so
    /// every byte of it must be overwritten under the clone's key.
    fn needs_copy_up(&self, obj: u64, stored: u64) -> bool {
        self.parent
            .as_ref()
            .is_some_and(|p| stored == 0 && obj * self.object_size < p.raw_overlap)
    }

    /// Copy the parent's data of every object touched by guest `[offset, offset+len)`
    /// that the clone does not hold yet into the clone, encrypted with the clone's key
    /// (Reef's copy-up; zeros where the parent has no data), whole objects at a time.
    /// Called under the exclusive lock.
    fn copy_up(&self, offset: u64, len: u64) -> Result<()> {
        if self.parent.is_none() {
            return Ok(());
        }
        for (obj, stored) in self.lengths_of(self.data_offset + offset, len)? {
            if !self.needs_copy_up(obj, stored) {
                continue;
            }
            let (s, e) = self.object_guest_range(obj);
            let mut data = vec![0u8; (e - s) as usize];
            self.read_parent_parts(&mut data, s, &[(obj, 0)])?;
            self.luks.write_at_mut(&mut data, s)?;
            self.wrote(self.data_offset + s, e - s);
        }
        Ok(())
    }

    /// `flatten` under the clone's key: copy up every object still in the parent, detach
    /// the parent (`rbd_flatten`, which then has nothing left to copy), and put the LUKS
    /// magic back, as Reef's flatten does: the image is then a plain librbd-encrypted
    /// image that any librbd (and cryptsetup, on its bytes) opens with the clone's key.
    /// The node should not be used afterwards.
    pub fn flatten(&self) -> Result<()> {
        if self.parent.is_none() {
            bail!(
                Usage,
                "rbd image {} is not a clone opened with its parent",
                self.raw.image().name()
            );
        }
        {
            let _g = self.rmw.write().expect("rmw lock");
            let step = 64 * self.object_size;
            let size = self.size();
            let mut off = 0;
            while off < size {
                self.copy_up(off, step.min(size - off))?;
                off += step;
            }
        }
        self.luks.flush()?;
        self.raw.image().flatten()?;
        super::magic::restore_luks_magic(self.raw.as_ref())?;
        self.raw.flush()
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
        } else {
            self.luks.read_at(buf, offset)?;
            self.zero_holes(buf, host, &lengths);
        }
        self.read_parent_parts(buf, offset, &lengths)
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
            let copy_up = lengths.iter().any(|&(o, l)| self.needs_copy_up(o, l));
            if !copy_up && self.gap_before(host, &lengths).is_none() {
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
        // In a clone with its own key a deleted object would read from the parent again.
        let whole = self
            .whole_objects(offset, len)
            .filter(|_| self.parent.is_none());
        let Some((wo, wl)) = whole else {
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
        if let Some((wo, wl)) = self
            .whole_objects(offset, len)
            .filter(|_| self.parent.is_none())
        {
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
            let stored = if self.reads_parent(obj, stored) {
                self.object_size
            } else {
                stored
            };
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
        let _g = self.rmw.write().expect("rmw lock");
        // Shrinking deletes objects: what is known about them is stale after it.
        let r = self.luks.resize(new_size);
        self.lengths.lock().expect("lengths lock").clear();
        r
    }
    fn as_introspect(&self) -> Option<&dyn Introspect> {
        self.luks.as_introspect()
    }
    fn as_async(&self) -> Option<&dyn AsyncIo> {
        Some(self)
    }
}

/// Zero the parts of `buf` (host bytes from `host`) past the stored `lengths` of their
/// objects of `object_size` bytes.
fn zero_holes(buf: &mut [u8], host: u64, lengths: &[(u64, u64)], object_size: u64) {
    for &(obj, stored) in lengths {
        let ostart = obj * object_size;
        let hole_start = (ostart + stored).max(host);
        let hole_end = (ostart + object_size).min(host + buf.len() as u64);
        if hole_end > hole_start {
            buf[(hole_start - host) as usize..(hole_end - host) as usize].fill(0);
        }
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
