//! Checksum and journal hotzones of a new-volume-key reencryption, held in memory
//! between their protection and their write, so that each is read only once.
//!
//! [`Reencryption::load_held`] reads a hotzone over the cores, a chunk at a time: with checksums
//! each chunk is hashed and transformed while it is in cache; a journal keeps the old
//! ciphertext until [`Reencryption::protect_held`] has written each chunk to the
//! journal (then transforms it). Neither writes to the data, so an offline run loads
//! the next hotzone while the current one is written back ([`Reencryption::step_held`]):
//! writes to one file are serialized by the kernel, and the reads, hashes and
//! ciphers of the next hotzone keep the other core busy meanwhile. The crash-safety
//! order is unchanged: a hotzone's protection is written only once the previous
//! hotzone is marked done, and its data only once its protection is flushed and the
//! header marks it hot. A run served online (gated) never reads ahead: a request may
//! still write to the next hotzone until the gate holds it.
use super::{CHUNK, Reencryption, Step};
use rayon::prelude::*;
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::Resilience;

/// A hotzone read into memory.
#[derive(Default)]
pub(super) struct Held {
    /// Offset from the data start; the length is `buf.len()`.
    offset: u64,
    buf: Vec<u8>,
    /// Checksum runs: the hash of each block of the old ciphertext (`buf` is then
    /// already transformed).
    sums: Vec<u8>,
    /// Whether `buf` holds the hotzone at `offset` (a failed or missing read-ahead
    /// leaves it false, and the hotzone is read again).
    ready: bool,
}

impl Held {
    fn holds(&self, offset: u64, len: u64) -> bool {
        self.ready && self.offset == offset && self.buf.len() as u64 == len
    }
}

impl Reencryption<'_> {
    /// One checksum or journal hotzone at `offset` (`len` bytes), held in `cur`
    /// (read now unless read ahead): protect it and mark it hot, write it back while
    /// `next` (when `ahead`) reads the following hotzone, flush, mark it done. On
    /// return `next` holds what it read; the caller swaps the two.
    pub(super) fn step_held(
        &mut self,
        (offset, len): (u64, u64),
        cur: &mut Held,
        next: &mut Held,
        ahead: bool,
    ) -> Result<()> {
        if !cur.holds(offset, len) {
            self.load_held(offset, len, cur)?;
        }
        cur.ready = false;
        self.protect_held(cur)?;
        let end = offset + len;
        let next_len = self.hotzone.min(self.layout.data_size - end);
        let this = &*self;
        let written = if ahead && next_len > 0 {
            let (w, r) = rayon::join(
                || this.write_held(cur),
                || this.load_held(end, next_len, next),
            );
            next.ready = r.is_ok();
            w
        } else {
            this.write_held(cur)
        };
        written?;
        self.data.flush()?;
        self.complete(end)
    }

    /// Read the hotzone at `offset` (`len` bytes) into `z` over the cores; with
    /// checksums, hash each block and transform each chunk while it is in cache.
    fn load_held(&self, offset: u64, len: u64, z: &mut Held) -> Result<()> {
        z.ready = false;
        z.offset = offset;
        z.buf.resize(len as usize, 0);
        let at = self.layout.data_offset + offset;
        let data = self.data.as_ref();
        let read = |i: usize, c: &mut [u8]| -> Result<u64> {
            let rel = (i * CHUNK) as u64;
            data.read_at(c, at + rel)
                .with_ctx(|| format!("reading the hotzone at {}", at + rel))?;
            Ok(rel)
        };
        match &self.st.keyslot.resilience {
            Resilience::Checksum { hash, sector_size } => {
                let (h, bs) = (HashAlg::from_name(hash)?, *sector_size as usize);
                z.sums.resize(z.buf.len() / bs * h.output_len(), 0);
                z.buf
                    .par_chunks_mut(CHUNK)
                    .zip(z.sums.par_chunks_mut(CHUNK / bs * h.output_len()))
                    .enumerate()
                    .try_for_each(|(i, (c, s))| {
                        let rel = read(i, c)?;
                        h.digest_each(bs, c, s);
                        self.transform(offset + rel, c)
                    })?;
            }
            Resilience::Journal => {
                z.buf
                    .par_chunks_mut(CHUNK)
                    .enumerate()
                    .try_for_each(|(i, c)| read(i, c).map(drop))?;
            }
            other => bail!(
                Internal,
                "resilience \"{}\" keeps no hotzone in memory",
                other.name()
            ),
        }
        z.ready = true;
        Ok(())
    }

    /// Store the protection of the loaded hotzone `z` in the reencrypt area (its
    /// checksums; or, chunk by chunk over the cores, the old ciphertext as a journal,
    /// each chunk then transformed), flush it and mark the hotzone hot.
    fn protect_held(&mut self, z: &mut Held) -> Result<()> {
        let k = &self.st.keyslot;
        let dev = self.vol.dev.as_ref();
        let fits = |n: usize| {
            ensure!(
                n as u64 <= k.area_size,
                Internal,
                "the hotzone protection does not fit the reencryption area"
            );
            Ok(())
        };
        if let Resilience::Journal = k.resilience {
            fits(z.buf.len())?;
            z.buf
                .par_chunks_mut(CHUNK)
                .enumerate()
                .try_for_each(|(i, c)| {
                    let rel = (i * CHUNK) as u64;
                    dev.write_at(c, k.area_offset + rel)
                        .ctx("writing the reencryption journal")?;
                    self.transform(z.offset + rel, c)
                })?;
        } else {
            fits(z.sums.len())?;
            dev.write_at(&z.sums, k.area_offset)
                .ctx("writing the reencryption checksums")?;
        }
        dev.flush()?;
        let len = z.buf.len() as u64;
        self.commit(Step::Hot {
            offset: z.offset,
            len,
        })
    }

    /// Write the transformed hotzone `z` back, a chunk at a time on one thread (writes
    /// to one file do not run in parallel; the other core reads ahead meanwhile).
    fn write_held(&self, z: &Held) -> Result<()> {
        let at = self.layout.data_offset + z.offset;
        for (i, c) in z.buf.chunks(CHUNK).enumerate() {
            let off = at + (i * CHUNK) as u64;
            self.data
                .write_at(c, off)
                .with_ctx(|| format!("writing the hotzone at {off}"))?;
        }
        Ok(())
    }
}
