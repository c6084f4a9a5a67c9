//! The `rbd` protocol node: a Ceph RBD image through librbd (loaded at run time by
//! `vmcrypt-rbd`, which holds every foreign call), and [`crypt`], librbd's own image
//! encryption (`encrypt.format=luks|luks2|luks-any`) done by vmcrypt in the same layout.
//!
//! Reads and writes become librbd asynchronous requests, many in flight at once (big
//! requests are split; concurrent callers each submit their own). Through [`AsyncIo`]
//! a caller (the NBD server) submits a request and is called back when librbd
//! completes it, with no thread waiting. The image never grows
//! on write: `resize` changes its size. `block_status` asks librbd which objects exist
//! (`rbd_diff_iterate2`, whole objects, including a clone's parent).
pub mod crypt;
pub mod format;
pub mod magic;

use crate::driver::{Allocation, AsyncIo, BlockDriver, Declined, Extent, IoDone, check_range};
use crate::spec::RbdSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vmcrypt_error::{Result, ResultExt, bail};
use vmcrypt_rbd::{ConnectOptions, HeaderLock, Image, Pool};

/// Longest range one `block_status` call asks librbd about.
const STATUS_WINDOW: u64 = 1 << 30;

/// An open rbd image, unencrypted (the bytes librbd stores).
pub struct RbdDriver {
    image: Image,
    read_only: bool,
    size: AtomicU64,
    object_size: u64,
    /// The LUKS header lock, held while a key-management job has the image open.
    header_lock: Option<HeaderLock>,
}

/// Connect to the pool `spec` names (with the cephx key `key`, if given).
pub fn connect(spec: &RbdSpec, key: Option<&[u8]>) -> Result<Arc<Pool>> {
    Pool::connect(&ConnectOptions {
        conf: spec.conf.as_deref(),
        user: spec.user.as_deref(),
        key,
        pool: &spec.pool,
        namespace: spec.namespace.as_deref(),
    })
}

impl RbdDriver {
    /// Open the image `spec` names.
    pub fn open(spec: &RbdSpec, key: Option<&[u8]>, read_only: bool) -> Result<RbdDriver> {
        let pool = connect(spec, key)?;
        let image = pool.open(&spec.image, spec.snapshot.as_deref(), read_only)?;
        RbdDriver::new(image, read_only || spec.snapshot.is_some())
    }

    /// Serve an image opened by the caller.
    pub fn new(image: Image, read_only: bool) -> Result<RbdDriver> {
        let info = image.info()?;
        Ok(RbdDriver {
            image,
            read_only,
            size: AtomicU64::new(info.size),
            object_size: info.object_size,
            header_lock: None,
        })
    }

    /// Hold the image's LUKS header lock (see `vmcrypt_rbd::HeaderLock`) for `purpose`
    /// until the node is dropped: another process changing the header meanwhile is
    /// refused with an error naming this one, and a lock held elsewhere refuses this.
    pub fn lock_header(mut self, purpose: &str) -> Result<RbdDriver> {
        self.header_lock = Some(self.image.lock_header(purpose)?);
        Ok(self)
    }

    /// Whether this node holds the image's LUKS header lock (its writes then take the
    /// blocking path, which checks that the lock is still held).
    pub fn holds_header_lock(&self) -> bool {
        self.header_lock.is_some()
    }

    /// The image's object size in bytes.
    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    /// The librbd image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The byte ranges of `[offset, offset+len)` librbd has data for, objects' written
    /// extents (not whole objects), without a clone's parent unless `include_parent`.
    pub fn written_extents(
        &self,
        offset: u64,
        len: u64,
        include_parent: bool,
    ) -> Result<Vec<(u64, u64)>> {
        self.image.extents(offset, len, include_parent, false)
    }

    /// Refuse writes to a read-only image, and, while the header lock is held, any write
    /// once the lock is lost (see `HeaderLock::ensure_held`).
    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            bail!(
                ReadOnly,
                "rbd image {} is open read-only",
                self.image.name()
            );
        }
        if let Some(lock) = &self.header_lock {
            lock.ensure_held()?;
        }
        Ok(())
    }
}

impl BlockDriver for RbdDriver {
    fn driver_name(&self) -> &'static str {
        "rbd"
    }
    fn filename(&self) -> String {
        format!("rbd:{}", self.image.name())
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("rbd read", offset, buf.len(), self.size())?;
        self.image.read(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range("rbd write", offset, buf.len(), self.size())?;
        self.image.write(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.image.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range("rbd write zeroes", offset, len as usize, self.size())?;
        self.image.write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range("rbd discard", offset, len as usize, self.size())?;
        self.image.discard(offset, len)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        let len = len
            .min(STATUS_WINDOW)
            .min(self.size().saturating_sub(offset));
        let extents = self.image.extents(offset, len, true, true)?;
        Ok(first_extent(&extents, offset, len))
    }
    fn has_zero_init(&self) -> bool {
        true
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        self.image.resize(new_size).ctx("resizing an rbd image")?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }
    fn as_async(&self) -> Option<&dyn AsyncIo> {
        Some(self)
    }
}

/// Requests outside the image or writes to a read-only one are declined: the blocking
/// path reports them with their usual errors.
impl AsyncIo for RbdDriver {
    fn submit_read(
        &self,
        buf: Vec<u8>,
        start: usize,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined> {
        let len = buf.len().saturating_sub(start);
        if check_range("rbd read", offset, len, self.size()).is_err() {
            return Err(Declined { buf, done });
        }
        self.image.submit_read(buf, start, offset, done);
        Ok(())
    }
    fn submit_write(
        &self,
        buf: Vec<u8>,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined> {
        // Under the header lock, writes take the blocking path, which checks the lock.
        if self.read_only
            || self.holds_header_lock()
            || check_range("rbd write", offset, buf.len(), self.size()).is_err()
        {
            return Err(Declined { buf, done });
        }
        self.image.submit_write(buf, 0, offset, done);
        Ok(())
    }
    fn submit_flush(&self, done: IoDone) -> std::result::Result<(), Declined> {
        if self.read_only {
            done(Ok(()), Vec::new());
        } else {
            self.image.submit_flush(done);
        }
        Ok(())
    }
}

/// The extent at `offset` of `[offset, offset+len)` given the sorted allocated
/// `extents`: data up to the end of a run of touching extents, else zeros up to the next.
pub(crate) fn first_extent(extents: &[(u64, u64)], offset: u64, len: u64) -> Extent {
    let end = offset + len;
    let mut data_end = offset;
    for &(o, l) in extents {
        if o > data_end {
            break;
        }
        data_end = data_end.max(o + l);
    }
    if data_end > offset {
        return Extent {
            offset,
            length: data_end.min(end) - offset,
            allocation: Allocation::Data,
        };
    }
    let next = extents
        .iter()
        .map(|&(o, _)| o)
        .find(|&o| o > offset)
        .unwrap_or(end)
        .min(end);
    Extent {
        offset,
        length: (next - offset).max(1).min(len.max(1)),
        allocation: Allocation::Zero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_become_block_status() {
        let e = [(0, 10), (10, 5), (40, 10)];
        assert_eq!(first_extent(&e, 0, 100).length, 15);
        assert_eq!(first_extent(&e, 0, 100).allocation, Allocation::Data);
        let z = first_extent(&e, 15, 85);
        assert_eq!((z.length, z.allocation), (25, Allocation::Zero));
        let z = first_extent(&e, 50, 50);
        assert_eq!((z.length, z.allocation), (50, Allocation::Zero));
        assert_eq!(first_extent(&e, 5, 3).length, 3);
    }
}
