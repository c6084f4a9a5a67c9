//! The `raw` format driver: its `file` child as is, optionally a window of it
//! (QEMU's `offset=` and `size=` options). A copy into the window is the child's copy
//! at the translated offsets, so a window over a file keeps the kernel copy.
use crate::driver::{BlockDriver, Child, Extent, HostMap, MapExtent, check_range, map_extent};
use std::sync::Arc;
use vmcrypt_error::{Result, bail, ensure};

pub struct RawDriver {
    file: Arc<dyn BlockDriver>,
    offset: u64,
    size: Option<u64>,
}

impl RawDriver {
    pub fn new(file: Arc<dyn BlockDriver>, offset: u64, size: Option<u64>) -> Result<Self> {
        let avail = file.size().saturating_sub(offset);
        if let Some(s) = size
            && s > avail
        {
            bail!(
                OutOfRange,
                "raw: offset {offset} + size {s} is beyond the end of the file ({} bytes)",
                file.size()
            );
        }
        Ok(RawDriver { file, offset, size })
    }
}

/// Refuse a copy of the `len` bytes at `at` of `what` (the window or the source)
/// unless they lie inside its `size` bytes, naming the range.
fn check_copy(what: impl FnOnce() -> String, at: u64, len: u64, size: u64) -> Result<()> {
    ensure!(
        at.checked_add(len).is_some_and(|end| end <= size),
        OutOfRange,
        "raw copy: bytes {at}..{} are beyond the end of {} ({size} bytes)",
        at.saturating_add(len),
        what()
    );
    Ok(())
}

impl BlockDriver for RawDriver {
    fn driver_name(&self) -> &'static str {
        "raw"
    }
    fn size(&self) -> u64 {
        self.size
            .unwrap_or_else(|| self.file.size().saturating_sub(self.offset))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("raw read", offset, buf.len(), self.size())?;
        self.file.read_at(buf, self.offset + offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.size.is_some() {
            check_range("raw write", offset, buf.len(), self.size())?;
        }
        self.file.write_at(buf, self.offset + offset)
    }
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.size.is_some() {
            check_range("raw write", offset, buf.len(), self.size())?;
        }
        self.file.write_at_mut(buf, self.offset + offset)
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    /// Checked whole before anything is written: the source range against its node,
    /// the target range against the window (when it has a fixed size, as a write is).
    /// A copy within this window is the child's copy within itself, so overlapping
    /// ranges compare in one address space.
    fn copy_from(
        &self,
        src: &dyn BlockDriver,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let source = || format!("the source '{}'", src.filename());
        check_copy(source, src_offset, len, src.size())?;
        if self.size.is_some() {
            let window = || format!("the window at {} of '{}'", self.offset, self.filename());
            check_copy(window, offset, len, self.size())?;
        }
        let to = self.offset + offset;
        if std::ptr::addr_eq(src, self) {
            let file = self.file.as_ref();
            return file.copy_from(file, self.offset + src_offset, to, len);
        }
        self.file.copy_from(src, src_offset, to, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.file.write_zeroes(self.offset + offset, len)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        let e = self.file.block_status(self.offset + offset, len)?;
        Ok(Extent { offset, ..e })
    }
    fn has_zero_init(&self) -> bool {
        self.file.has_zero_init()
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        if self.size.is_some() {
            bail!(
                Unsupported,
                "raw: cannot resize a node opened with a fixed size="
            );
        }
        self.file.resize(self.offset + new_size)
    }
    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }
    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.file.clone(),
        }]
    }
    fn as_host_map(&self) -> Option<&dyn HostMap> {
        Some(self)
    }
}

impl HostMap for RawDriver {
    /// The `file` child's mapping of the same bytes (shifted by the window offset).
    fn map_extent(&self, offset: u64, len: u64) -> Result<MapExtent> {
        let e = map_extent(self.file.as_ref(), self.offset + offset, len)?;
        Ok(MapExtent { offset, ..e })
    }
}
