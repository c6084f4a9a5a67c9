//! Admission under `--shared N`: at most N clients are served at once.
//!
//! As qemu-nbd does, the server simply stops accepting while all N slots are taken: a
//! further client's connection waits in the kernel's listen backlog, ungreeted, until
//! a served client leaves (however long that takes; `--idle-timeout` bounds how long an
//! idle client holds its slot). Nothing is accepted that cannot be served, so waiting
//! clients cost no file descriptors or tasks, and a server that is not persistent exits
//! when its last served client leaves, dropping the waiting ones, as qemu-nbd does.
use super::conn::{self, Limits};
use super::{Export, TlsCreds};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// The client slots of a server with a `--shared` limit.
pub(crate) struct Gate {
    slots: Option<Arc<Semaphore>>,
}

/// A taken slot (none without a limit); freed when dropped.
pub(crate) type Slot = Option<OwnedSemaphorePermit>;

impl Gate {
    /// `shared` slots (0: no limit).
    pub(crate) fn new(shared: usize) -> Gate {
        Gate {
            slots: (shared > 0).then(|| Arc::new(Semaphore::new(shared))),
        }
    }

    /// Wait for a free slot (cancel-safe: a slot taken by a dropped wait is freed).
    pub(crate) async fn free_slot(&self) -> Slot {
        match &self.slots {
            None => None,
            Some(s) => s.clone().acquire_owned().await.ok(),
        }
    }
}

/// What one accepted connection needs from its server.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) exports: Arc<[Export]>,
    pub(crate) tls: Option<TlsCreds>,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) limits: Limits,
}

/// Serve the client on `s` holding `slot`, which is handed back when it leaves: the
/// server frees it once it has counted the client gone.
pub(crate) async fn serve_in<S>(s: S, c: Client, peer: String, slot: Slot) -> Slot
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn::serve(s, c.exports, c.tls, peer, c.stopping, c.limits).await;
    slot
}
