//! The tokio NBD server: a list of named exports served on a Unix socket or a TCP
//! address, one task per connection (see [`conn`]), block I/O on the blocking pool.
//!
//! Without [`Server::persistent`] the server returns after its first client (and every
//! client connected meanwhile) has gone, like qemu-nbd; with it, it serves until the
//! shutdown future completes. Either way every export is flushed before `serve` returns.
//!
//! Shutdown is clean: the listener closes at once, every connection stops reading new
//! requests, requests already read run to completion and get their replies, and then
//! the sockets close. Connections still busy after the grace period
//! ([`Server::grace`], 5 s by default) are aborted.
//!
//! Limits: [`Server::shared`] caps how many clients are served at once; while all are
//! taken nothing more is accepted, so a further client waits in the listen backlog
//! until one leaves, as with qemu-nbd (see [`busy`]).
//! [`Server::max_inflight`] caps the bytes all in-flight requests hold together (see
//! [`budget`]). [`Server::handshake_timeout`] (60 s by default) and
//! [`Server::idle_timeout`] (off by default) disconnect clients that stall.
//!
//! With [`Server::tls`] every client must upgrade to TLS with NBD_OPT_STARTTLS before
//! anything else (see [`tls`] for the credentials).
mod aio;
mod budget;
mod busy;
mod conn;
mod ops;
mod outbox;
mod pace;
pub mod sched;
pub mod tls;
mod transmit;

pub use budget::{DEFAULT_MAX_INFLIGHT, Inflight};
pub use sched::SchedPolicy;
pub use tls::TlsCreds;

use crate::proto::handshake::ExportInfo;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use vmcrypt_block::BlockDriver;
use vmcrypt_error::{Error, ErrorKind, Result, bail};

/// One block node offered under a name.
#[derive(Clone)]
pub struct Export {
    /// The name clients ask for ("" is the default export).
    pub name: String,
    pub node: Arc<dyn BlockDriver>,
    /// Refuse writes (forced on when the node itself is read-only).
    pub read_only: bool,
    /// Free text shown by `NBD_OPT_LIST` / `NBD_INFO_DESCRIPTION`.
    pub description: String,
}

impl Export {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            size: self.node.size(),
            read_only: self.read_only,
        }
    }
}

/// A bound listening socket.
pub enum Listener {
    /// A Unix socket; the path is removed when serving ends.
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Bind a Unix socket at `path` (which must not exist).
    pub fn unix(path: &Path) -> Result<Self> {
        let l = UnixListener::bind(path)
            .map_err(|e| io_error(e, "binding", &path.display().to_string()))?;
        Ok(Listener::Unix(l, path.to_path_buf()))
    }

    /// Bind a TCP address.
    pub async fn tcp(addr: SocketAddr) -> Result<Self> {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| io_error(e, "binding", &addr.to_string()))?;
        Ok(Listener::Tcp(l))
    }

    /// Where the listener is reachable, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| "tcp".into()),
        }
    }
}

fn io_error(e: std::io::Error, what: &str, target: &str) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {target}: {e}"))
}

/// An NBD server for a fixed set of exports.
pub struct Server {
    exports: Arc<[Export]>,
    persistent: bool,
    tls: Option<TlsCreds>,
    shared: usize,
    grace: Duration,
    handshake: Duration,
    idle: Option<Duration>,
    inflight: Inflight,
}

/// How long a shutdown waits for in-flight requests before aborting connections.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Time a client has to finish the handshake (so an idle socket cannot pin the server).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    /// A server for `exports`; names must be unique and at most 4096 bytes.
    pub fn new(exports: Vec<Export>) -> Result<Self> {
        if exports.is_empty() {
            bail!(Usage, "an NBD server needs at least one export");
        }
        let mut exports = exports;
        for e in exports.iter_mut() {
            if e.name.len() > crate::proto::MAX_STRING {
                bail!(Usage, "export name is longer than 4096 bytes");
            }
            e.read_only |= e.node.is_read_only();
        }
        for (i, e) in exports.iter().enumerate() {
            if exports[..i].iter().any(|o| o.name == e.name) {
                bail!(Usage, "export name '{}' is given twice", e.name);
            }
        }
        Ok(Server {
            exports: exports.into(),
            persistent: false,
            tls: None,
            shared: 0,
            grace: DEFAULT_GRACE,
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            idle: None,
            inflight: Inflight::new(DEFAULT_MAX_INFLIGHT),
        })
    }

    /// Keep serving after the last client leaves.
    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Require TLS with these credentials (`None`: no TLS, STARTTLS is unsupported).
    pub fn tls(mut self, creds: Option<TlsCreds>) -> Self {
        self.tls = creds;
        self
    }

    /// Serve at most `n` clients at once (0: no limit); more wait to be accepted.
    pub fn shared(mut self, n: usize) -> Self {
        self.shared = n;
        self
    }

    /// How long shutdown waits for in-flight requests before aborting connections.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Time a client has to finish the handshake before it is disconnected.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake = t;
        self
    }

    /// Disconnect a client that sends no request for `t` (`None`: never).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.idle = t;
        self
    }

    /// Most bytes all in-flight requests may hold together (see [`budget`]).
    pub fn max_inflight(mut self, bytes: u32) -> Self {
        self.inflight = Inflight::new(bytes);
        self
    }

    /// The server's in-flight byte counter (for logs and tests).
    pub fn inflight(&self) -> Inflight {
        self.inflight.clone()
    }

    /// The exports served.
    pub fn exports(&self) -> &[Export] {
        &self.exports
    }

    /// Bind `path` and serve until shutdown (see the module doc).
    pub async fn serve_unix(&self, path: &Path, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.serve(Listener::unix(path)?, shutdown).await
    }

    /// Bind `addr` and serve until shutdown (see the module doc).
    pub async fn serve_tcp(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        self.serve(Listener::tcp(addr).await?, shutdown).await
    }

    /// Serve on an already bound listener until `shutdown` completes or, when not
    /// persistent, the clients are gone; then flush every export.
    pub async fn serve(
        &self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tracing::info!(listen = %listener.describe(), exports = self.exports.len(), "serving NBD");
        let (stop, stopping) = watch::channel(false);
        let mut conns = JoinSet::new();
        let mut served = 0u64;
        let client = busy::Client {
            exports: self.exports.clone(),
            tls: self.tls.clone(),
            stopping,
            limits: conn::Limits {
                handshake: self.handshake,
                idle: self.idle,
                inflight: self.inflight.clone(),
            },
        };
        let gate = busy::Gate::new(self.shared);
        let next = || async {
            let slot = gate.free_slot().await;
            (accept(&listener).await, slot)
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!(clients = conns.len(), "shutting down: no new connections");
                    break;
                }
                (accepted, slot) = next() => match accepted {
                    Ok((stream, peer)) => {
                        served += 1;
                        let c = client.clone();
                        match stream {
                            Stream::Unix(s) => conns.spawn(busy::serve_in(s, c, peer, slot)),
                            Stream::Tcp(s) => conns.spawn(busy::serve_in(s, c, peer, slot)),
                        };
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(slot) = conns.join_next(), if !conns.is_empty() => {
                    // The slot is freed only here, after this check: a client waiting
                    // for it is not accepted by a server that is about to exit.
                    if !self.persistent && served > 0 && conns.is_empty() {
                        tracing::info!("last client left; exiting (not persistent)");
                        break;
                    }
                    drop(slot);
                }
            }
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
        drop(listener);
        self.drain(conns, stop).await;
        let flushed = self.flush_all().await;
        if flushed.is_ok() {
            tracing::info!("every export flushed; server stopped");
        }
        flushed
    }

    /// Tell the connections to stop and wait up to the grace period for their
    /// in-flight requests; abort what is left.
    async fn drain(&self, mut conns: JoinSet<busy::Slot>, stop: watch::Sender<bool>) {
        let _ = stop.send(true);
        if conns.is_empty() {
            return;
        }
        tracing::info!(
            clients = conns.len(),
            grace = ?self.grace,
            "waiting for in-flight requests"
        );
        let all = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(
                clients = conns.len(),
                "grace period over: aborting connections with requests still in flight"
            );
            conns.shutdown().await;
        } else {
            tracing::info!("all connections finished");
        }
    }

    /// Flush every export; the first error is returned after trying them all.
    pub async fn flush_all(&self) -> Result<()> {
        let exports = self.exports.clone();
        tokio::task::spawn_blocking(move || {
            let mut first = None;
            for e in exports.iter() {
                if e.read_only {
                    continue;
                }
                if let Err(err) = e.node.flush() {
                    tracing::warn!(export = %e.name, "flush failed: {}", err.display_chain());
                    first.get_or_insert(err);
                }
            }
            first.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("flush task failed: {e}")))?
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", path.display())))
        }
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok((Stream::Tcp(s), peer.to_string()))
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
