//! The header magic of a clone formatted with its own key (Ceph Reef's layered
//! encryption): `RBDL\xba\xbe` at offset 0 instead of `LUKS\xba\xbe`, and for LUKS2 the
//! secondary header's `SKUL\xba\xbe` becomes `LDBR\xba\xbe` (the same swap, its first four
//! bytes reversed), so that LUKS tools that do not know the parent's key leave it alone.
//! Everything else is a standard LUKS header.
//!
//! [`CloneMagicView`] shows such a header to the LUKS code as a plain LUKS header and
//! turns the magic back on the way out, so key-slot changes keep the clone's magic.
use crate::driver::{BlockDriver, Extent};
use std::sync::Arc;
use vmcrypt_error::Result;

const LUKS: &[u8; 6] = b"LUKS\xba\xbe";
const SKUL: &[u8; 6] = b"SKUL\xba\xbe";
const RBDL: &[u8; 6] = b"RBDL\xba\xbe";
const LDBR: &[u8; 6] = b"LDBR\xba\xbe";

/// Whether `head` (at least 6 bytes from offset 0) starts with the clone magic.
pub fn is_clone_header(head: &[u8]) -> bool {
    head.starts_with(RBDL)
}

/// Where the LUKS2 secondary header starts, from the primary's first 16 bytes
/// (`hdr_size`, big-endian at offset 8); `None` for LUKS1.
fn secondary_offset(head: &[u8; 16]) -> Option<u64> {
    (u16::from_be_bytes([head[6], head[7]]) == 2)
        .then(|| u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")))
}

/// Put the LUKS magic back in place of the clone magic in `raw` (after a flatten).
pub fn restore_luks_magic(raw: &dyn BlockDriver) -> Result<()> {
    let mut head = [0u8; 16];
    raw.read_at(&mut head, 0)?;
    if !is_clone_header(&head) {
        return Ok(());
    }
    if let Some(sec) = secondary_offset(&head) {
        raw.write_at(SKUL, sec)?;
    }
    raw.write_at(LUKS, 0)
}

/// A view of a clone's raw image with the LUKS magic in place of the clone magic.
pub struct CloneMagicView {
    inner: Arc<dyn BlockDriver>,
    /// The LUKS2 secondary header's offset (`None` for LUKS1).
    secondary: Option<u64>,
}

impl CloneMagicView {
    /// View `inner`, whose header is a clone header or (while being formatted) about to
    /// become one; `version` is the LUKS version (1 or 2) and `hdr_size` the LUKS2 header
    /// size, both read from the header when `None`.
    pub fn new(inner: Arc<dyn BlockDriver>, layout: Option<(u16, u64)>) -> Result<Self> {
        let secondary = match layout {
            Some((2, hdr)) => Some(hdr),
            Some(_) => None,
            None => {
                let mut head = [0u8; 16];
                inner.read_at(&mut head, 0)?;
                secondary_offset(&head)
            }
        };
        Ok(CloneMagicView { inner, secondary })
    }

    fn magic_spots(&self) -> impl Iterator<Item = (u64, &'static [u8; 6], &'static [u8; 6])> {
        std::iter::once((0, LUKS, RBDL)).chain(self.secondary.map(|s| (s, SKUL, LDBR)))
    }

    /// Replace `from` by `to` where one of the magic spots lies wholly in `buf`.
    fn swap(&self, buf: &mut [u8], offset: u64, to_clone: bool) {
        for (at, luks, clone) in self.magic_spots() {
            let (from, to) = if to_clone {
                (luks, clone)
            } else {
                (clone, luks)
            };
            if at >= offset && at + 6 <= offset + buf.len() as u64 {
                let i = (at - offset) as usize;
                if &buf[i..i + 6] == from {
                    buf[i..i + 6].copy_from_slice(to);
                }
            }
        }
    }
}

impl BlockDriver for CloneMagicView {
    fn driver_name(&self) -> &'static str {
        self.inner.driver_name()
    }
    fn filename(&self) -> String {
        self.inner.filename()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)?;
        self.swap(buf, offset, false);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut copy = buf.to_vec();
        self.write_at_mut(&mut copy, offset)
    }
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.swap(buf, offset, true);
        self.inner.write_at_mut(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        self.inner.block_status(offset, len)
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.inner.resize(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mem::MemDriver;

    #[test]
    fn luks2_magics_are_swapped_both_ways() {
        let mem: Arc<dyn BlockDriver> = Arc::new(MemDriver::new(vec![0u8; 64 << 10]));
        let view = CloneMagicView::new(mem.clone(), Some((2, 16384))).unwrap();
        let mut head = [0u8; 16];
        head[..6].copy_from_slice(LUKS);
        head[6..8].copy_from_slice(&2u16.to_be_bytes());
        head[8..16].copy_from_slice(&16384u64.to_be_bytes());
        view.write_at(&head, 0).unwrap();
        view.write_at(SKUL, 16384).unwrap();
        let mut raw = [0u8; 6];
        mem.read_at(&mut raw, 0).unwrap();
        assert_eq!(&raw, b"RBDL\xba\xbe");
        mem.read_at(&mut raw, 16384).unwrap();
        assert_eq!(&raw, b"LDBR\xba\xbe");
        // Read back (a fresh view finds the layout in the header) as plain LUKS2.
        let view = CloneMagicView::new(mem.clone(), None).unwrap();
        let mut all = vec![0u8; 16384 + 6];
        view.read_at(&mut all, 0).unwrap();
        assert_eq!(&all[..6], LUKS);
        assert_eq!(&all[16384..], SKUL);
        assert!(is_clone_header(&{
            let mut h = [0u8; 6];
            mem.read_at(&mut h, 0).unwrap();
            h
        }));
    }
}
