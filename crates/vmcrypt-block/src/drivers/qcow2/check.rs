//! `vmcrypt check` for qcow2: rebuild every cluster's expected refcount from the image's
//! metadata and compare it with the stored refcounts, like `qemu-img check`.
//!
//! The checker reads the image's *file* node directly (never the qcow2 driver, so no
//! driver cache can hide what is on disk). It counts one reference per use: the header
//! cluster, the active and every snapshot's L1 table, each L2 table an L1 names, each data
//! cluster and each cluster a compressed cluster's bytes touch, the snapshot table, the
//! refcount table and blocks, the LUKS header region and (when the autoclear bitmaps bit
//! is set) the bitmap directory, bitmap tables and bitmap data clusters. Stored refcount
//! higher than counted is a leak; lower is a corruption, as are misaligned offsets,
//! references a cluster or more past the end of the file and wrong OFLAG_COPIED flags.
//! Messages follow qemu-img's wording. [`repair`] lowers leaked refcounts (`-r leaks`)
//! and raises too-low ones (`-r all`) in existing refcount blocks, then checks again.
use crate::driver::{BlockDriver, read_padded};
use parse::{Snapshot, bitmap_tables, read_snapshot};
pub use repair::repair;
use std::collections::BTreeMap;
use std::ops::Range;
use vmcrypt_error::{Result, ResultExt, ensure};
use vmcrypt_format::qcow2::header::AUTOCLEAR_BITMAPS;
use vmcrypt_format::qcow2::refcount as rc;
use vmcrypt_format::qcow2::table::{OFFSET_MASK, decode_u64s};
use vmcrypt_format::qcow2::{
    CryptMethod, Extensions, Header, L1Entry, Limits, RawL2Entry, Subclusters,
};

/// Refcount table entry: offset bits and reserved bits.
const REFT_OFFSET_MASK: u64 = !0x1ff;
/// Bitmap table entry: reserved bits and the "all ones" flag.
const BME_RESERVED: u64 = 0xff00_0000_0000_01fe;
const BME_ALL_ONES: u64 = 1;
/// QEMU's caps: snapshots, snapshot extra data, one L1 table, bitmap directory.
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_BITMAP_DIR_BYTES: u64 = 64 << 20;
const MAX_BITMAP_TABLE_BYTES: u64 = 1 << 30;

/// Which refcount problems [`repair`] fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Lower leaked refcounts (`-r leaks`).
    Leaks,
    /// Also raise too-low refcounts of clusters in use (`-r all`).
    All,
}

/// Caps protecting the checker from hostile images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckLimits {
    /// Most host clusters counted (one `u32` of memory each).
    pub max_clusters: u64,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            max_clusters: 1 << 27,
        }
    }
}

/// What a check found, with qemu-img's counters and its stderr messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// One line per problem, worded like qemu-img's (it prints them on stderr).
    pub messages: Vec<String>,
}

/// A refcount that differs from the references counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mismatch {
    cluster: u64,
    stored: u64,
    counted: u64,
}

/// The outcome of [`repair`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    pub leaks_fixed: u64,
    pub corruptions_fixed: u64,
    /// Messages of the first pass ("Leaked cluster ...", "Repairing cluster ...").
    pub messages: Vec<String>,
    /// The check of the repaired image (its `*_fixed` fields set from this repair).
    pub report: CheckReport,
}

/// Check the qcow2 image in `file` (its protocol node) with the default limits.
#[cfg(test)]
pub(crate) fn check(file: &dyn BlockDriver) -> Result<CheckReport> {
    check_with(file, &CheckLimits::default())
}

/// Check the qcow2 image in `file` with explicit limits.
pub fn check_with(file: &dyn BlockDriver, limits: &CheckLimits) -> Result<CheckReport> {
    let name = file.filename();
    let img = Image::open(file).with_ctx(|| format!("checking qcow2 image '{name}'"))?;
    Ok(run(&img, limits)?.report)
}

/// The parsed image: header, extensions, refcount table.
struct Image<'a> {
    file: &'a dyn BlockDriver,
    file_len: u64,
    h: Header,
    ext: Extensions,
    cs: u64,
    reftable: Vec<u64>,
}

impl<'a> Image<'a> {
    fn open(file: &'a dyn BlockDriver) -> Result<Image<'a>> {
        let file_len = file.size();
        let mut head = vec![0u8; file_len.min(1 << 21) as usize];
        file.read_at(&mut head, 0)?;
        let h = Header::decode(&head)?;
        // Every rule but "inside the file": like qemu-img check, tables past the end of
        // the file are reported as corruptions (and read as zeros), not refused.
        h.validate(u64::MAX, &Limits::default())?;
        ensure!(
            h.unknown_incompatible() == 0,
            Unsupported,
            "qcow2: unsupported incompatible features {:#x}",
            h.unknown_incompatible()
        );
        ensure!(
            !h.has_data_file(),
            Unsupported,
            "qcow2: checking images with an external data file is not supported"
        );
        let cs = h.cluster_size();
        head.truncate(cs as usize);
        let ext = Extensions::decode(&head, h.header_length.into(), h.extensions_end())?;
        ensure!(
            ext.fde.is_some() == (h.crypt_method == CryptMethod::Luks),
            Corrupt,
            "qcow2: the encryption header extension must be present exactly with LUKS encryption"
        );
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        let reftable = read_u64s(file, h.refcount_table_offset, rt_bytes)
            .ctx("qcow2: reading the refcount table")?;
        Ok(Image {
            file,
            file_len,
            h,
            ext,
            cs,
            reftable,
        })
    }

    fn refs_per_block(&self) -> u64 {
        (self.cs * 8) >> self.h.refcount_order
    }

    /// The refcount block holding `cluster`'s refcount, if one is allocated and sane.
    fn refblock_of(&self, cluster: u64) -> Option<u64> {
        let i = cluster / self.refs_per_block();
        let off = *self.reftable.get(usize::try_from(i).ok()?)? & REFT_OFFSET_MASK;
        (off != 0 && off.is_multiple_of(self.cs)).then_some(off)
    }
}

/// One run of the check: its report and what repair needs.
struct Pass {
    report: CheckReport,
    mismatches: Vec<Mismatch>,
    /// The refcount table or a refcount block is damaged (qemu-img would rebuild).
    refblocks_broken: bool,
    /// Which of the report's messages are OFLAG_COPIED errors (one corruption each),
    /// which a repairing run reports only as it repairs them.
    oflag_messages: Range<usize>,
}

fn run(img: &Image, limits: &CheckLimits) -> Result<Pass> {
    let mut c = Counter::new(img, limits)?;
    c.report.total_clusters = img.h.size.div_ceil(img.cs);
    let (snaps, snap_bytes) = c.read_snapshots()?;
    c.inc(0, img.cs);
    c.walk_l1(img.h.l1_table_offset, img.h.l1_size, true)?;
    c.walk_snapshots(&snaps, snap_bytes)?;
    c.inc(img.h.refcount_table_offset, img.reftable.len() as u64 * 8);
    if let Some(fde) = img.ext.fde {
        c.inc(fde.offset, fde.length);
    }
    c.bitmaps()?;
    c.refblocks();
    let mismatches = c.compare();
    let oflag_from = c.report.messages.len();
    c.oflag_copied()?;
    let oflag_messages = oflag_from..c.report.messages.len();
    Ok(Pass {
        report: c.report,
        mismatches,
        refblocks_broken: c.refblocks_broken,
        oflag_messages,
    })
}

/// Counts references per host cluster.
struct Counter<'a> {
    img: &'a Image<'a>,
    refs: Vec<u32>,
    /// Highest refcount the image can store (and we can count).
    max: u64,
    report: CheckReport,
    refblocks_broken: bool,
    stored: StoredRefcounts<'a>,
}

impl<'a> Counter<'a> {
    fn new(img: &'a Image<'a>, limits: &CheckLimits) -> Result<Counter<'a>> {
        let n = img.file_len.div_ceil(img.cs);
        ensure!(
            n <= limits.max_clusters,
            LimitExceeded,
            "qcow2: the image file has {n} clusters, above the checker's limit of {}",
            limits.max_clusters
        );
        let bits = img.h.refcount_bits();
        let max = if bits >= 32 {
            u64::from(u32::MAX)
        } else {
            (1 << bits) - 1
        };
        Ok(Counter {
            img,
            refs: vec![0; n as usize],
            max,
            report: CheckReport::default(),
            refblocks_broken: false,
            stored: StoredRefcounts { img, cached: None },
        })
    }

    fn corrupt(&mut self, msg: String) {
        self.report.corruptions += 1;
        self.report.messages.push(msg);
    }

    /// Count one reference to every cluster `[offset, offset+size)` touches.
    fn inc(&mut self, offset: u64, size: u64) {
        if size == 0 {
            return;
        }
        let cs = self.img.cs;
        let end = offset.checked_add(size);
        if end.is_none_or(|e| e > self.img.file_len && e - self.img.file_len >= cs) {
            self.corrupt(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            return;
        }
        let (first, last) = (offset / cs, (offset + size - 1) / cs);
        for k in first..=last {
            let k = k as usize;
            if k >= self.refs.len() {
                self.refs.resize(k + 1, 0);
            }
            if u64::from(self.refs[k]) >= self.max {
                self.corrupt(format!(
                    "ERROR: overflow cluster offset={:#x}",
                    k as u64 * cs
                ));
                continue;
            }
            self.refs[k] += 1;
        }
    }

    fn walk_l1(&mut self, l1_off: u64, l1_size: u32, active: bool) -> Result<()> {
        let bytes = u64::from(l1_size) * 8;
        self.inc(l1_off, bytes);
        let l1 = read_u64s(self.img.file, l1_off, bytes).ctx("qcow2: reading an L1 table")?;
        for e in l1.into_iter().map(L1Entry::from_raw) {
            if e.has_reserved_bits() {
                self.corrupt(format!(
                    "ERROR found L1 entry with reserved bits set: {:x}",
                    e.raw()
                ));
            }
            // qemu-img walks every non-zero entry, even one whose offset bits are zero
            // (it then reads the header cluster as an L2 table).
            if e == L1Entry::UNALLOCATED {
                continue;
            }
            let l2 = e.l2_offset();
            self.inc(l2, self.img.cs);
            if !l2.is_multiple_of(self.img.cs) {
                self.corrupt(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
            }
            self.walk_l2(l2, active)?;
        }
        Ok(())
    }

    fn walk_l2(&mut self, l2_off: u64, active: bool) -> Result<()> {
        let table = read_u64s(self.img.file, l2_off, self.img.cs)
            .with_ctx(|| format!("qcow2: reading the L2 table at {l2_off:#x}"))?;
        let ext = self.img.h.has_extended_l2();
        let step = if ext { 2 } else { 1 };
        // Fragmentation is judged within one L2 table, as qemu-img does.
        let mut next = 0;
        for (i, pair) in table.chunks_exact(step).enumerate() {
            let bitmap = Subclusters::from_raw(if ext { pair[1] } else { 0 });
            self.l2_entry(i, RawL2Entry::from_raw(pair[0]), bitmap, active, &mut next);
        }
        Ok(())
    }

    fn l2_entry(
        &mut self,
        i: usize,
        entry: RawL2Entry,
        bitmap: Subclusters,
        active: bool,
        next: &mut u64,
    ) {
        let ext = self.img.h.has_extended_l2();
        if entry.is_compressed() {
            return self.compressed(i, entry, bitmap, active);
        }
        if entry.has_reserved_bits() {
            self.corrupt(format!(
                "ERROR found l2 entry with reserved bits set: {:x}",
                entry.raw()
            ));
        }
        let off = entry.host_offset();
        if entry.zero_flag() && !ext && off == 0 {
            return;
        }
        if off == 0 {
            if bitmap.allocated() != 0 {
                self.corrupt(
                    "ERROR: Unallocated cluster has non-zero subcluster allocation map".into(),
                );
            }
            return;
        }
        if bitmap.conflicts() != 0 {
            self.corrupt(format!(
                "ERROR offset={off:x}: Allocated cluster has corrupted subcluster allocation bitmap"
            ));
        }
        if !off.is_multiple_of(self.img.cs) {
            let data = if ext {
                bitmap.allocated() != 0
            } else {
                !entry.zero_flag()
            };
            self.corrupt(if data {
                format!("ERROR offset={off:x}: Data cluster is not properly aligned; L2 entry corrupted.")
            } else {
                format!("ERROR offset={off:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.")
            });
        }
        if active {
            self.report.allocated_clusters += 1;
            if *next != 0 && off != *next {
                self.report.fragmented_clusters += 1;
            }
            *next = off + self.img.cs;
        }
        self.inc(off, self.img.cs);
    }

    fn compressed(&mut self, i: usize, entry: RawL2Entry, bitmap: Subclusters, active: bool) {
        let d = entry.compressed(self.img.h.cluster_bits);
        if entry.copied() {
            self.corrupt(format!(
                "ERROR: coffset={:#x}: copied flag must never be set for compressed clusters",
                d.offset
            ));
        }
        if bitmap != Subclusters::NONE {
            self.corrupt(format!(
                "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry={:#x}",
                entry.with_copied(false).raw()
            ));
            return;
        }
        self.inc(d.offset, d.size);
        if active {
            self.report.allocated_clusters += 1;
            self.report.compressed_clusters += 1;
            self.report.fragmented_clusters += 1;
        }
    }

    /// Read the snapshot table (reporting incomplete entries first, like qemu-img);
    /// returns the entries and the table's size in bytes.
    fn read_snapshots(&mut self) -> Result<(Vec<Snapshot>, u64)> {
        let h = &self.img.h;
        ensure!(
            h.nb_snapshots <= MAX_SNAPSHOTS,
            LimitExceeded,
            "qcow2: {} snapshots are more than {MAX_SNAPSHOTS}",
            h.nb_snapshots
        );
        let mut pos = h.snapshots_offset;
        let mut out = Vec::with_capacity(h.nb_snapshots as usize);
        for i in 0..h.nb_snapshots {
            pos = pos.next_multiple_of(8);
            let (sn, len) = read_snapshot(self.img, pos)?;
            pos = pos.saturating_add(len);
            // Version 3 entries carry at least the large VM state size and disk size.
            if h.version >= 3 && sn.extra_data_size < 16 {
                self.corrupt(format!("ERROR snapshot table entry {i} is incomplete"));
            }
            out.push(sn);
        }
        Ok((out, pos - h.snapshots_offset))
    }

    fn walk_snapshots(&mut self, snaps: &[Snapshot], table_size: u64) -> Result<()> {
        for sn in snaps {
            if !sn.l1_offset.is_multiple_of(self.img.cs) {
                self.corrupt(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_offset
                ));
                continue;
            }
            if u64::from(sn.l1_size) * 8 > MAX_L1_BYTES {
                self.corrupt(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_size
                ));
                continue;
            }
            self.walk_l1(sn.l1_offset, sn.l1_size, false)?;
        }
        self.inc(self.img.h.snapshots_offset, table_size);
        Ok(())
    }

    fn bitmaps(&mut self) -> Result<()> {
        let Some(b) = self.img.ext.bitmaps else {
            return Ok(());
        };
        if self.img.h.autoclear_features & AUTOCLEAR_BITMAPS == 0 || b.nb_bitmaps == 0 {
            return Ok(());
        }
        self.inc(b.directory_offset, b.directory_size);
        let tables = match bitmap_tables(self.img, b.directory_offset, b.directory_size) {
            Ok(t) => t,
            Err(e) => {
                self.corrupt(format!("ERROR bitmap directory: {}", e.display_chain()));
                return Ok(());
            }
        };
        for (off, n) in tables {
            let bytes = u64::from(n) * 8;
            self.inc(off, bytes);
            let inside = off
                .checked_add(bytes)
                .is_some_and(|e| e <= self.img.file_len);
            if bytes > MAX_BITMAP_TABLE_BYTES || !inside || !off.is_multiple_of(self.img.cs) {
                self.corrupt(format!("ERROR bitmap table at {off:#x} is invalid"));
                continue;
            }
            for e in read_u64s(self.img.file, off, bytes).ctx("qcow2: reading a bitmap table")? {
                let data = e & OFFSET_MASK;
                if e & BME_RESERVED != 0
                    || (data != 0 && (e & BME_ALL_ONES != 0 || !data.is_multiple_of(self.img.cs)))
                {
                    self.corrupt(format!("ERROR bitmap table entry {e:#x} is invalid"));
                    continue;
                }
                if data != 0 {
                    self.inc(data, self.img.cs);
                }
            }
        }
        Ok(())
    }

    /// Count the refcount blocks and check the refcount table's entries.
    fn refblocks(&mut self) {
        let cs = self.img.cs;
        for (i, &e) in self.img.reftable.iter().enumerate() {
            let off = e & REFT_OFFSET_MASK;
            if e & !REFT_OFFSET_MASK != 0 {
                self.corrupt(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.refblocks_broken = true;
                continue;
            }
            if !off.is_multiple_of(cs) {
                self.corrupt(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                self.refblocks_broken = true;
                continue;
            }
            if off / cs >= self.refs.len() as u64 {
                self.corrupt(format!("ERROR refcount block {i} is outside image"));
                self.refblocks_broken = true;
                continue;
            }
            if off != 0 {
                self.inc(off, cs);
                let n = self.refs[(off / cs) as usize];
                if n != 1 {
                    self.corrupt(format!("ERROR refcount block {i} refcount={n}"));
                    self.refblocks_broken = true;
                }
            }
        }
    }

    /// Compare stored and counted refcounts; set the image end offset.
    fn compare(&mut self) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut highest = None;
        for i in 0..self.refs.len() {
            let counted = u64::from(self.refs[i]);
            let stored = match self.stored.get(i as u64) {
                Ok(s) => s,
                Err(e) => {
                    self.report.check_errors += 1;
                    self.report.messages.push(format!(
                        "Can't get refcount for cluster {i}: {}",
                        e.display_chain()
                    ));
                    continue;
                }
            };
            if stored > 0 || counted > 0 {
                highest = Some(i as u64);
            }
            if stored == counted {
                continue;
            }
            let word = if stored < counted { "ERROR" } else { "Leaked" };
            self.report.messages.push(format!(
                "{word} cluster {i} refcount={stored} reference={counted}"
            ));
            if stored < counted {
                self.report.corruptions += 1;
            } else {
                self.report.leaks += 1;
            }
            out.push(Mismatch {
                cluster: i as u64,
                stored,
                counted,
            });
        }
        self.report.image_end_offset = highest.map_or(0, |h| (h + 1) * self.img.cs);
        out
    }

    /// COPIED must be set exactly on active L2 tables and data clusters with refcount 1.
    /// Every message this adds is an OFLAG_COPIED error (see [`Pass::oflag_messages`]).
    fn oflag_copied(&mut self) -> Result<()> {
        let h = &self.img.h;
        let l1 = read_u64s(self.img.file, h.l1_table_offset, u64::from(h.l1_size) * 8)?;
        let step = if h.has_extended_l2() { 2 } else { 1 };
        for (i, e) in l1.into_iter().map(L1Entry::from_raw).enumerate() {
            let l2 = e.l2_offset();
            if l2 == 0 {
                continue;
            }
            let Ok(rc) = self.stored.get(l2 >> h.cluster_bits) else {
                continue;
            };
            if (rc == 1) != e.copied() {
                self.corrupt(format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={:x} refcount={rc}",
                    e.raw()
                ));
            }
            let table = read_u64s(self.img.file, l2, self.img.cs)?;
            for pair in table.chunks_exact(step) {
                let x = RawL2Entry::from_raw(pair[0]);
                let off = x.host_offset();
                if x.is_compressed() || off == 0 {
                    continue;
                }
                let Ok(rc) = self.stored.get(off >> h.cluster_bits) else {
                    continue;
                };
                if (rc == 1) != x.copied() {
                    self.corrupt(format!(
                        "ERROR OFLAG_COPIED data cluster: l2_entry={:x} refcount={rc}",
                        x.raw()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Stored refcounts, reading one refcount block at a time.
struct StoredRefcounts<'a> {
    img: &'a Image<'a>,
    cached: Option<(u64, Vec<u8>)>,
}

impl StoredRefcounts<'_> {
    fn get(&mut self, cluster: u64) -> Result<u64> {
        let img = self.img;
        let Ok(i) = usize::try_from(cluster / img.refs_per_block()) else {
            return Ok(0);
        };
        let Some(&e) = img.reftable.get(i) else {
            return Ok(0);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        ensure!(
            off.is_multiple_of(img.cs),
            Corrupt,
            "refcount block offset {off:#x} is not cluster aligned"
        );
        if self.cached.as_ref().is_none_or(|(o, _)| *o != off) {
            let mut b = vec![0u8; img.cs as usize];
            read_padded(img.file, &mut b, off)?;
            self.cached = Some((off, b));
        }
        let (_, block) = self.cached.as_ref().expect("just filled");
        let idx = cluster & (img.refs_per_block() - 1);
        Ok(rc::get(block, img.h.refcount_order, idx as usize))
    }
}

/// Read `bytes` (a multiple of 8, already capped by the caller) as big-endian u64s.
fn read_u64s(file: &dyn BlockDriver, offset: u64, bytes: u64) -> Result<Vec<u64>> {
    ensure!(
        bytes <= MAX_BITMAP_TABLE_BYTES,
        LimitExceeded,
        "qcow2: a {bytes}-byte table is too large"
    );
    let mut raw = vec![0u8; bytes as usize];
    read_padded(file, &mut raw, offset)?;
    Ok(decode_u64s(&raw))
}

#[path = "check_parse.rs"]
mod parse;
#[path = "check_repair.rs"]
mod repair;
#[path = "check_report.rs"]
mod report;

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
