//! Reading hotzones: a [`ZoneReader`] fills a [`Zone`] with a hotzone's old ciphertext
//! (and, with checksum resilience, the hash of each block), over the cores. It needs
//! nothing but the data device, so an offline run reads the next hotzone on another
//! thread while the current one is protected, transformed, written and committed:
//! reading never changes the image, and the two hotzones do not overlap.
use super::{CHUNK, hash_blocks};
use crate::driver::BlockDriver;
use rayon::prelude::*;
use std::sync::Arc;
use vmcrypt_crypto::HashAlg;
use vmcrypt_error::{Result, ResultExt};
use vmcrypt_format::luks2::reencrypt::Resilience;

/// One hotzone in memory: its bytes and, with checksum resilience, its block hashes.
#[derive(Default)]
pub(super) struct Zone {
    pub buf: Vec<u8>,
    pub sums: Option<Vec<u8>>,
}

impl Zone {
    /// Make `buf` exactly `len` bytes, reusing the allocation; a fresh one comes from
    /// `vec![0; n]` (pages the kernel zeroes when first touched, no memset pass).
    fn size_to(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf = Vec::new();
            self.buf = vec![0u8; len];
        } else {
            self.buf.truncate(len);
        }
    }
}

/// Reads hotzones from the data device.
pub(super) struct ZoneReader {
    data: Arc<dyn BlockDriver>,
    data_offset: u64,
    checksum: Option<(HashAlg, usize)>,
}

impl ZoneReader {
    pub fn new(
        data: Arc<dyn BlockDriver>,
        data_offset: u64,
        resilience: &Resilience,
    ) -> Result<Self> {
        let checksum = match resilience {
            Resilience::Checksum { hash, sector_size } => Some((
                HashAlg::from_name(hash).ctx("reencryption checksum")?,
                *sector_size as usize,
            )),
            _ => None,
        };
        Ok(ZoneReader {
            data,
            data_offset,
            checksum,
        })
    }

    /// Read the `len` bytes at `offset` (from the data start) into `zone`, hashing each
    /// checksum block as its chunk arrives.
    pub fn read(&self, offset: u64, len: u64, zone: &mut Zone) -> Result<()> {
        zone.size_to(len as usize);
        let at = self.data_offset + offset;
        let data = &self.data;
        let read = |i: usize, c: &mut [u8]| {
            let off = at + (i * CHUNK) as u64;
            data.read_at(c, off)
                .with_ctx(|| format!("reading the hotzone at {off}"))
        };
        let Some((h, bs)) = self.checksum else {
            zone.sums = None;
            return zone
                .buf
                .par_chunks_mut(CHUNK)
                .enumerate()
                .try_for_each(|(i, c)| read(i, c));
        };
        let per_chunk = CHUNK / bs * h.output_len();
        let mut sums = zone.sums.take().unwrap_or_default();
        sums.resize(zone.buf.len() / bs * h.output_len(), 0);
        zone.buf
            .par_chunks_mut(CHUNK)
            .zip(sums.par_chunks_mut(per_chunk))
            .enumerate()
            .try_for_each(|(i, (c, s))| {
                read(i, c)?;
                hash_blocks(h, bs, c, s);
                Ok(())
            })?;
        zone.sums = Some(sums);
        Ok(())
    }
}
