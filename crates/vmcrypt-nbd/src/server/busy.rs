//! Admission under `--shared N`: at most N clients are served at once.
//!
//! A client beyond the limit first waits for a slot, ungreeted, for the shared wait
//! ([`super::Server::shared_wait`], 2 s by default), so a client that arrives just as
//! another leaves is still served. If no slot frees up, rather than leaving it waiting
//! with no word (for a slot that idle clients may never free), the server greets it
//! and answers each of its options with `NBD_REP_ERR_SHUTDOWN` ("unwilling to continue
//! negotiation") and a message naming the limit, which clients such as qemu-nbd and
//! nbdinfo print. It then closes: at once for NBD_OPT_EXPORT_NAME (which has no error
//! reply) and after the ACK for NBD_OPT_ABORT. The exchange is bounded by the
//! handshake timeout.
use super::conn::{self, Limits};
use super::{Export, TlsCreds};
use crate::proto::handshake::{greeting, option_reply, parse_option_header};
use crate::proto::{MAX_OPTION_LEN, OPT_ABORT, OPT_EXPORT_NAME, REP_ACK, REP_ERR_SHUTDOWN};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Most options answered before the connection is closed anyway.
const MAX_OPTIONS: usize = 16;

/// The client slots of a server with a `--shared` limit.
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    shared: usize,
    wait: Duration,
}

impl Gate {
    /// `shared` slots (0: no limit, no gate); an extra client waits up to `wait`.
    pub(crate) fn new(shared: usize, wait: Duration) -> Option<Arc<Gate>> {
        (shared > 0).then(|| {
            Arc::new(Gate {
                slots: Arc::new(Semaphore::new(shared)),
                shared,
                wait,
            })
        })
    }

    /// A slot, or `None` when none freed up in time.
    async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().acquire_owned();
        tokio::time::timeout(self.wait, slot).await.ok()?.ok()
    }

    /// The error message a refused client gets.
    fn message(&self) -> String {
        let n = self.shared;
        format!("server busy: {n} clients connected (--shared {n})")
    }
}

/// What one accepted connection needs from its server.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) exports: Arc<[Export]>,
    pub(crate) tls: Option<TlsCreds>,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) limits: Limits,
    pub(crate) gate: Option<Arc<Gate>>,
}

/// Serve the client on `s` once it has a slot, or refuse it.
pub(crate) async fn admit<S>(s: S, c: Client, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stopping = c.stopping.clone();
    let slot = match &c.gate {
        None => None,
        Some(gate) => tokio::select! {
            slot = gate.enter() => match slot {
                Some(slot) => Some(slot),
                None => return refuse(s, gate.message(), c.limits.handshake, peer).await,
            },
            () = conn::stopped(&mut stopping) => return,
        },
    };
    conn::serve(s, c.exports, c.tls, peer, c.stopping, c.limits).await;
    drop(slot);
}

/// Refuse the client on `s` with `msg`, within `timeout`.
async fn refuse<S>(mut s: S, msg: String, timeout: Duration, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let r = tokio::time::timeout(timeout, exchange(&mut s, &msg)).await;
    match r {
        Ok(Ok(())) => tracing::info!(%peer, "{msg}: client refused"),
        Ok(Err(e)) => tracing::info!(%peer, "{msg}: refusing the client: {e}"),
        Err(_) => tracing::info!(%peer, "{msg}: refused client timed out"),
    }
    let _ = s.shutdown().await;
}

async fn exchange<S>(s: &mut S, msg: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&greeting()).await?;
    s.flush().await?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await?;
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; 16];
        s.read_exact(&mut header).await?;
        let (opt, len) = parse_option_header(&header)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let take = u64::from(len.min(MAX_OPTION_LEN));
        let drained = tokio::io::copy(&mut (&mut *s).take(take), &mut tokio::io::sink()).await?;
        if drained < take || len > MAX_OPTION_LEN || opt == OPT_EXPORT_NAME {
            return Ok(());
        }
        let reply = if opt == OPT_ABORT {
            option_reply(opt, REP_ACK, &[])
        } else {
            option_reply(opt, REP_ERR_SHUTDOWN, msg.as_bytes())
        };
        s.write_all(&reply).await?;
        s.flush().await?;
        if opt == OPT_ABORT {
            return Ok(());
        }
    }
    Ok(())
}
