//! Test support shipped with the library: a fault-injecting node that "crashes" after a
//! given number of writes, so tests can prove every metadata update is crash-safe.
use crate::driver::{BlockDriver, Child};
use crate::drivers::mem::MemDriver;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use vmcrypt_error::{Result, bail};

/// Which part of the failing write a torn [`FaultyDriver`] lands.
#[derive(Clone, Copy)]
enum Tear {
    FirstSector,
    Half,
}

/// Wraps a [`MemDriver`]; after `budget` successful writes every further write (and
/// zeroing, resize) fails without touching the data, as if the machine had stopped.
/// A torn one ([`FaultyDriver::torn`]) first lands the first 512-byte sector of the
/// write that fails, as a power cut in the middle of a multi-sector write can; a
/// half-torn one ([`FaultyDriver::torn_half`]) lands its first half (in 512-byte units).
pub struct FaultyDriver {
    inner: Arc<MemDriver>,
    budget: usize,
    writes: AtomicUsize,
    torn: Option<Tear>,
}

impl FaultyDriver {
    pub fn new(inner: Arc<MemDriver>, budget: usize) -> Self {
        FaultyDriver {
            inner,
            budget,
            writes: AtomicUsize::new(0),
            torn: None,
        }
    }

    /// Like [`FaultyDriver::new`], but the failing write lands its first sector.
    pub fn torn(inner: Arc<MemDriver>, budget: usize) -> Self {
        FaultyDriver {
            torn: Some(Tear::FirstSector),
            ..FaultyDriver::new(inner, budget)
        }
    }

    /// Like [`FaultyDriver::new`], but the failing write lands its first half.
    pub fn torn_half(inner: Arc<MemDriver>, budget: usize) -> Self {
        FaultyDriver {
            torn: Some(Tear::Half),
            ..FaultyDriver::new(inner, budget)
        }
    }

    /// Writes that reached the disk.
    pub fn writes_done(&self) -> usize {
        self.writes.load(Ordering::SeqCst).min(self.budget)
    }

    fn take(&self) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.budget {
            bail!(Io, "injected fault: stopped before write #{}", n + 1);
        }
        Ok(())
    }
}

impl BlockDriver for FaultyDriver {
    fn driver_name(&self) -> &'static str {
        "faulty"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if let Err(e) = self.take() {
            let landed = match self.torn {
                Some(Tear::FirstSector) => buf.len().min(512),
                Some(Tear::Half) => buf.len() / 2 / 512 * 512,
                None => 0,
            };
            if landed > 0 && self.writes.load(Ordering::SeqCst) == self.budget + 1 {
                self.inner.write_at(&buf[..landed], offset)?;
            }
            return Err(e);
        }
        self.inner.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if let Err(e) = self.take() {
            let landed = match self.torn {
                Some(Tear::FirstSector) => len.min(512),
                Some(Tear::Half) => len / 2 / 512 * 512,
                None => 0,
            };
            if landed > 0 && self.writes.load(Ordering::SeqCst) == self.budget + 1 {
                self.inner.write_zeroes(offset, landed)?;
            }
            return Err(e);
        }
        self.inner.write_zeroes(offset, len)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.take()?;
        self.inner.resize(new_size)
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.inner.clone(),
        }]
    }
}
