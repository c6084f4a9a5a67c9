//! `commit`: copy what the top layer of a chain holds into its backing node (which
//! encrypts it under its own key), then empty the top layer.
//!
//! Order: every allocated run of the top layer is read (decrypted with the top's key)
//! and written to the backing node, zero clusters become `write_zeroes`; the backing
//! node is flushed; only then are the top layer's clusters released. An interruption
//! before the release leaves the top layer intact, which still reads the same.
use super::Qcow2Driver;
use super::engine::ClusterMap;
use crate::driver::BlockDriver;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::table::l1_l2_offset;
use vmcrypt_format::qcow2::{Mapping, RawL2Entry, Subclusters};

/// Largest run copied with one read and one write.
const CHUNK: u64 = 8 << 20;

/// What the top layer itself says about a run of guest bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// Not in this layer: reads through to the backing node.
    Unallocated,
    Zero,
    Data,
}

fn layer_of(m: Mapping) -> Layer {
    match m {
        Mapping::Backing => Layer::Unallocated,
        Mapping::Zero => Layer::Zero,
        Mapping::Data(_) | Mapping::Compressed(_) => Layer::Data,
    }
}

impl Qcow2Driver {
    /// The state of the top layer at `g` and how many bytes (at most `max`) share it.
    fn layer_run(&self, g: u64, max: u64) -> Result<(Layer, u64)> {
        let unit = 1u64 << self.unit_bits();
        let state = layer_of(self.map_unit(g)?);
        let mut len = (unit - g % unit).min(max);
        while len < max && layer_of(self.map_unit(g + len)?) == state {
            len = (len + unit).min(max);
        }
        Ok((state, len))
    }

    /// Commit this layer into its backing node; `progress(done, total)` is called as
    /// bytes are processed. With `keep_top`, the top layer is left as it is.
    pub fn commit_into_backing(
        &self,
        keep_top: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.check_writable()?;
        self.check_key()?;
        let Some(base) = self.engine.backing.clone() else {
            bail!(
                Usage,
                "'{}' has no backing file to commit into",
                self.engine.file.filename()
            );
        };
        ensure!(
            !base.is_read_only(),
            ReadOnly,
            "the backing file '{}' is opened read-only",
            base.filename()
        );
        let size = self.size();
        if base.size() < size {
            base.resize(size)
                .ctx("growing the backing file to the image size")?;
        }
        let mut buf = Vec::new();
        let mut g = 0;
        while g < size {
            let (state, n) = self.layer_run(g, (size - g).min(CHUNK))?;
            match state {
                Layer::Unallocated => {}
                Layer::Zero => base.write_zeroes(g, n)?,
                Layer::Data => {
                    buf.resize(n as usize, 0);
                    self.read_at(&mut buf, g)?;
                    base.write_at_mut(&mut buf, g)?;
                }
            }
            g += n;
            progress(g, size);
        }
        base.flush().ctx("flushing the backing file")?;
        if !keep_top {
            self.make_empty()?;
        }
        self.flush()
    }

    /// Release every cluster of this layer (all of it then reads from the backing).
    pub fn make_empty(&self) -> Result<()> {
        self.check_writable()?;
        let _x = self.io.write().expect("io lock");
        let per_l2 = 1u64 << self.header.l2_bits();
        let l1_len = self.meta.lock().expect("meta").l1.len();
        for l1i in 0..l1_len {
            let l1e = self.meta.lock().expect("meta").l1[l1i];
            let Some(table) = l1_l2_offset(l1e, l1i, self.header.cluster_size())? else {
                continue;
            };
            let t = self.l2_table(table)?;
            for i in 0..per_l2 as usize {
                let (e, bm) = self.entry_at(&t, i);
                if e == RawL2Entry::UNALLOCATED && bm == Subclusters::NONE {
                    continue;
                }
                let ci = l1i as u64 * per_l2 + i as u64;
                let (l2, idx) = self.l2_for_write(ci)?;
                let mut m = self.meta.lock().expect("meta");
                self.set_l2(&mut m, l2, idx, RawL2Entry::UNALLOCATED, Subclusters::NONE);
                self.release(&mut m, e, idx)?;
            }
        }
        Ok(())
    }
}
