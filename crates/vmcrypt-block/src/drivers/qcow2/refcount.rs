//! Refcounts of a qcow2 image opened for writing: the refcount table, a write-back
//! cache of refcount blocks, and cluster allocation.
//!
//! Ordering rules (what makes an interrupted write leave at most leaks):
//! * a refcount goes up (in the cache, written by [`Refcounts::write_dirty`]) before
//!   anything references the cluster on disk;
//! * a new refcount block is written and flushed before the table entry that points to
//!   it; a new refcount table is written and flushed before the header points to it;
//! * refcounts go down only after the last reference is gone from disk: callers queue
//!   them ([`Refcounts::queue_free`]) and [`Refcounts::apply_frees`] runs after the L2 and
//!   L1 writes of a flush. Until then the cluster keeps its refcount and cannot be
//!   allocated again.
use crate::driver::BlockDriver;
use std::collections::{HashMap, HashSet};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::refcount as rc;
use vmcrypt_format::qcow2::table::{decode_u64s, encode_u64s};

/// How far the allocator scans for reusable free clusters before appending.
const SCAN_LIMIT: u64 = 1 << 16;

struct Block {
    bytes: Vec<u8>,
    dirty: bool,
}

pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    /// Loaded refcount blocks by table index.
    blocks: HashMap<usize, Block>,
    /// Host cluster indices whose refcount drops by one at the next flush.
    pending: Vec<u64>,
    /// No free cluster lies below this cluster index.
    cursor: u64,
    /// Every cluster index from here on is free (past the file and all allocations).
    end: u64,
    /// Host clusters holding refcount blocks.
    block_clusters: HashSet<u64>,
}

impl Refcounts {
    /// Load the refcount table of an image whose file is `file_size` bytes.
    pub fn load(
        file: &dyn BlockDriver,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u64,
    ) -> Result<Refcounts> {
        rc::check_order(order)?;
        let mut raw = vec![0u8; (table_clusters << cluster_bits) as usize];
        file.read_at(&mut raw, table_offset)
            .ctx("qcow2: reading the refcount table")?;
        let table: Vec<u64> = decode_u64s(&raw);
        let cs = 1u64 << cluster_bits;
        for (i, &e) in table.iter().enumerate() {
            ensure!(
                e.is_multiple_of(cs),
                Corrupt,
                "qcow2: refcount table entry {i} ({e:#x}) is not cluster-aligned"
            );
        }
        let block_clusters = table
            .iter()
            .filter(|&&e| e != 0)
            .map(|&e| e >> cluster_bits)
            .collect();
        Ok(Refcounts {
            block_clusters,
            cluster_bits,
            order,
            table,
            table_offset,
            table_clusters,
            blocks: HashMap::new(),
            pending: Vec::new(),
            cursor: 0,
            end: file.size().div_ceil(cs),
        })
    }

    /// Whether host cluster `c` holds the refcount table or a refcount block.
    pub fn is_metadata(&self, c: u64) -> bool {
        let t = self.table_offset >> self.cluster_bits;
        (t..t + self.table_clusters).contains(&c) || self.block_clusters.contains(&c)
    }

    fn entries_bits(&self) -> u32 {
        rc::entries_bits(self.cluster_bits, self.order)
    }

    fn split(&self, cluster: u64) -> (usize, usize) {
        let b = self.entries_bits();
        ((cluster >> b) as usize, (cluster & ((1 << b) - 1)) as usize)
    }

    /// Whether anything waits to be written.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty() || self.blocks.values().any(|b| b.dirty)
    }

    fn load_block(&mut self, file: &dyn BlockDriver, i: usize) -> Result<bool> {
        if self.blocks.contains_key(&i) {
            return Ok(true);
        }
        let off = self.table.get(i).copied().unwrap_or(0);
        if off == 0 {
            return Ok(false);
        }
        let mut bytes = vec![0u8; 1 << self.cluster_bits];
        ensure!(
            off + bytes.len() as u64 <= file.size(),
            Corrupt,
            "qcow2: refcount block {i} at {off:#x} is beyond the end of the file"
        );
        file.read_at(&mut bytes, off)
            .with_ctx(|| format!("qcow2: reading refcount block {i}"))?;
        self.blocks.insert(
            i,
            Block {
                bytes,
                dirty: false,
            },
        );
        Ok(true)
    }

    /// The refcount of host cluster `cluster`.
    pub fn get(&mut self, file: &dyn BlockDriver, cluster: u64) -> Result<u64> {
        let (i, j) = self.split(cluster);
        if !self.load_block(file, i)? {
            return Ok(0);
        }
        Ok(rc::get(&self.blocks[&i].bytes, self.order, j))
    }

    fn add(&mut self, file: &dyn BlockDriver, cluster: u64, delta: i64) -> Result<()> {
        self.add_in(file, cluster, delta, true)
    }

    /// Change a refcount; `link` as for [`Refcounts::ensure_block`].
    fn add_in(
        &mut self,
        file: &dyn BlockDriver,
        cluster: u64,
        delta: i64,
        link: bool,
    ) -> Result<()> {
        let (i, j) = self.split(cluster);
        self.ensure_block(file, i, link)?;
        let order = self.order;
        let b = self.blocks.get_mut(&i).expect("block loaded");
        let old = rc::get(&b.bytes, order, j);
        let new = match delta {
            d if d >= 0 => old.checked_add(d as u64),
            d => old.checked_sub(d.unsigned_abs()),
        };
        let Some(new) = new.filter(|&n| n <= rc::max_refcount(order)) else {
            bail!(
                Corrupt,
                "qcow2: refcount of cluster {cluster} would go from {old} out of range"
            );
        };
        rc::set(&mut b.bytes, order, j, new);
        b.dirty = true;
        if new == 0 {
            self.cursor = self.cursor.min(cluster);
        }
        Ok(())
    }

    /// Allocate `n` contiguous clusters; returns the host offset of the first.
    pub fn alloc(&mut self, file: &dyn BlockDriver, n: u64) -> Result<u64> {
        let start = self.find_free(file, n)?;
        self.end = self.end.max(start + n);
        for c in start..start + n {
            self.add(file, c, 1)?;
        }
        Ok(start << self.cluster_bits)
    }

    /// The first run of `n` free clusters at or after the cursor (scanning at most
    /// [`SCAN_LIMIT`] clusters), else the end of the file.
    fn find_free(&mut self, file: &dyn BlockDriver, n: u64) -> Result<u64> {
        let limit = self.end.min(self.cursor.saturating_add(SCAN_LIMIT));
        let (mut c, mut run_start, mut first_free, mut found) =
            (self.cursor, self.cursor, None, None);
        while c < limit {
            if self.get(file, c)? != 0 {
                run_start = c + 1;
            } else {
                first_free.get_or_insert(c);
                if c + 1 - run_start == n {
                    found = Some(run_start);
                    break;
                }
            }
            c += 1;
        }
        // A free run reaching the end continues into the free tail.
        let start = found.unwrap_or(if limit == self.end {
            run_start
        } else {
            self.end
        });
        self.cursor = match first_free {
            Some(f) if f != start => f,
            Some(_) => start + n,
            None if limit < self.end => limit,
            None => start + n,
        };
        Ok(start)
    }

    /// Queue a refcount decrement for the host cluster at byte offset `host`.
    pub fn queue_free(&mut self, host: u64) {
        self.pending.push(host >> self.cluster_bits);
    }

    /// Apply the queued decrements (after the references are gone from disk).
    pub fn apply_frees(&mut self, file: &dyn BlockDriver) -> Result<bool> {
        let pending = std::mem::take(&mut self.pending);
        for &c in &pending {
            self.add(file, c, -1)?;
        }
        Ok(!pending.is_empty())
    }

    /// Write every changed refcount block.
    pub fn write_dirty(&mut self, file: &dyn BlockDriver) -> Result<bool> {
        let mut wrote = false;
        let mut idx: Vec<usize> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&i, _)| i)
            .collect();
        idx.sort_unstable();
        for i in idx {
            let off = self.table[i];
            let b = self.blocks.get_mut(&i).expect("dirty block");
            file.write_at(&b.bytes, off)
                .with_ctx(|| format!("qcow2: writing refcount block {i}"))?;
            b.dirty = false;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Drop clean blocks when more than `max` are cached.
    pub fn trim(&mut self, max: usize) {
        if self.blocks.len() > max {
            self.blocks.retain(|_, b| b.dirty);
        }
    }

    /// Make sure refcount block `i` exists. A new block goes at the end of the file;
    /// with `link`, it is written and hooked into the on-disk table at once.
    fn ensure_block(&mut self, file: &dyn BlockDriver, i: usize, link: bool) -> Result<()> {
        if self.load_block(file, i)? {
            return Ok(());
        }
        if i >= self.table.len() {
            ensure!(
                link,
                Internal,
                "qcow2: refcount table too small while growing it"
            );
            self.grow_table(file, i)?;
            return self.ensure_block(file, i, link);
        }
        let at = self.end;
        self.end += 1;
        let cs = 1usize << self.cluster_bits;
        self.blocks.insert(
            i,
            Block {
                bytes: vec![0u8; cs],
                dirty: true,
            },
        );
        self.table[i] = at << self.cluster_bits;
        self.block_clusters.insert(at);
        self.add_in(file, at, 1, link)?;
        if link {
            self.write_dirty(file)?;
            file.flush()?;
            let entry = (at << self.cluster_bits).to_be_bytes();
            file.write_at(&entry, self.table_offset + 8 * i as u64)
                .ctx("qcow2: linking a new refcount block")?;
            file.flush()?;
        }
        Ok(())
    }

    /// Move the refcount table to a bigger place at the end of the file so that it has
    /// an entry `need`, then switch the header to it.
    fn grow_table(&mut self, file: &dyn BlockDriver, need: usize) -> Result<()> {
        let cs_bits = self.cluster_bits;
        let per_cluster = 1u64 << (cs_bits - 3);
        let covered = |clusters: u64| (clusters * per_cluster) << self.entries_bits();
        let start = self.end;
        let mut n = (self.table_clusters * 2).max((need as u64 + 1).div_ceil(per_cluster));
        while covered(n) < 2 * (start + n) + 64 {
            n *= 2;
        }
        ensure!(
            n << cs_bits <= 8 << 20,
            LimitExceeded,
            "qcow2: the refcount table would exceed 8 MiB"
        );
        let old = (self.table_offset, self.table_clusters);
        self.table.resize((n * per_cluster) as usize, 0);
        self.end += n;
        for c in start..start + n {
            let (i, _) = self.split(c);
            self.ensure_block(file, i, false)?;
            self.add_in(file, c, 1, false)?;
        }
        self.write_dirty(file)?;
        let raw = encode_u64s(&self.table);
        file.write_at(&raw, start << cs_bits)
            .ctx("qcow2: writing the new refcount table")?;
        file.flush()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(start << cs_bits).to_be_bytes());
        hdr[8..].copy_from_slice(&(n as u32).to_be_bytes());
        file.write_at(&hdr, 48)
            .ctx("qcow2: switching the header to the new refcount table")?;
        file.flush()?;
        self.table_offset = start << cs_bits;
        self.table_clusters = n;
        for c in 0..old.1 {
            self.add(file, (old.0 >> cs_bits) + c, -1)?;
        }
        Ok(())
    }
}
