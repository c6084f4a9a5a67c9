//! The qcow2 write path.
//!
//! * Writes to clusters this image owns (L1 and L2 entries with COPIED) go in place
//!   under the shared side of the I/O lock, so they run in parallel with reads.
//! * Anything else takes the exclusive side: a new cluster is allocated (refcount first,
//!   see [`super::refcount`]), filled with the old contents (backing file, zeros,
//!   compressed or shared cluster) merged with the new bytes, encrypted for its new
//!   host offset, written, and only then the cached L2 entry points at it. Clusters
//!   that lose a reference are freed after the next metadata flush.
//! * Whole-cluster zeroing and discard change L2 entries only; resize grows the L1
//!   table in a new place and switches the header to it.
//! * Extended L2 entries (subclusters) follow QEMU: a write allocates only the
//!   subclusters it touches (the partial ones at its edges completed from what they
//!   read: backing file or zeros), in a new cluster or in place in one the image owns
//!   (a bitmap change, so on the exclusive side); a compressed or shared cluster is
//!   copied as a whole (its allocated span). Zeroing marks subclusters or whole
//!   clusters zero (a whole cluster drops its host cluster); discard works on whole
//!   clusters.
use super::Qcow2Driver;
use super::engine::ClusterMap;
use super::meta::Meta;
use crate::driver::{Allocation, BlockDriver};
use std::sync::atomic::Ordering;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::header::{AUTOCLEAR_BITMAPS, INCOMPAT_CORRUPT};
use vmcrypt_format::qcow2::table::encode_u64s;
use vmcrypt_format::qcow2::{ClusterKind, L1Entry, Mapping, RawL2Entry, Subclusters, bitmaps};

/// Byte offset of the v3 header's incompatible-features word.
const INCOMPATIBLE_FEATURES_OFFSET: u64 = 72;

/// Newly allocated, contiguous host clusters waiting to be written: whole clusters
/// still in the caller's buffer (encrypted there in place), or assembled bytes.
enum Batch {
    Borrowed { host: u64, start: usize, end: usize },
    Owned { host: u64, data: Vec<u8> },
}

impl Batch {
    fn host_end(&self) -> u64 {
        match self {
            Batch::Borrowed { host, start, end } => host + (end - start) as u64,
            Batch::Owned { host, data } => host + data.len() as u64,
        }
    }

    /// Add bytes to an owned batch, copying a borrowed one out of `buf` first.
    fn append(&mut self, buf: &[u8], bytes: &[u8]) {
        if let Batch::Borrowed { host, start, end } = *self {
            *self = Batch::Owned {
                host,
                data: buf[start..end].to_vec(),
            };
        }
        if let Batch::Owned { data, .. } = self {
            data.extend_from_slice(bytes);
        }
    }
}

impl Qcow2Driver {
    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    pub(super) fn entries_mask(&self) -> u64 {
        (1u64 << self.header.l2_bits()) - 1
    }

    /// Refuse writes with the reason. Before the first change, flag persistent bitmaps
    /// "in use" (we do not update them, so QEMU must not trust them; it keeps them and
    /// lets the user remove them) and clear autoclear bits we do not know.
    pub(super) fn check_writable(&self) -> Result<()> {
        if let Some(r) = &self.write_refusal {
            bail!(ReadOnly, "'{}': {r}", self.engine.file.filename());
        }
        if let Some(r) = self.poisoned.get() {
            bail!(
                Corrupt,
                "qcow2: '{}': no more writes through this open image: {r}; see 'vmcrypt check'",
                self.engine.file.filename()
            );
        }
        if self.touched.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _x = self.io.write().expect("io lock");
        let file = self.engine.file.as_ref();
        let autoclear = self.header.autoclear_features;
        let keep = autoclear & AUTOCLEAR_BITMAPS;
        if let Some(bm) = self.ext.bitmaps.filter(|_| keep != 0) {
            ensure!(
                bm.directory_size <= 64 << 20,
                LimitExceeded,
                "qcow2: the bitmap directory is {} bytes (at most 64 MiB)",
                bm.directory_size
            );
            let mut dir = vec![0u8; bm.directory_size as usize];
            file.read_at(&mut dir, bm.directory_offset)
                .ctx("qcow2: reading the bitmap directory")?;
            bitmaps::mark_in_use(&mut dir, bm.nb_bitmaps)?;
            file.write_at(&dir, bm.directory_offset)
                .ctx("qcow2: flagging persistent bitmaps in use")?;
            file.flush()?;
        }
        if autoclear != keep {
            file.write_at(&keep.to_be_bytes(), 88)
                .ctx("qcow2: clearing unknown autoclear feature bits")?;
            file.flush()?;
        }
        Ok(())
    }

    /// Data writes need the key (metadata changes such as growth do not).
    pub(super) fn check_key(&self) -> Result<()> {
        ensure!(
            self.engine.crypto.is_unlocked(),
            Usage,
            "'{}' is encrypted: writing data needs its key (encrypt.key-secret=ID)",
            self.engine.file.filename()
        );
        Ok(())
    }

    /// Whether L2 entries are extended (16 bytes: entry and subcluster bitmap).
    pub(super) fn ext(&self) -> bool {
        self.header.has_extended_l2()
    }

    /// log2 of the subcluster size (the cluster size without extended L2).
    fn sc_bits(&self) -> u32 {
        self.unit_bits()
    }

    /// Entry `idx` of an L2 table and its subcluster bitmap (none for standard entries).
    pub(super) fn entry_at(&self, t: &[u64], idx: usize) -> (RawL2Entry, Subclusters) {
        if self.ext() {
            (
                RawL2Entry::from_raw(t[2 * idx]),
                Subclusters::from_raw(t[2 * idx + 1]),
            )
        } else {
            (RawL2Entry::from_raw(t[idx]), Subclusters::NONE)
        }
    }

    /// Set entry `idx` (and its bitmap, with extended L2) of the cached table at `l2`.
    pub(super) fn set_l2(&self, m: &mut Meta, l2: u64, idx: usize, e: RawL2Entry, bm: Subclusters) {
        if self.ext() {
            m.set_entry(l2, 2 * idx, e.raw());
            m.set_entry(l2, 2 * idx + 1, bm.raw());
        } else {
            m.set_entry(l2, idx, e.raw());
        }
    }

    /// The subclusters `first..=last` that guest bytes `[within, within + n)` of a
    /// cluster touch (`0..=0` with standard entries, where the unit is the cluster).
    fn touched(&self, within: u64, n: u64) -> (u32, u32) {
        let b = self.sc_bits();
        ((within >> b) as u32, ((within + n - 1) >> b) as u32)
    }

    /// Host runs `(buffer offset, host offset, length)` of an in-place write, or `None`
    /// if some cluster (with extended L2: some touched subcluster) is not owned by this
    /// image.
    fn owned_runs(&self, offset: u64, len: u64) -> Result<Option<Vec<(usize, u64, usize)>>> {
        let (cs, end, ext) = (self.cs(), offset + len, self.ext());
        let mut runs: Vec<(usize, u64, usize)> = Vec::new();
        let mut g = offset;
        while g < end {
            let n = (cs - g % cs).min(end - g);
            let (l1e, e, bm) = self.raw_entry(g / cs)?;
            let owned = l1e.copied() && e.is_owned(ext);
            let cb = self.header.cluster_bits;
            if !owned || e.decode(ext.then_some(bm), cb, 0).is_err() {
                return Ok(None);
            }
            if ext {
                let (s0, s1) = self.touched(g % cs, n);
                if !bm.holds(Subclusters::span(s0, s1)) {
                    return Ok(None);
                }
            }
            let host = e.host_offset() + g % cs;
            let rel = (g - offset) as usize;
            match runs.last_mut() {
                Some(r) if r.1 + r.2 as u64 == host => r.2 += n as usize,
                _ => runs.push((rel, host, n as usize)),
            }
            g += n;
        }
        Ok(Some(runs))
    }

    /// Write guest bytes (`buf` may be used as scratch space).
    pub(super) fn write_guest(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        self.check_key()?;
        let aligned = offset.is_multiple_of(512) && buf.len().is_multiple_of(512);
        if aligned || !self.engine.crypto.is_encrypted() {
            let _shared = self.io.read().expect("io lock");
            if let Some(runs) = self.owned_runs(offset, buf.len() as u64)? {
                for (rel, host, n) in runs {
                    self.write_owned(&mut buf[rel..rel + n], host)?;
                }
                return Ok(());
            }
        }
        let _x = self.io.write().expect("io lock");
        self.write_locked(buf, offset)?;
        self.meta
            .lock()
            .expect("meta")
            .trim(self.engine.file.as_ref())
    }

    /// An L2 entry the read path would refuse (an unaligned host offset, reserved bits,
    /// an invalid compressed descriptor) is refused for writing too, before anything is
    /// written at the offset it names; the image is marked corrupt, as QEMU does.
    fn check_entry_for_write(
        &self,
        e: RawL2Entry,
        bm: Subclusters,
        ci: u64,
        idx: usize,
    ) -> Result<()> {
        let cb = self.header.cluster_bits;
        let Err(err) = e.decode(self.ext().then_some(bm), cb, idx) else {
            return Ok(());
        };
        let marked = self.poison(format!("guest cluster {ci} has an invalid L2 entry"));
        Err(err).with_ctx(|| {
            format!(
                "qcow2: '{}': refusing to write guest cluster {ci} ({marked}); see 'vmcrypt check'",
                self.engine.file.filename(),
            )
        })
    }

    /// Damage found while writing: mark the image corrupt on disk and refuse every
    /// later write through this driver. Returns what happened to the on-disk flag.
    fn poison(&self, why: String) -> String {
        let marked = match self.mark_corrupt() {
            Ok(true) => "the image is now marked corrupt".to_string(),
            Ok(false) => "a version 2 image has no corrupt flag".to_string(),
            Err(e) => format!("marking the image corrupt failed too: {e}"),
        };
        let _ = self.poisoned.set(format!("{why} ({marked})"));
        marked
    }

    /// Set QEMU's corrupt bit (incompatible feature bit 1, qcow2 v3 only) on disk, so
    /// that no writer uses the image until it is checked. Returns whether it was set.
    fn mark_corrupt(&self) -> Result<bool> {
        if self.header.version < 3 {
            return Ok(false);
        }
        let file = self.engine.file.as_ref();
        let features = self.header.incompatible_features | INCOMPAT_CORRUPT;
        file.write_at(&features.to_be_bytes(), INCOMPATIBLE_FEATURES_OFFSET)?;
        file.flush()?;
        Ok(true)
    }

    /// Refuse a data write to host bytes that hold metadata (a hostile or damaged L2
    /// entry), like QEMU's overlap checks; nothing is written.
    fn guard(&self, m: &Meta, host: u64, len: u64) -> Result<()> {
        let cb = self.header.cluster_bits;
        for c in host >> cb..=(host + len.max(1) - 1) >> cb {
            if m.is_metadata(c) {
                let marked = self.poison(format!("data would overwrite metadata cluster {c}"));
                bail!(
                    Corrupt,
                    "qcow2: '{}': data at host offset {:#x} would overwrite metadata \
                     (cluster {c}); the image is damaged ({marked}), see 'vmcrypt check'",
                    self.engine.file.filename(),
                    c << cb
                );
            }
        }
        Ok(())
    }

    /// Allocate `n` clusters for new data or tables, never ones holding metadata (which
    /// a damaged image may list as free).
    fn alloc(&self, m: &mut Meta, n: u64) -> Result<u64> {
        let host = m.refs().alloc(self.engine.file.as_ref(), n)?;
        self.guard(m, host, n << self.header.cluster_bits)?;
        Ok(host)
    }

    /// Encrypt (when needed) and write bytes to a cluster this image owns.
    fn write_owned(&self, data: &mut [u8], host: u64) -> Result<()> {
        self.guard(&self.meta.lock().expect("meta"), host, data.len() as u64)?;
        let file = &self.engine.file;
        let crypto = &self.engine.crypto;
        if !crypto.is_encrypted() {
            return file.write_at(data, host);
        }
        let name = file.filename();
        if host.is_multiple_of(512) && data.len().is_multiple_of(512) {
            crypto.encrypt(data, host, &name)?;
            return file.write_at(data, host);
        }
        let start = host / 512 * 512;
        let end = (host + data.len() as u64).div_ceil(512) * 512;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.engine.read_host(&mut tmp, start)?;
        crypto.decrypt(&mut tmp, start, 0, &name)?;
        let skip = (host - start) as usize;
        tmp[skip..skip + data.len()].copy_from_slice(data);
        crypto.encrypt(&mut tmp, start, &name)?;
        file.write_at(&tmp, start)
    }

    /// The write path with the exclusive I/O lock held.
    pub(super) fn write_locked(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let (cs, end) = (self.cs(), offset + buf.len() as u64);
        let mut batch: Option<Batch> = None;
        let mut g = offset;
        while g < end {
            let (ci, within) = (g / cs, g % cs);
            let n = (cs - within).min(end - g);
            let rel = (g - offset) as usize;
            let (l2, idx) = self.l2_for_write(ci)?;
            let t = self.meta.lock().expect("meta").cached(l2).expect("pinned");
            let (e, bm) = self.entry_at(&t, idx);
            self.check_entry_for_write(e, bm, ci, idx)?;
            let (s0, s1) = self.touched(within, n);
            let range = rel..rel + n as usize;
            if e.is_owned(self.ext()) {
                self.write_batch(buf, &mut batch)?;
                let host = e.host_offset();
                let need = Subclusters::span(s0, s1);
                if !self.ext() || bm.holds(need) {
                    self.write_owned(&mut buf[range], host + within)?;
                } else {
                    // Unallocated or zero subclusters of a cluster we own: write in
                    // place, the partial edge subclusters completed from what they read.
                    let span = self.span(s0, s1);
                    let mut data = self.merged(ci, &span, within, &buf[range])?;
                    self.write_owned(&mut data, host + span.start)?;
                    let mut m = self.meta.lock().expect("meta");
                    self.set_l2(&mut m, l2, idx, e, bm.with_allocated(need));
                }
                g += n;
                continue;
            }
            // A new cluster holds the subclusters `a0..=a1` (the whole cluster without
            // extended L2); the old contents are read before the entry points elsewhere.
            let (a0, a1) = self.new_span(e, bm, s0, s1);
            let span = self.span(a0, a1);
            let full = within == span.start && within + n == span.end;
            let data = if full {
                None
            } else {
                Some(self.merged(ci, &span, within, &buf[range.clone()])?)
            };
            let host = {
                let mut m = self.meta.lock().expect("meta");
                let host = self.alloc(&mut m, 1)?;
                let keep = if e.is_compressed() {
                    Subclusters::NONE
                } else {
                    bm
                };
                let new_bm = if self.ext() {
                    keep.with_allocated(Subclusters::span(a0, a1))
                } else {
                    Subclusters::NONE
                };
                self.set_l2(&mut m, l2, idx, RawL2Entry::owned(host), new_bm);
                self.release(&mut m, e, idx)?;
                host + span.start
            };
            if batch.as_ref().is_some_and(|b| b.host_end() != host) {
                self.write_batch(buf, &mut batch)?;
            }
            match (batch.as_mut(), data) {
                (Some(Batch::Borrowed { end, .. }), None) if *end == rel => *end += n as usize,
                (None, None) => {
                    batch = Some(Batch::Borrowed {
                        host,
                        start: rel,
                        end: range.end,
                    })
                }
                (Some(b), data) => {
                    let c = data.unwrap_or_else(|| buf[range].to_vec());
                    b.append(buf, &c)
                }
                (None, Some(c)) => batch = Some(Batch::Owned { host, data: c }),
            }
            g += n;
        }
        self.write_batch(buf, &mut batch)
    }

    /// Byte range inside a cluster of subclusters `a0..=a1` (the cluster without
    /// extended L2).
    fn span(&self, a0: u32, a1: u32) -> std::ops::Range<u64> {
        let b = self.sc_bits();
        (u64::from(a0) << b)..(u64::from(a1) + 1) << b
    }

    /// The subclusters a newly allocated cluster must hold when bytes in `s0..=s1` are
    /// written over the entry `(e, bm)`, as QEMU does: all of a compressed cluster; of a
    /// cluster with a host offset (shared), the touched ones and everything between
    /// its allocated ones; otherwise just the touched ones.
    fn new_span(&self, e: RawL2Entry, bm: Subclusters, s0: u32, s1: u32) -> (u32, u32) {
        let alloc = bm.allocated();
        if !self.ext() || e.is_compressed() {
            (0, (1u32 << (self.header.cluster_bits - self.sc_bits())) - 1)
        } else if e.host_offset() != 0 && alloc != 0 {
            (
                s0.min(alloc.trailing_zeros()),
                s1.max(31 - alloc.leading_zeros()),
            )
        } else {
            (s0, s1)
        }
    }

    /// The guest bytes `span` of cluster `ci` with `new` written at `within`.
    fn merged(
        &self,
        ci: u64,
        span: &std::ops::Range<u64>,
        within: u64,
        new: &[u8],
    ) -> Result<Vec<u8>> {
        let mut c = self.guest_bytes(ci * self.cs() + span.start, span.end - span.start)?;
        let at = (within - span.start) as usize;
        c[at..at + new.len()].copy_from_slice(new);
        Ok(c)
    }

    fn write_batch(&self, buf: &mut [u8], batch: &mut Option<Batch>) -> Result<()> {
        let (host, data): (u64, &mut [u8]) = match batch {
            None => return Ok(()),
            Some(Batch::Borrowed { host, start, end }) => (*host, &mut buf[*start..*end]),
            Some(Batch::Owned { host, data }) => (*host, data.as_mut_slice()),
        };
        if self.engine.crypto.is_encrypted() {
            let name = self.engine.file.filename();
            self.engine.crypto.encrypt(data, host, &name)?;
        }
        self.engine
            .file
            .write_at(data, host)
            .with_ctx(|| format!("qcow2: writing data clusters at {host:#x}"))?;
        *batch = None;
        Ok(())
    }

    /// `len` guest bytes from `start`, zero-padded past the end of the disk.
    fn guest_bytes(&self, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut c = vec![0u8; len as usize];
        let n = len.min(self.size().saturating_sub(start)) as usize;
        self.engine.read(self, &mut c[..n], start)?;
        Ok(c)
    }

    /// Queue the refcount decrements of the clusters an old L2 entry referenced.
    pub(super) fn release(&self, m: &mut Meta, old: RawL2Entry, idx: usize) -> Result<()> {
        let cs = self.cs();
        match old.decode(None, self.header.cluster_bits, idx)?.kind {
            ClusterKind::Unallocated | ClusterKind::Zero(0) => {}
            ClusterKind::Normal(h) | ClusterKind::Zero(h) => m.refs().queue_free(h),
            ClusterKind::Compressed(d) => {
                let first = (d.offset & !511) / cs;
                let last = (d.offset + d.size - 1) / cs;
                for c in first..=last {
                    m.refs().queue_free(c * cs);
                }
            }
        }
        Ok(())
    }

    /// The L2 table (host offset) and index for guest cluster `ci`, allocating the
    /// table or copying a shared one first. The table stays cached until the next flush.
    pub(super) fn l2_for_write(&self, ci: u64) -> Result<(u64, usize)> {
        let cs = self.cs();
        let l1i = (ci >> self.header.l2_bits()) as usize;
        let idx = (ci & self.entries_mask()) as usize;
        let l1e = self.meta.lock().expect("meta").l1_entry(l1i);
        let Some(l1e) = l1e else {
            bail!(
                Corrupt,
                "qcow2: guest cluster {ci} is beyond the L1 table ({l1i} entries needed)"
            );
        };
        let old = l1e.l2_table(l1i, cs)?;
        let shared = match old {
            Some(off) if l1e.copied() => {
                self.l2_table(off)?;
                self.meta.lock().expect("meta").pin(off);
                return Ok((off, idx));
            }
            Some(off) => Some((off, self.l2_table(off)?)),
            None => None,
        };
        let mut m = self.meta.lock().expect("meta");
        let new = self.alloc(&mut m, 1)?;
        let table = match shared {
            Some((off, t)) => {
                m.refs().queue_free(off);
                m.forget(off);
                (*t).clone()
            }
            None => vec![0u64; (cs / 8) as usize],
        };
        m.insert_dirty(new, table);
        m.set_l1(l1i, L1Entry::owned(new), self.header.cluster_bits);
        Ok((new, idx))
    }

    /// Make `[offset, offset+len)` read as zeros (`discard`: may instead leave the
    /// partial clusters at the edges alone, as discard is advisory).
    pub(super) fn zero_range(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        self.check_writable()?;
        self.check_key()?;
        let _x = self.io.write().expect("io lock");
        if self.ext() && !discard {
            self.zero_subclusters(offset, offset + len)?;
        } else {
            let (cs, size) = (self.cs(), self.size());
            let end = offset + len;
            let mut g = offset;
            while g < end {
                let n = (cs - g % cs).min(end - g);
                let whole = g.is_multiple_of(cs) && (n == cs || g + n == size);
                if whole {
                    self.zero_cluster(g / cs, discard)?;
                } else if !discard {
                    self.write_locked(&mut vec![0u8; n as usize], g)?;
                }
                g += n;
            }
        }
        self.meta
            .lock()
            .expect("meta")
            .trim(self.engine.file.as_ref())
    }

    fn zero_cluster(&self, ci: u64, discard: bool) -> Result<()> {
        let v3 = self.header.version >= 3;
        let backing = self.engine.backing.is_some();
        let (l1e, e, bm) = self.raw_entry(ci)?;
        let unallocated = l1e.l2_offset() == 0 || e == RawL2Entry::UNALLOCATED;
        let new = match (self.ext(), v3, backing, discard) {
            // Like QEMU: zeroing marks even an unallocated cluster, discard leaves
            // one alone when nothing lies below it.
            (true, ..) if unallocated && discard && !backing => return Ok(()),
            (true, ..) => (RawL2Entry::UNALLOCATED, Subclusters::ALL_ZERO),
            _ if unallocated && !backing => return Ok(()),
            (_, true, _, _) => (RawL2Entry::ZERO, Subclusters::NONE),
            (_, false, false, _) | (_, false, true, true) => {
                (RawL2Entry::UNALLOCATED, Subclusters::NONE)
            }
            (_, false, true, false) => {
                let cs = self.cs();
                let n = cs.min(self.size() - ci * cs) as usize;
                return self.write_locked(&mut vec![0u8; n], ci * cs);
            }
        };
        if (e, bm) == new {
            return Ok(());
        }
        let (l2, idx) = self.l2_for_write(ci)?;
        let mut m = self.meta.lock().expect("meta");
        self.set_l2(&mut m, l2, idx, new.0, new.1);
        self.release(&mut m, e, idx)
    }

    /// `write_zeroes` with extended L2, as QEMU splits it: a piece that covers only
    /// part of a subcluster turns the whole subcluster into a zero one if the rest of
    /// it already reads as zeros and it holds no data, else zeros are written; aligned
    /// pieces mark whole clusters (dropping their host cluster) or subclusters zero.
    fn zero_subclusters(&self, offset: u64, end: u64) -> Result<()> {
        let (scs, cs, size) = (1u64 << self.sc_bits(), self.cs(), self.size());
        let mut g = offset;
        while g < end {
            let sc_end = (g / scs + 1) * scs;
            if !g.is_multiple_of(scs) || (end < sc_end && end != size) {
                let pe = end.min(sc_end);
                self.zero_partial_subcluster(g, pe)?;
                g = pe;
                continue;
            }
            let ae = if end == size { end } else { end / scs * scs };
            let pieces = self.cluster_pieces(g, ae);
            // QEMU cannot mark part of a compressed cluster zero and then writes
            // zeros over the whole aligned piece instead.
            let mut split_compressed = false;
            for &(ci, within, n) in &pieces {
                let whole = within == 0 && (n == cs || ci * cs + n == size);
                split_compressed |= !whole && self.raw_entry(ci)?.1.is_compressed();
            }
            if split_compressed {
                self.write_locked(&mut vec![0u8; (ae - g) as usize], g)?;
            } else {
                for (ci, within, n) in pieces {
                    if within == 0 && (n == cs || ci * cs + n == size) {
                        self.zero_cluster(ci, false)?;
                    } else {
                        let (s0, s1) = self.touched(within, n);
                        self.mark_zero(ci, s0, s1)?;
                    }
                }
            }
            g = ae;
        }
        Ok(())
    }

    /// The clusters `(index, offset inside, length)` that guest bytes `[g, end)` cover.
    fn cluster_pieces(&self, mut g: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let cs = self.cs();
        let mut v = Vec::new();
        while g < end {
            let n = (cs - g % cs).min(end - g);
            v.push((g / cs, g % cs, n));
            g += n;
        }
        v
    }

    /// Zero `[g, pe)`, which lies inside one subcluster and does not cover all of it.
    fn zero_partial_subcluster(&self, g: u64, pe: u64) -> Result<()> {
        let (scs, cs, size) = (1u64 << self.sc_bits(), self.cs(), self.size());
        let start = g / scs * scs;
        let stop = (start + scs).min(size);
        let quiet = matches!(self.map_unit(g)?, Mapping::Backing | Mapping::Zero);
        if quiet && self.reads_zero(start, g)? && self.reads_zero(pe, stop)? {
            let (s0, _) = self.touched(g % cs, 1);
            return self.mark_zero(g / cs, s0, s0);
        }
        self.write_locked(&mut vec![0u8; (pe - g) as usize], g)
    }

    /// Whether guest bytes `[g, end)` read as zeros without holding data (QEMU's
    /// block-status test, through the backing chain).
    fn reads_zero(&self, mut g: u64, end: u64) -> Result<bool> {
        while g < end {
            let x = self.engine.block_status(self, g, end - g)?;
            if x.allocation != Allocation::Zero || x.length == 0 {
                return Ok(false);
            }
            g += x.length;
        }
        Ok(true)
    }

    /// Make subclusters `s0..=s1` of cluster `ci` (not all of it, not compressed) read
    /// as zeros.
    fn mark_zero(&self, ci: u64, s0: u32, s1: u32) -> Result<()> {
        let (_, e, bm) = self.raw_entry(ci)?;
        ensure!(
            !e.is_compressed(),
            Corrupt,
            "qcow2: cannot mark part of compressed cluster {ci} zero"
        );
        let new = bm.with_zero(Subclusters::span(s0, s1));
        if new == bm {
            return Ok(());
        }
        let (l2, idx) = self.l2_for_write(ci)?;
        let mut m = self.meta.lock().expect("meta");
        self.set_l2(&mut m, l2, idx, e, new);
        Ok(())
    }

    /// Write back all metadata in the safe order and flush the file.
    pub(super) fn flush_all(&self) -> Result<()> {
        let _x = self.io.write().expect("io lock");
        self.meta
            .lock()
            .expect("meta")
            .flush(self.engine.file.as_ref())
    }

    /// Grow the virtual disk to `new_size` bytes.
    pub(super) fn grow(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        let _x = self.io.write().expect("io lock");
        let old = self.size();
        ensure!(
            new_size >= old,
            Unsupported,
            "qcow2: shrinking an image ({old} to {new_size} bytes) is not supported"
        );
        let file = self.engine.file.as_ref();
        let mut m = self.meta.lock().expect("meta");
        m.flush(file)?;
        let cs = self.cs();
        let per_l2 = cs << self.header.l2_bits();
        let need = new_size.div_ceil(per_l2);
        let have = m.l1.len() as u64;
        if need > have {
            ensure!(
                need * 8 <= 32 << 20,
                LimitExceeded,
                "qcow2: {new_size} bytes needs an L1 table over 32 MiB"
            );
            let clusters = (need * 8).div_ceil(cs);
            let at = self.alloc(&mut m, clusters)?;
            let mut raw = encode_u64s(&m.l1);
            raw.resize((clusters * cs) as usize, 0);
            file.write_at(&raw, at)
                .ctx("qcow2: writing the new L1 table")?;
            m.refs().write_dirty(file)?;
            file.flush()?;
            let mut hdr = [0u8; 12];
            hdr[..4].copy_from_slice(&(need as u32).to_be_bytes());
            hdr[4..].copy_from_slice(&at.to_be_bytes());
            file.write_at(&hdr, 36)
                .ctx("qcow2: switching the header to the new L1 table")?;
            file.flush()?;
            let old_off = m.l1_offset;
            if old_off != 0 {
                for c in 0..(have * 8).div_ceil(cs) {
                    m.refs().queue_free(old_off + c * cs);
                    m.protected.remove(&((old_off + c * cs) / cs));
                }
            }
            m.protected.extend((at / cs)..(at / cs + clusters));
            m.l1.resize(need as usize, 0);
            m.l1_offset = at;
        }
        file.write_at(&new_size.to_be_bytes(), 24)
            .ctx("qcow2: writing the new size")?;
        file.flush()?;
        self.size.store(new_size, Ordering::SeqCst);
        m.flush(file)
    }
}
