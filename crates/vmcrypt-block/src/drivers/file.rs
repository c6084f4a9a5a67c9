//! The `file` protocol driver: a regular host file, positioned I/O, holes via
//! SEEK_DATA/SEEK_HOLE and fallocate, copies between files by the kernel
//! (`copy_file_range`).
use crate::driver::copy::copy_buffered;
use crate::driver::{
    Allocation, BlockDriver, Extent, HostMap, HostRange, Introspect, MapExtent, check_range_with,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vmcrypt_error::{Error, Result, bail};

impl Drop for FileDriver {
    fn drop(&mut self) {
        crate::lock::unlock_all(&self.file);
    }
}

/// A host file opened read-only or read-write.
pub struct FileDriver {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: AtomicU64,
}

impl FileDriver {
    /// Open an existing file, locked against conflicting users as QEMU locks images
    /// ([`crate::lock`]).
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        Self::open_with(path, read_only, true)
    }

    /// Open an existing file for LUKS key-slot work: only the header lock is taken
    /// ([`crate::lock::lock_header`]), so a VM using the image keeps running.
    pub fn open_header(path: &Path, read_only: bool) -> Result<Self> {
        let f = Self::open_with(path, read_only, false)?;
        crate::lock::lock_header(&f.file, path, !read_only)?;
        Ok(f)
    }

    /// Open an existing file, with or without QEMU-compatible locking.
    pub fn open_with(path: &Path, read_only: bool, locking: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::io(e, format!("could not open '{}'", path.display())))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(e, format!("could not stat '{}'", path.display())))?;
        if meta.is_dir() {
            bail!(Usage, "'{}' is a directory", path.display());
        }
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            device_size(&file)?
        };
        if locking {
            crate::lock::lock_image(&file, path, !read_only)?;
        }
        Ok(FileDriver {
            file,
            path: path.to_path_buf(),
            read_only,
            size: AtomicU64::new(size),
        })
    }

    /// Create (or truncate) a file of `size` bytes; it reads as zeros. An existing file
    /// is truncated only once the write lock is held.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        Self::create_mode(path, size, 0o666)
    }

    /// [`FileDriver::create`] for a file that will hold key slots (a LUKS header): a
    /// new file is readable and writable by its owner only (0600), as cryptsetup creates
    /// detached headers; an existing file keeps its mode.
    pub fn create_private(path: &Path, size: u64) -> Result<Self> {
        Self::create_mode(path, size, 0o600)
    }

    fn create_mode(path: &Path, size: u64, mode: u32) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map_err(|e| Error::io(e, format!("could not create '{}'", path.display())))?;
        crate::lock::lock_image(&file, path, true)?;
        file.set_len(0)
            .map_err(|e| Error::io(e, format!("could not truncate '{}'", path.display())))?;
        file.set_len(size)
            .map_err(|e| Error::io(e, format!("could not size '{}'", path.display())))?;
        Ok(FileDriver {
            file,
            path: path.to_path_buf(),
            read_only: false,
            size: AtomicU64::new(size),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The encryption sector size cryptsetup 2.6.1 prefers for this device when
    /// `--sector-size` is not given: 4096 for a regular file (the page size), for a block
    /// device its physical block size when that is a larger multiple of the logical one
    /// and at most 4096, else its logical block size.
    pub fn preferred_sector_size(&self) -> u32 {
        use std::os::unix::fs::FileTypeExt;
        let is_block = self
            .file
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device());
        if !is_block {
            return 4096;
        }
        let logical = rustix::fs::ioctl_blksszget(&self.file)
            .unwrap_or(512)
            .max(512);
        let physical = rustix::fs::ioctl_blkpbszget(&self.file).unwrap_or(logical);
        if physical <= logical || physical > 4096 || !physical.is_multiple_of(logical) {
            logical
        } else {
            physical
        }
    }

    /// Copy `len` bytes at `from` of `src` to `to` of this file with `copy_file_range`
    /// (short copies continued). Returns the bytes copied: fewer than `len` when the
    /// kernel cannot copy between these files (another filesystem, a block device, no
    /// support) or when the ranges overlap in one file (never handed to the kernel),
    /// and the caller copies the rest through a buffer.
    fn kernel_copy(&self, src: &FileDriver, from: u64, to: u64, len: u64) -> Result<u64> {
        use rustix::io::Errno;
        check_range_with(
            || format!("copying from '{}'", src.path.display()),
            from,
            len as usize,
            src.size(),
        )?;
        // Two nodes over one file overlapping get EINVAL from the kernel: buffered too.
        if std::ptr::eq(src, self) && from < to + len && to < from + len {
            return Ok(0);
        }
        let mut done = 0;
        while done < len {
            let (mut i, mut o) = (from + done, to + done);
            let n = (len - done).min(KERNEL_COPY_MAX) as usize;
            match rustix::fs::copy_file_range(&src.file, Some(&mut i), &self.file, Some(&mut o), n)
            {
                // The source ended early (it shrank): the buffered copy reports it.
                Ok(0) => break,
                Ok(n) => {
                    done += n as u64;
                    self.size.fetch_max(to + done, Ordering::AcqRel);
                }
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => break,
                Err(e) => return Err(self.io_err(e.into(), "copying into", to + done)),
            }
        }
        Ok(done)
    }

    fn io_err(&self, e: std::io::Error, what: &str, offset: u64) -> Error {
        Error::io(
            e,
            format!("{what} '{}' at offset {offset}", self.path.display()),
        )
    }
}

/// Bytes asked of one `copy_file_range` call.
const KERNEL_COPY_MAX: u64 = 1 << 30;

fn device_size(file: &File) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::io(e, "could not size block device"))
}

impl BlockDriver for FileDriver {
    fn driver_name(&self) -> &'static str {
        "file"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range_with(
            || format!("reading '{}'", self.path.display()),
            offset,
            buf.len(),
            self.size(),
        )?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_err(e, "reading", offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            bail!(ReadOnly, "'{}' is open read-only", self.path.display());
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err(e, "writing", offset))?;
        self.size
            .fetch_max(offset + buf.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    fn copy_from(
        &self,
        src: &dyn BlockDriver,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if self.read_only {
            bail!(ReadOnly, "'{}' is open read-only", self.path.display());
        }
        let done = match src.as_host_file() {
            Some(file) => self.kernel_copy(file, src_offset, offset, len)?,
            None => 0,
        };
        if done == len {
            return Ok(());
        }
        let (from, to) = (src_offset + done, offset + done);
        copy_buffered(src, from, to, len - done, &mut |b, at| self.write_at(b, at))
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io(e, format!("flushing '{}'", self.path.display())))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            bail!(ReadOnly, "'{}' is open read-only", self.path.display());
        }
        let end = offset + len;
        let size = self.size();
        // Punch a hole inside the file; extend with set_len past its end.
        let inside = end.min(size);
        if inside > offset {
            let punched = rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                offset,
                inside - offset,
            );
            if punched.is_err() {
                write_zero_buffers(self, offset, inside - offset)?;
            }
        }
        if end > size {
            self.file
                .set_len(end)
                .map_err(|e| self.io_err(e, "extending", end))?;
            self.size.fetch_max(end, Ordering::AcqRel);
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        let end = (offset + len).min(self.size());
        if offset >= end {
            bail!(
                OutOfRange,
                "block status at {offset} is beyond the end of '{}'",
                self.path.display()
            );
        }
        let data = rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset));
        let ext = match data {
            Ok(d) if d > offset => Extent {
                offset,
                length: (d.min(end)) - offset,
                allocation: Allocation::Zero,
            },
            Ok(_) => {
                let hole =
                    rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(offset)).unwrap_or(end);
                Extent {
                    offset,
                    length: hole.min(end).max(offset + 1) - offset,
                    allocation: Allocation::Data,
                }
            }
            // ENXIO: no data after offset, the rest is a hole.
            Err(rustix::io::Errno::NXIO) => Extent {
                offset,
                length: end - offset,
                allocation: Allocation::Zero,
            },
            Err(_) => Extent {
                offset,
                length: end - offset,
                allocation: Allocation::Data,
            },
        };
        Ok(ext)
    }

    fn has_zero_init(&self) -> bool {
        self.file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        if self.read_only {
            bail!(ReadOnly, "'{}' is open read-only", self.path.display());
        }
        self.file
            .set_len(new_size)
            .map_err(|e| Error::io(e, format!("resizing '{}'", self.path.display())))?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn filename(&self) -> String {
        self.path.display().to_string()
    }

    fn as_introspect(&self) -> Option<&dyn Introspect> {
        Some(self)
    }

    fn as_host_map(&self) -> Option<&dyn HostMap> {
        Some(self)
    }

    fn as_host_file(&self) -> Option<&FileDriver> {
        Some(self)
    }
}

/// The blocks the file occupies on its filesystem.
impl Introspect for FileDriver {
    fn allocated_size(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }
}

impl HostMap for FileDriver {
    /// The bytes are where they are: the host offset is the offset itself.
    fn map_extent(&self, offset: u64, len: u64) -> Result<MapExtent> {
        let host = HostRange {
            offset,
            file: self.filename(),
        };
        Ok(MapExtent::own(self.block_status(offset, len)?, Some(host)))
    }
}

fn write_zero_buffers(node: &FileDriver, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        node.file
            .write_all_at(&zeros[..n], offset + done)
            .map_err(|e| node.io_err(e, "zeroing", offset + done))?;
        done += n as u64;
    }
    Ok(())
}
