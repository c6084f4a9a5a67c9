//! The read path shared by the qcow2 and qcow v1 drivers.
//!
//! A [`ClusterMap`] says how each guest unit (cluster, or subcluster with extended L2)
//! reads; [`Engine`] turns that into bytes: runs of units with the same mapping (and, for
//! data, contiguous host offsets) are served with one read from the `file` child,
//! decrypted when the image is encrypted; unallocated units come from the backing node
//! (zeros past its end, or without one); zero units are zeros; compressed clusters are
//! inflated (raw deflate or zstd) and the last one is cached.
use super::crypt::Crypto;
use crate::driver::{Allocation, BlockDriver, Extent, read_padded};
use std::sync::{Arc, Mutex};
use vmcrypt_error::{Result, ResultExt, ensure};
use vmcrypt_format::qcow2::{CompressedDescriptor, CompressionType, Mapping};

/// How guest units map to the image file.
pub trait ClusterMap: Send + Sync {
    /// log2 of the cluster size.
    fn cluster_bits(&self) -> u32;
    /// log2 of the mapping unit (the cluster, or the subcluster).
    fn unit_bits(&self) -> u32;
    /// How the unit holding guest offset `g` reads. `Data` carries the host offset of
    /// the cluster's start.
    fn map_unit(&self, g: u64) -> Result<Mapping>;
    /// If guest offset `g` lies in a span that has no L2 table at all (every unit
    /// unallocated, no host cluster), the guest offset where that span ends. Lets runs
    /// of holes grow one table at a time instead of one unit at a time, so the cost of
    /// a walk grows with the data, not with the virtual size.
    fn table_hole_end(&self, _g: u64) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// Grow a run of unallocated units that ends at `g + len` (at most `max` bytes from
/// `g`) over the table-less spans that follow it; the new length.
pub fn skip_table_holes(map: &dyn ClusterMap, g: u64, mut len: u64, max: u64) -> Result<u64> {
    while len < max {
        match map.table_hole_end(g + len)? {
            Some(end) if end > g + len => len = (end - g).min(max),
            _ => break,
        }
    }
    Ok(len)
}

/// One run of guest bytes with a single way to read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Backing,
    Zero,
    /// Host offset of the run's first byte.
    Data(u64),
    /// A compressed cluster and the offset of the run inside it.
    Compressed(CompressedDescriptor, u64),
}

/// File, backing, encryption and decompression state of an open image.
pub struct Engine {
    pub file: Arc<dyn BlockDriver>,
    pub backing: Option<Arc<dyn BlockDriver>>,
    pub crypto: Crypto,
    pub compression: CompressionType,
    /// The last inflated cluster: (descriptor offset, bytes).
    last_inflated: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl Engine {
    pub fn new(file: Arc<dyn BlockDriver>, crypto: Crypto, compression: CompressionType) -> Engine {
        Engine {
            file,
            backing: None,
            crypto,
            compression,
            last_inflated: Mutex::new(None),
        }
    }

    fn name(&self) -> String {
        self.file.filename()
    }

    /// The piece at `g` and how many bytes (at most `max`) it covers. With `for_status`,
    /// data runs need not be contiguous on the host.
    fn piece(
        &self,
        map: &dyn ClusterMap,
        g: u64,
        max: u64,
        for_status: bool,
    ) -> Result<(Piece, u64)> {
        let unit = 1u64 << map.unit_bits();
        let cmask = (1u64 << map.cluster_bits()) - 1;
        let first = map.map_unit(g)?;
        let piece = match first {
            Mapping::Backing => Piece::Backing,
            Mapping::Zero => Piece::Zero,
            Mapping::Data(h) => Piece::Data(h + (g & cmask)),
            Mapping::Compressed(d) => Piece::Compressed(d, g & cmask),
        };
        let mut len = (unit - (g & (unit - 1))).min(max);
        if let Piece::Compressed(..) = piece {
            return Ok((piece, len));
        }
        while len < max {
            if piece == Piece::Backing {
                len = skip_table_holes(map, g, len, max)?;
                if len >= max {
                    break;
                }
            }
            let next = map.map_unit(g + len)?;
            let same = match (piece, next) {
                (Piece::Backing, Mapping::Backing) | (Piece::Zero, Mapping::Zero) => true,
                (Piece::Data(_), Mapping::Data(_)) if for_status => true,
                (Piece::Data(h), Mapping::Data(h2)) => h2 + ((g + len) & cmask) == h + len,
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + unit).min(max);
        }
        Ok((piece, len))
    }

    /// Fill `buf` with guest bytes from `offset` (range already checked).
    pub fn read(&self, map: &dyn ClusterMap, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let g = offset + done as u64;
            let (piece, len) = self.piece(map, g, (buf.len() - done) as u64, false)?;
            let out = &mut buf[done..done + len as usize];
            match piece {
                Piece::Zero => out.fill(0),
                Piece::Backing => self.read_backing(out, g)?,
                Piece::Data(h) => self.read_data(out, h, g)?,
                Piece::Compressed(d, at) => {
                    let c = self.inflate(d, 1usize << map.cluster_bits())?;
                    out.copy_from_slice(&c[at as usize..at as usize + out.len()]);
                }
            }
            done += len as usize;
        }
        Ok(())
    }

    fn read_backing(&self, out: &mut [u8], g: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            out.fill(0);
            return Ok(());
        };
        read_padded(b.as_ref(), out, g)
            .with_ctx(|| format!("reading the backing file of '{}'", self.name()))
    }

    /// Read host bytes, zero-filling what lies past the end of the file (as QEMU does).
    pub(crate) fn read_host(&self, out: &mut [u8], host: u64) -> Result<()> {
        read_padded(self.file.as_ref(), out, host)
    }

    fn read_data(&self, out: &mut [u8], host: u64, g: u64) -> Result<()> {
        if !self.crypto.is_encrypted() {
            return self.read_host(out, host);
        }
        let name = self.name();
        if host.is_multiple_of(512) && out.len().is_multiple_of(512) {
            self.read_host(out, host)?;
            return self.crypto.decrypt(out, host, g, &name);
        }
        let start = host / 512 * 512;
        let end = (host + out.len() as u64).div_ceil(512) * 512;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_host(&mut tmp, start)?;
        let skip = host - start;
        self.crypto.decrypt(&mut tmp, start, g - skip, &name)?;
        out.copy_from_slice(&tmp[skip as usize..skip as usize + out.len()]);
        Ok(())
    }

    fn inflate(&self, d: CompressedDescriptor, cluster: usize) -> Result<Arc<Vec<u8>>> {
        let mut last = self.last_inflated.lock().expect("inflate cache");
        if let Some((off, c)) = last.as_ref()
            && *off == d.offset
        {
            return Ok(c.clone());
        }
        let avail = self.file.size().saturating_sub(d.offset).min(d.size);
        ensure!(
            avail > 0,
            Corrupt,
            "'{}': compressed cluster at {:#x} is beyond the end of the file",
            self.name(),
            d.offset
        );
        let mut src = vec![0u8; avail as usize];
        self.file.read_at(&mut src, d.offset)?;
        let data = match self.compression {
            CompressionType::Zlib => inflate_raw(&src, cluster),
            CompressionType::Zstd => unzstd(&src, cluster),
        };
        let c =
            Arc::new(data.with_ctx(|| {
                format!("'{}': compressed cluster at {:#x}", self.name(), d.offset)
            })?);
        *last = Some((d.offset, c.clone()));
        Ok(c)
    }

    /// Allocation of the range at `offset` (already checked to lie in the image).
    pub fn block_status(&self, map: &dyn ClusterMap, offset: u64, len: u64) -> Result<Extent> {
        let (piece, run) = self.piece(map, offset, len, true)?;
        let allocation = match piece {
            Piece::Zero => Allocation::Zero,
            Piece::Data(_) | Piece::Compressed(..) => Allocation::Data,
            Piece::Backing => match &self.backing {
                None => Allocation::Zero,
                Some(b) if offset >= b.size() => Allocation::Zero,
                Some(b) => {
                    let n = run.min(b.size() - offset);
                    let e = b.block_status(offset, n)?;
                    return Ok(Extent { offset, ..e });
                }
            },
        };
        Ok(Extent {
            offset,
            length: run,
            allocation,
        })
    }
}

/// Decode one zstd frame into exactly `cluster` bytes (the stored bytes run to the end
/// of a 512-byte sector, so anything after the frame is ignored).
pub fn unzstd(src: &[u8], cluster: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad =
        |e: &dyn std::fmt::Display| vmcrypt_error::Error::corrupt(format!("bad zstd data: {e}"));
    let mut dec = ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| bad(&e))?;
    let mut out = vec![0u8; cluster];
    dec.read_exact(&mut out).map_err(|e| bad(&e))?;
    Ok(out)
}

/// Inflate raw deflate data into exactly `cluster` bytes.
pub fn inflate_raw(src: &[u8], cluster: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; cluster];
    let mut z = flate2::Decompress::new(false);
    let status = z
        .decompress(src, &mut out, flate2::FlushDecompress::Finish)
        .map_err(|e| vmcrypt_error::Error::corrupt(format!("bad deflate data: {e}")))?;
    let produced = z.total_out() as usize;
    ensure!(
        produced == cluster,
        Corrupt,
        "deflate data gives {produced} bytes, a cluster is {cluster} ({status:?})"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mem::MemDriver;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// 64 KiB clusters, 8192 entries per table (512 MiB spans); only the span starting
    /// at `table_at` has a table, holding one data cluster at `data_at`.
    struct Sparse {
        table_at: u64,
        data_at: u64,
        lookups: AtomicU64,
    }

    const SPAN: u64 = 512 << 20;

    impl ClusterMap for Sparse {
        fn cluster_bits(&self) -> u32 {
            16
        }
        fn unit_bits(&self) -> u32 {
            16
        }
        fn map_unit(&self, g: u64) -> Result<Mapping> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            Ok(if g >> 16 == self.data_at >> 16 {
                Mapping::Data(1 << 20)
            } else {
                Mapping::Backing
            })
        }
        fn table_hole_end(&self, g: u64) -> Result<Option<u64>> {
            let span = g / SPAN;
            Ok((span != self.table_at / SPAN).then_some((span + 1) * SPAN))
        }
    }

    #[test]
    fn holes_without_tables_are_skipped_a_table_at_a_time() {
        let tib = 1u64 << 40;
        let map = Sparse {
            table_at: tib - SPAN,
            data_at: tib - SPAN + (3 << 16),
            lookups: AtomicU64::new(0),
        };
        let engine = Engine::new(
            Arc::new(MemDriver::new(vec![0u8; 4 << 20])),
            Crypto::None,
            CompressionType::Zlib,
        );
        let e = engine.block_status(&map, 0, tib).unwrap();
        assert_eq!(
            (e.length, e.allocation),
            (tib - SPAN + (3 << 16), Allocation::Zero)
        );
        // One lookup per unit inside the one table, a handful for the 2047 empty spans.
        let n = map.lookups.load(Ordering::Relaxed);
        assert!(n < 16, "{n} cluster lookups for a 1 TiB hole");
        let e = engine
            .block_status(&map, map.data_at, tib - map.data_at)
            .unwrap();
        assert_eq!((e.length, e.allocation), (1 << 16, Allocation::Data));
        assert_eq!(skip_table_holes(&map, 0, 1 << 16, tib).unwrap(), tib - SPAN);
    }
}
