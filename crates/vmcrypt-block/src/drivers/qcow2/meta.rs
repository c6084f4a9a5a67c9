//! The mutable metadata of an open qcow2 image: the L1 table, a cache of L2 tables
//! with dirty tracking, the refcounts (loaded on the first write) and the ordered
//! flush that writes them back.
//!
//! [`Meta::flush`] writes in an order that keeps the image consistent if it stops at
//! any write: (1) refcount blocks, then a file flush, so data clusters, their refcounts
//! and new tables are durable; (2) L2 tables, flush; (3) L1 entries, flush; (4) only
//! then the refcount decrements of clusters that lost their last reference, flush. An
//! interruption leaves at most leaked clusters, never a reference to a cluster whose
//! data or refcount is not on disk.
use super::refcount::Refcounts;
use crate::driver::BlockDriver;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use vmcrypt_error::{Result, ResultExt};
use vmcrypt_format::qcow2::L1Entry;
use vmcrypt_format::qcow2::table::encode_u64s;

/// Refcount blocks kept in memory before clean ones are dropped.
const MAX_REFBLOCKS: usize = 512;

struct L2Slot {
    table: Arc<Vec<u64>>,
    used: u64,
    dirty: bool,
}

pub struct Meta {
    pub l1: Vec<u64>,
    pub l1_offset: u64,
    l1_dirty: BTreeSet<usize>,
    slots: HashMap<u64, L2Slot>,
    clock: u64,
    capacity: usize,
    /// Loaded for writing.
    pub refs: Option<Refcounts>,
    /// Host clusters of the header, L1 and L2 tables, LUKS header, snapshot table and
    /// bitmap directory (refcount structures are [`Refcounts::is_metadata`]): data
    /// writes must never land there, whatever a hostile L2 entry says.
    pub protected: HashSet<u64>,
}

impl Meta {
    pub fn new(l1: Vec<u64>, l1_offset: u64, capacity: usize) -> Meta {
        Meta {
            l1,
            l1_offset,
            l1_dirty: BTreeSet::new(),
            slots: HashMap::new(),
            clock: 0,
            capacity,
            refs: None,
            protected: HashSet::new(),
        }
    }

    /// Whether host cluster `c` holds metadata.
    pub fn is_metadata(&self, c: u64) -> bool {
        self.protected.contains(&c) || self.refs.as_ref().is_some_and(|r| r.is_metadata(c))
    }

    /// The cached L2 table at host offset `off`.
    pub fn cached(&mut self, off: u64) -> Option<Arc<Vec<u64>>> {
        self.clock += 1;
        let now = self.clock;
        self.slots.get_mut(&off).map(|s| {
            s.used = now;
            s.table.clone()
        })
    }

    /// Cache a table just read from disk (keeps an already cached copy, which may be
    /// newer), dropping the least recently used clean table when full.
    pub fn insert_clean(&mut self, off: u64, table: Arc<Vec<u64>>) -> Arc<Vec<u64>> {
        if let Some(t) = self.cached(off) {
            return t;
        }
        if self.slots.len() >= self.capacity {
            self.evict_clean();
        }
        self.slots.insert(
            off,
            L2Slot {
                table: table.clone(),
                used: self.clock,
                dirty: false,
            },
        );
        table
    }

    fn evict_clean(&mut self) {
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| !s.dirty)
            .min_by_key(|(_, s)| s.used)
            .map(|(&k, _)| k);
        if let Some(k) = victim {
            self.slots.remove(&k);
        }
    }

    /// Put a new or changed table in the cache, dirty.
    pub fn insert_dirty(&mut self, off: u64, table: Vec<u64>) {
        self.clock += 1;
        self.slots.insert(
            off,
            L2Slot {
                table: Arc::new(table),
                used: self.clock,
                dirty: true,
            },
        );
    }

    /// Change entry `index` of the cached table at `off` (it must be cached).
    pub fn set_entry(&mut self, off: u64, index: usize, value: u64) {
        let s = self
            .slots
            .get_mut(&off)
            .expect("L2 table cached for writing");
        Arc::make_mut(&mut s.table)[index] = value;
        s.dirty = true;
    }

    /// Keep the cached table at `off` until the next flush (it is about to change).
    pub fn pin(&mut self, off: u64) {
        if let Some(s) = self.slots.get_mut(&off) {
            s.dirty = true;
        }
    }

    /// Drop a table that is no longer referenced from the cache.
    pub fn forget(&mut self, off: u64) {
        self.slots.remove(&off);
    }

    /// L1 entry `index`, or `None` past the end of the table.
    pub fn l1_entry(&self, index: usize) -> Option<L1Entry> {
        self.l1.get(index).copied().map(L1Entry::from_raw)
    }

    /// Point L1 entry `index` at `value` (an L2 table, which becomes protected).
    pub fn set_l1(&mut self, index: usize, value: L1Entry, cluster_bits: u32) {
        self.protected.insert(value.l2_offset() >> cluster_bits);
        self.l1[index] = value.raw();
        self.l1_dirty.insert(index);
    }

    pub fn refs(&mut self) -> &mut Refcounts {
        self.refs.as_mut().expect("refcounts loaded for writing")
    }

    pub fn is_dirty(&self) -> bool {
        !self.l1_dirty.is_empty()
            || self.slots.values().any(|s| s.dirty)
            || self.refs.as_ref().is_some_and(|r| r.is_dirty())
    }

    /// Write everything back in the safe order (see the module docs) and flush.
    pub fn flush(&mut self, file: &dyn BlockDriver) -> Result<()> {
        if !self.is_dirty() {
            return file.flush();
        }
        if let Some(r) = self.refs.as_mut() {
            r.write_dirty(file)?;
        }
        file.flush()?;
        self.write_l2(file)?;
        file.flush()?;
        self.write_l1(file)?;
        file.flush()?;
        if let Some(r) = self.refs.as_mut()
            && r.apply_frees(file)?
        {
            r.write_dirty(file)?;
            file.flush()?;
            r.trim(MAX_REFBLOCKS);
        }
        Ok(())
    }

    fn write_l2(&mut self, file: &dyn BlockDriver) -> Result<()> {
        let mut dirty: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&k, _)| k)
            .collect();
        dirty.sort_unstable();
        for off in dirty {
            let s = self.slots.get_mut(&off).expect("dirty slot");
            let raw = encode_u64s(&s.table);
            file.write_at(&raw, off)
                .with_ctx(|| format!("qcow2: writing the L2 table at {off:#x}"))?;
            s.dirty = false;
        }
        Ok(())
    }

    fn write_l1(&mut self, file: &dyn BlockDriver) -> Result<()> {
        let idx: Vec<usize> = self.l1_dirty.iter().copied().collect();
        let mut k = 0;
        while k < idx.len() {
            let mut j = k + 1;
            while j < idx.len() && idx[j] == idx[j - 1] + 1 {
                j += 1;
            }
            let raw: Vec<u8> = idx[k..j]
                .iter()
                .flat_map(|&i| self.l1[i].to_be_bytes())
                .collect();
            file.write_at(&raw, self.l1_offset + 8 * idx[k] as u64)
                .ctx("qcow2: writing the L1 table")?;
            k = j;
        }
        self.l1_dirty.clear();
        Ok(())
    }

    /// After a write: if too many tables are cached, write back and drop clean ones.
    pub fn trim(&mut self, file: &dyn BlockDriver) -> Result<()> {
        if self.slots.len() <= self.capacity {
            return Ok(());
        }
        if self.slots.values().any(|s| s.dirty) {
            self.flush(file)?;
        }
        while self.slots.len() > self.capacity {
            self.evict_clean();
        }
        Ok(())
    }
}
