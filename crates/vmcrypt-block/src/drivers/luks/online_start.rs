//! Starting a LUKS2 reencryption while the node is served: the header is put in
//! reencryption state as `luks reencrypt --init-only` would (the new key sealed in a
//! new keyslot, the `reencrypt` keyslot, the requirement), then the node switches to
//! serving through the moving hotzone ([`Online`]).
//!
//! The KDF work and the header writes happen while requests keep flowing: until the
//! first hotzone runs, all data is still in the old encryption, which is how the node
//! serves it. Only the switch itself waits for the requests in flight (the node's
//! request lock held exclusively), so no request that began on the old path is still
//! running when the run can start, and every later request sees the request sector of
//! the run (the larger of the old and the new sector size). The switch drops the
//! node's plain-path cipher (the old key): the run holds both keys from then on, until
//! it finishes and hands the node over to the new one. It also swaps in the header the
//! start wrote, read back from the device beforehand, as the node's header view (a
//! failed read leaves the view as it was and is reported in the run's status).
use super::LuksDriver;
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::reencrypt::init::{InitParams, check_data_alignment};
use crate::drivers::luks::v2::reencrypt::online::Online;
use std::sync::Arc;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

impl LuksDriver {
    /// See [`BlockDriver::start_reencryption`].
    pub(super) fn begin_reencryption(
        &self,
        passphrase: &[u8],
        key_slot: Option<u32>,
        p: &InitParams,
    ) -> Result<Arc<Online>> {
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.online.get().is_some() {
            bail!(
                Busy,
                "'{}' is already in LUKS2 reencryption: resume it instead",
                self.file.filename()
            );
        }
        self.check_can_start(p)?;
        let mut vol = self.header.read()?;
        let v2 = vol.v2_mut()?;
        ensure!(
            v2.reencrypt_state()?.is_none(),
            Busy,
            "'{}' is already in LUKS2 reencryption (started by another tool?): serve it \
             again to resume",
            self.file.filename()
        );
        let old = v2.unlock(passphrase, key_slot)?;
        v2.reencrypt_init(&old.volume_key, passphrase, p)
            .ctx("starting the reencryption")?;
        drop(old);
        let online = Online::open(
            self.header.clone(),
            self.file.clone(),
            passphrase,
            self.rmw.clone(),
        )?
        .ok_or_else(|| Error::internal("the reencryption just started is not in the header"))?;
        // The header as the start wrote it, read before the switch (which waits for
        // the requests in flight) so the switch itself does no I/O.
        let fresh = self.header.read();
        let mut plain = self.rmw.write().expect("rmw lock");
        self.online
            .set(online.clone())
            .map_err(|_| Error::internal("online reencryption set twice"))?;
        *plain = None;
        online.follow_header(fresh);
        Ok(online)
    }

    /// What an online start needs: the node must be LUKS2, writable, opened with its
    /// key, and its size a multiple of both sector sizes (and of the checksum block). A larger sector size raises
    /// the node's request sector (see [`LuksDriver::sector_size`]) when the run is
    /// switched on below: smaller writes are then read-modify-written on it.
    fn check_can_start(&self, p: &InitParams) -> Result<()> {
        let name = self.file.filename();
        ensure!(
            self.luks2().is_some(),
            Unsupported,
            "'{name}' is LUKS1: re-key it offline (vmcrypt luks reencrypt), online \
             reencryption needs LUKS2"
        );
        if self.is_read_only() {
            bail!(
                ReadOnly,
                "'{name}' is served read-only: it cannot be reencrypted"
            );
        }
        self.check_key()?;
        // The node keeps its size: the data must be whole sectors of both sizes and
        // whole checksum blocks.
        let ss = p.new.sector_size.map_or(self.layout.sector, u64::from);
        check_data_alignment(
            self.size(),
            self.layout.sector as u32,
            ss as u32,
            &p.resilience,
        )
        .ctx(format!("'{name}'"))?;
        Ok(())
    }
}
