//! A LUKS node's view of its header: the [`Volume`] read from the header device,
//! which the online transitions the node makes itself (a LUKS2 reencryption started
//! while serving, a finished run handing the node over to the new key) replace with
//! the header they wrote, re-read from the device.
//!
//! Readers take a snapshot ([`HeaderView::get`], an `Arc` of one whole header) and keep
//! it as long as they like; a replacement swaps the `Arc` under a short lock, so a
//! reader sees the header before or after a transition, never a mix. The data path
//! never reads the view (the node's layout and cipher live elsewhere), so requests take
//! no lock for it.
use super::{Luks1Volume, Luks2Volume, Volume};
use crate::driver::BlockDriver;
use std::ops::Deref;
use std::sync::{Arc, RwLock};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::Result;

/// The header a node serves, replaceable as a whole.
pub(crate) struct HeaderView {
    current: RwLock<Arc<Volume>>,
    dev: Arc<dyn BlockDriver>,
    detached: bool,
    limits: KdfLimits,
}

impl HeaderView {
    /// The view of `vol`, which was read from `dev` (`detached`: a header without data).
    pub(crate) fn new(
        vol: Volume,
        dev: Arc<dyn BlockDriver>,
        detached: bool,
        limits: &KdfLimits,
    ) -> Arc<Self> {
        Arc::new(HeaderView {
            current: RwLock::new(Arc::new(vol)),
            dev,
            detached,
            limits: *limits,
        })
    }

    /// The header as the node serves it now.
    pub(crate) fn get(&self) -> Arc<Volume> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the header from the device (no lock held: the view is unchanged until
    /// [`HeaderView::install`]).
    pub(crate) fn read(&self) -> Result<Volume> {
        Volume::open(self.dev.clone(), self.detached, &self.limits)
    }

    /// The header device.
    pub(crate) fn dev(&self) -> &Arc<dyn BlockDriver> {
        &self.dev
    }

    /// Serve `vol` from now on.
    pub(crate) fn install(&self, vol: Volume) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(vol);
    }
}

/// One version's header out of a snapshot of the view: it stays as it was even if a
/// transition replaces the view meanwhile.
pub struct HeaderRef<T> {
    vol: Arc<Volume>,
    get: fn(&Volume) -> Option<&T>,
}

impl<T> HeaderRef<T> {
    fn new(vol: Arc<Volume>, get: fn(&Volume) -> Option<&T>) -> Option<Self> {
        get(&vol)?;
        Some(HeaderRef { vol, get })
    }
}

impl<T> Deref for HeaderRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        (self.get)(&self.vol).expect("checked when the reference was made")
    }
}

/// The LUKS1 header of `vol`, if it is LUKS1.
pub(crate) fn luks1_of(vol: Arc<Volume>) -> Option<HeaderRef<Luks1Volume>> {
    HeaderRef::new(vol, Volume::v1)
}

/// The LUKS2 header of `vol`, if it is LUKS2.
pub(crate) fn luks2_of(vol: Arc<Volume>) -> Option<HeaderRef<Luks2Volume>> {
    HeaderRef::new(vol, Volume::v2)
}
