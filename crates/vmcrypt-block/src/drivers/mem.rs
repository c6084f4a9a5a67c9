//! An in-memory protocol node, for tests and scratch images.
use crate::driver::{BlockDriver, check_range};
use std::sync::RwLock;
use vmcrypt_error::{Result, bail};

/// A growable byte vector behind a lock.
pub struct MemDriver {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDriver {
    pub fn new(data: Vec<u8>) -> Self {
        MemDriver {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    pub fn read_only(data: Vec<u8>) -> Self {
        MemDriver {
            data: RwLock::new(data),
            read_only: true,
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().expect("lock").clone()
    }
}

impl BlockDriver for MemDriver {
    fn driver_name(&self) -> &'static str {
        "memory"
    }
    fn size(&self) -> u64 {
        self.data.read().expect("lock").len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let d = self.data.read().expect("lock");
        check_range("reading memory node", offset, buf.len(), d.len() as u64)?;
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            bail!(ReadOnly, "memory node is read-only");
        }
        let mut d = self.data.write().expect("lock");
        let end = offset as usize + buf.len();
        if end > d.len() {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.data
            .write()
            .expect("lock")
            .resize(new_size as usize, 0);
        Ok(())
    }
    fn has_zero_init(&self) -> bool {
        true
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
}
