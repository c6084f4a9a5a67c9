//! A new volume key for a qcow2+LUKS image (`vmcrypt rekey`), crash-safe.
//!
//! QEMU can add and remove passphrases of an embedded LUKS header but not change the
//! volume key; a key that leaked stays valid until every cluster is re-encrypted. This
//! module does that without ever writing over a byte the current header points to:
//!
//! 1. a new LUKS header (fresh random volume key, the new passphrase) goes into newly
//!    allocated clusters;
//! 2. every data cluster of this layer is read, decrypted with the old key, encrypted
//!    with the new one for its new host offset (IV = host offset / 512) and written to a
//!    newly allocated cluster; each L2 table is copied to a new cluster with the new
//!    offsets, and a new L1 table is written;
//! 3. the refcounts of all these clusters are written and flushed;
//! 4. one 512-byte write of the header's first sector switches the L1 table offset and
//!    the encryption header extension (offset and length) together;
//! 5. the old clusters (data, L2 and L1 tables, LUKS header with the old key material)
//!    are zeroed (a hole is punched where the file allows), then their refcounts drop.
//!
//! Stopped before step 4, the image is the old one with leaked clusters; after it, the
//! new one with leaked clusters until step 5 ends. Both open with their key and read
//! the full data (`tests/qcow2_rekey.rs` interrupts at every write, whole and torn).
//! Step 4 relies on a sector write being atomic (the same assumption as QEMU's own
//! header updates), so the extension must lie in the first sector: QEMU writes it
//! right after the fixed header.
//!
//! Only this layer's clusters are re-encrypted: unallocated clusters still read from the
//! backing file, under its own key. Internal snapshots share clusters and are refused,
//! as are compressed clusters (QEMU never writes compressed data to an encrypted image).
use super::Qcow2Driver;
use super::crypt::Crypto;
use super::refcount::Refcounts;
use crate::driver::BlockDriver;
use crate::drivers::luks::{CreateParams, Luks1Volume, crypt};
use crate::drivers::raw::RawDriver;
use std::sync::Arc;
use vmcrypt_crypto::SectorCipher;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::qcow2::ext::EXT_FDE;
use vmcrypt_format::qcow2::table::{OFFSET_MASK, decode_u64s, encode_u64s};
use vmcrypt_format::qcow2::{L1Entry, RawL2Entry, Subclusters};

/// Bytes re-encrypted per step (clusters are batched up to this size).
const BATCH: u64 = 8 << 20;
/// Byte offset of `l1_table_offset` in the qcow2 header.
const L1_OFFSET_FIELD: usize = 40;
/// The atomic unit of the switch.
const SECTOR: usize = 512;

/// What a re-key did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyStats {
    /// Data clusters re-encrypted.
    pub clusters: u64,
    /// L2 tables copied.
    pub l2_tables: u64,
    /// Bytes re-encrypted.
    pub bytes: u64,
    /// Old clusters zeroed and freed after the switch (data, tables, LUKS header).
    pub freed_clusters: u64,
}

/// A run of old host clusters to zero and free after the switch.
#[derive(Clone, Copy)]
struct Run {
    off: u64,
    len: u64,
}

/// The image as the re-key walks it.
struct Walk<'a> {
    file: &'a Arc<dyn BlockDriver>,
    refs: &'a mut Refcounts,
    old: &'a SectorCipher,
    new: &'a SectorCipher,
    cs: u64,
    extended: bool,
    stats: RekeyStats,
    /// Old clusters, in runs, to free after the switch.
    garbage: Vec<Run>,
}

impl Qcow2Driver {
    /// The embedded LUKS header, if the image is LUKS-encrypted.
    pub fn luks_volume(&self) -> Option<&Luks1Volume> {
        match &self.engine.crypto {
            Crypto::Luks { volume, .. } => Some(volume),
            _ => None,
        }
    }

    /// Re-encrypt this image (opened writable with its current key) under a new volume
    /// key: a new LUKS header made with `params` (its layout must be QEMU's packed one)
    /// and `passphrase`. Consumes the node: its metadata is stale afterwards.
    /// `progress(done, total)` counts data clusters. See the module doc for the order.
    pub fn rekey(
        self,
        params: &CreateParams,
        passphrase: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RekeyStats> {
        let name = self.engine.file.filename();
        self.rekey_inner(params, passphrase, progress)
            .with_ctx(|| format!("re-keying qcow2 image '{name}'"))
    }

    fn rekey_inner(
        self,
        params: &CreateParams,
        passphrase: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RekeyStats> {
        let old = self.rekeyable()?;
        self.flush_all()?;
        let file = self.engine.file.clone();
        let fde_field = fde_field_offset(file.as_ref(), u64::from(self.header.header_length))?;
        let old_fde = self.ext.fde.expect("a LUKS image has an FDE extension");
        let mut meta = self.meta.lock().expect("meta");
        let l1 = meta.l1.clone();
        let mut refs = meta
            .refs
            .take()
            .expect("writable images load their refcounts");
        drop(meta);
        let cs = self.header.cluster_size();
        let extended = self.header.has_extended_l2();
        let total = count_clusters(file.as_ref(), &l1, cs, extended)?;
        let (new_fde, new_cipher) = new_header(&file, &mut refs, cs, params, passphrase)?;
        let mut w = Walk {
            file: &file,
            refs: &mut refs,
            old,
            new: &new_cipher,
            cs,
            extended,
            stats: RekeyStats::default(),
            garbage: Vec::new(),
        };
        let l1_off = w.copy_l1(&l1, self.header.l1_table_offset, &mut |d| {
            progress(d, total)
        })?;
        w.garbage.push(Run {
            off: old_fde.offset,
            len: old_fde.length.div_ceil(cs) * cs,
        });
        let (mut stats, garbage) = (w.stats, w.garbage);
        // Everything new is on disk with its refcount before the header names it.
        refs.write_dirty(file.as_ref())?;
        file.flush()?;
        switch(file.as_ref(), fde_field, l1_off, new_fde)?;
        stats.freed_clusters = release(file.as_ref(), &mut refs, &garbage, cs)?;
        Ok(stats)
    }

    /// The current key's cipher, or why this image cannot be re-keyed.
    fn rekeyable(&self) -> Result<&SectorCipher> {
        if let Some(r) = &self.write_refusal {
            bail!(ReadOnly, "{r}");
        }
        let Crypto::Luks {
            cipher: Some(old), ..
        } = &self.engine.crypto
        else {
            bail!(
                Unsupported,
                "the image is not LUKS-encrypted (or no key was given): only qcow2 images with encrypt.format=luks can be re-keyed"
            );
        };
        ensure!(
            self.header.nb_snapshots == 0,
            Unsupported,
            "the image has {} internal snapshot(s), which share clusters with the active layer; delete them first (qemu-img snapshot -d)",
            self.header.nb_snapshots
        );
        Ok(old)
    }
}

/// Where the FDE extension's offset field lies in the header (it must be in the first
/// sector, see the module doc).
fn fde_field_offset(file: &dyn BlockDriver, header_length: u64) -> Result<usize> {
    let mut sector = [0u8; SECTOR];
    file.read_at(&mut sector, 0)?;
    let mut pos = header_length as usize;
    while pos + 8 <= SECTOR {
        let kind = u32::from_be_bytes(sector[pos..pos + 4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(sector[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if kind == 0 {
            break;
        }
        if kind == EXT_FDE {
            ensure!(
                pos + 8 + 16 <= SECTOR,
                Unsupported,
                "the encryption header extension straddles the first sector"
            );
            return Ok(pos + 8);
        }
        pos += 8 + (len as usize).next_multiple_of(8);
    }
    bail!(
        Unsupported,
        "the encryption header extension is not in the header's first sector, so it cannot be switched with one atomic write; rewrite the header with 'qemu-img amend' or 'vmcrypt convert' first"
    )
}

/// Data clusters this layer owns, checking every L2 entry before anything is written.
fn count_clusters(file: &dyn BlockDriver, l1: &[u64], cs: u64, extended: bool) -> Result<u64> {
    let mut n = 0;
    for (i, &e) in l1.iter().enumerate() {
        let Some(l2) = L1Entry::from_raw(e).l2_table(i, cs)? else {
            continue;
        };
        let t = read_table(file, l2, cs)?;
        for (idx, (raw, _)) in entries(&t, extended).enumerate() {
            if raw.is_compressed() {
                bail!(
                    Unsupported,
                    "L2 table at {l2:#x} entry {idx} is a compressed cluster, which an encrypted image cannot hold"
                );
            }
            if raw.host_offset() == 0 {
                continue;
            }
            ensure!(
                raw.copied(),
                Unsupported,
                "the cluster at host offset {:#x} is shared (refcount above 1); repair the image with 'qemu-img check -r all' first",
                raw.host_offset()
            );
            ensure!(
                raw.host_offset() + cs <= file.size(),
                Corrupt,
                "L2 table at {l2:#x} entry {idx} points past the end of the file"
            );
            n += 1;
        }
    }
    Ok(n)
}

fn read_table(file: &dyn BlockDriver, off: u64, cs: u64) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; cs as usize];
    file.read_at(&mut raw, off)
        .with_ctx(|| format!("reading the L2 table at {off:#x}"))?;
    Ok(decode_u64s(&raw))
}

/// The entries of an L2 table (with their subcluster bitmaps when extended).
fn entries(t: &[u64], extended: bool) -> impl Iterator<Item = (RawL2Entry, Subclusters)> + '_ {
    let step = if extended { 2 } else { 1 };
    t.chunks(step).map(move |c| {
        let bm = if extended { c[1] } else { 0 };
        (RawL2Entry::from_raw(c[0]), Subclusters::from_raw(bm))
    })
}

/// Allocate clusters for a new LUKS header with QEMU's region size, make it there, and
/// return the region and the new key's cipher.
fn new_header(
    file: &Arc<dyn BlockDriver>,
    refs: &mut Refcounts,
    cs: u64,
    params: &CreateParams,
    passphrase: &[u8],
) -> Result<((u64, u64), SectorCipher)> {
    let len = super::create::fde_len(params);
    let n = len.div_ceil(cs);
    let off = refs.alloc(file.as_ref(), n)?;
    // The region must exist before a window can cover it.
    file.write_at(&vec![0u8; (n * cs) as usize], off)
        .ctx("reserving the new LUKS header region")?;
    let window: Arc<dyn BlockDriver> = Arc::new(RawDriver::new(file.clone(), off, Some(len))?);
    let (vol, key) =
        Luks1Volume::create(window, params, passphrase).ctx("creating the new LUKS header")?;
    ensure!(
        vol.payload_offset() == len,
        Internal,
        "the new LUKS header's payload offset {} differs from its region of {len} bytes",
        vol.payload_offset()
    );
    let cipher = SectorCipher::new(vol.spec(), key.as_bytes())?;
    Ok(((off, len), cipher))
}

impl Walk<'_> {
    /// Copy every L2 table the L1 table `l1` (at `l1_offset`) names, and their data,
    /// then the L1 table itself; returns the new L1 table's offset. `progress` gets the
    /// data clusters done.
    fn copy_l1(
        &mut self,
        l1: &[u64],
        l1_offset: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        progress(0);
        let mut new_l1 = vec![0u64; l1.len()];
        for (i, &e) in l1.iter().enumerate() {
            let Some(l2) = L1Entry::from_raw(e).l2_table(i, self.cs)? else {
                continue;
            };
            new_l1[i] = L1Entry::owned(self.copy_table(l2)?).raw();
            progress(self.stats.clusters);
        }
        // An empty L1 table (a 0-byte disk) owns no cluster: it stays where it is.
        if l1.is_empty() {
            return Ok(l1_offset);
        }
        self.garbage.push(Run {
            off: l1_offset,
            len: (l1.len() as u64 * 8).div_ceil(self.cs) * self.cs,
        });
        self.write_new(&encode_u64s(&new_l1))
    }

    /// Copy the L2 table at `l2` and every data cluster it names; returns the new
    /// table's offset.
    fn copy_table(&mut self, l2: u64) -> Result<u64> {
        let mut t = read_table(self.file.as_ref(), l2, self.cs)?;
        let step = if self.extended { 2 } else { 1 };
        let owned: Vec<usize> = (0..t.len())
            .step_by(step)
            .filter(|&k| RawL2Entry::from_raw(t[k]).host_offset() != 0)
            .collect();
        let per = (BATCH / self.cs).max(1) as usize;
        for batch in owned.chunks(per) {
            let olds: Vec<u64> = batch
                .iter()
                .map(|&k| RawL2Entry::from_raw(t[k]).host_offset())
                .collect();
            let new = self.move_clusters(&olds)?;
            for (j, &k) in batch.iter().enumerate() {
                t[k] = (t[k] & !OFFSET_MASK) | (new + j as u64 * self.cs);
            }
        }
        self.garbage.push(Run {
            off: l2,
            len: self.cs,
        });
        self.stats.l2_tables += 1;
        self.write_new(&encode_u64s(&t))
    }

    /// Re-encrypt the clusters at `olds` into one new contiguous run; returns its start.
    fn move_clusters(&mut self, olds: &[u64]) -> Result<u64> {
        let cs = self.cs;
        let n = olds.len() as u64;
        let start = self.refs.alloc(self.file.as_ref(), n)?;
        let mut buf = vec![0u8; (n * cs) as usize];
        let mut i = 0;
        while i < olds.len() {
            // A run of clusters contiguous on disk is read and decrypted in one go.
            let mut j = i + 1;
            while j < olds.len() && olds[j] == olds[j - 1] + cs {
                j += 1;
            }
            let piece = &mut buf[i * cs as usize..j * cs as usize];
            self.file
                .read_at(piece, olds[i])
                .with_ctx(|| format!("reading the data cluster at {:#x}", olds[i]))?;
            crypt(self.old, olds[i] / 512, 512, piece, false)?;
            self.garbage.push(Run {
                off: olds[i],
                len: (j - i) as u64 * cs,
            });
            i = j;
        }
        crypt(self.new, start / 512, 512, &mut buf, true)?;
        self.file
            .write_at(&buf, start)
            .with_ctx(|| format!("writing re-encrypted clusters at {start:#x}"))?;
        self.stats.clusters += n;
        self.stats.bytes += n * cs;
        Ok(start)
    }

    /// Write `bytes` (a table) into newly allocated whole clusters; returns the offset.
    fn write_new(&mut self, bytes: &[u8]) -> Result<u64> {
        let n = (bytes.len() as u64).div_ceil(self.cs).max(1);
        let off = self.refs.alloc(self.file.as_ref(), n)?;
        let mut padded = bytes.to_vec();
        padded.resize((n * self.cs) as usize, 0);
        self.file
            .write_at(&padded, off)
            .with_ctx(|| format!("writing a table at {off:#x}"))?;
        Ok(off)
    }
}

/// The one write that makes the new key, tables and data current: the first sector
/// with the new L1 table offset and the new LUKS header region.
fn switch(file: &dyn BlockDriver, fde_field: usize, l1_off: u64, fde: (u64, u64)) -> Result<()> {
    let mut sector = [0u8; SECTOR];
    file.read_at(&mut sector, 0)?;
    sector[L1_OFFSET_FIELD..L1_OFFSET_FIELD + 8].copy_from_slice(&l1_off.to_be_bytes());
    sector[fde_field..fde_field + 8].copy_from_slice(&fde.0.to_be_bytes());
    sector[fde_field + 8..fde_field + 16].copy_from_slice(&fde.1.to_be_bytes());
    file.write_at(&sector, 0)
        .ctx("switching the header to the new key and tables")?;
    file.flush()
}

/// Zero the old clusters (nothing points to them any more), then free them. Returns
/// how many were freed.
fn release(file: &dyn BlockDriver, refs: &mut Refcounts, runs: &[Run], cs: u64) -> Result<u64> {
    for r in runs {
        file.write_zeroes(r.off, r.len)
            .with_ctx(|| format!("wiping the old clusters at {:#x}", r.off))?;
    }
    file.flush()?;
    let mut n = 0;
    for r in runs {
        for c in 0..r.len / cs {
            refs.queue_free(r.off + c * cs);
            n += 1;
        }
    }
    refs.apply_frees(file)?;
    refs.write_dirty(file)?;
    file.flush()?;
    Ok(n)
}
