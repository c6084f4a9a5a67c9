//! Streaming a hotzone through the cores: [`Chunks`] reads `CHUNK`-sized pieces of
//! it, each into a buffer owned by the thread that handles it (reused for the next
//! piece, so it stays in the CPU cache), and hands each to a closure that hashes or
//! transforms and writes it; or copies it as it is, piece by piece, without reading it
//! here. Pieces are handled in any order and at the same time; the caller flushes
//! after the whole pass.
use super::CHUNK;
use crate::driver::BlockDriver;
use rayon::prelude::*;
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt};

/// Pieces a rayon job takes at least: each job allocates (and zeroes) its buffer.
const MIN_PER_JOB: usize = 4;

/// Piece of a hotzone one thread copies as it is (no buffer of ours: the kernel copies
/// between files, so the pieces can be larger).
const COPY_PIECE: u64 = 4 * CHUNK as u64;

/// The `len` bytes at `at` of `data`, in `CHUNK` pieces.
pub(super) struct Chunks<'a> {
    data: &'a dyn BlockDriver,
    at: u64,
    len: u64,
}

impl<'a> Chunks<'a> {
    pub fn new(data: &'a dyn BlockDriver, at: u64, len: u64) -> Self {
        Chunks { data, at, len }
    }

    fn count(&self) -> usize {
        self.len.div_ceil(CHUNK as u64) as usize
    }

    /// Read piece `i` into `buf` (resized to it); returns its offset in the hotzone.
    fn read(&self, i: usize, buf: &mut Vec<u8>) -> Result<u64> {
        let rel = (i * CHUNK) as u64;
        buf.resize((CHUNK as u64).min(self.len - rel) as usize, 0);
        let off = self.at + rel;
        self.data
            .read_at(buf, off)
            .with_ctx(|| format!("reading the hotzone at {off}"))?;
        Ok(rel)
    }

    /// Read every piece and call `f(offset in the hotzone, bytes)` on it.
    pub fn try_for_each<F>(&self, f: F) -> Result<()>
    where
        F: Fn(u64, &mut [u8]) -> Result<()> + Sync,
    {
        (0..self.count())
            .into_par_iter()
            .with_min_len(MIN_PER_JOB)
            .try_for_each_init(Vec::new, |buf, i| {
                let rel = self.read(i, buf)?;
                f(rel, buf)
            })
    }

    /// Copy the hotzone as it is to `to` of `dst` ([`BlockDriver::copy_from`]: in the
    /// kernel between files) in `COPY_PIECE` pieces over the cores.
    pub fn copy_to(&self, dst: &dyn BlockDriver, to: u64) -> Result<()> {
        let pieces = self.len.div_ceil(COPY_PIECE);
        (0..pieces).into_par_iter().try_for_each(|i| {
            let rel = i * COPY_PIECE;
            let n = COPY_PIECE.min(self.len - rel);
            dst.copy_from(self.data, self.at + rel, to + rel, n)
        })
    }

    /// Hash each `bs`-byte block (`bs` divides `CHUNK`) into consecutive slots of `out`.
    pub fn hash_blocks(&self, h: HashAlg, bs: usize, out: &mut [u8]) -> Result<()> {
        let per_chunk = CHUNK / bs * h.output_len();
        out.par_chunks_mut(per_chunk)
            .enumerate()
            .with_min_len(MIN_PER_JOB)
            .try_for_each_init(Vec::new, |buf, (i, sums)| {
                self.read(i, buf)?;
                h.digest_each(bs, buf, sums);
                Ok(())
            })
    }
}
