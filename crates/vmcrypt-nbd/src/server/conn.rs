//! One client connection: the handshake, then the transmission loop.
//!
//! The loop reads request headers (and WRITE payloads) in order and hands each request
//! to its own task, which runs the block I/O on the blocking pool and writes the reply
//! under the connection's writer lock, so several requests are in flight while every
//! reply goes out whole. A byte budget (see [`super::budget`]), per connection and
//! server-wide, bounds the memory held by in-flight requests. A client that sends no
//! request for the idle timeout (when set) is disconnected, as is one that does not
//! finish the handshake within the handshake timeout.
//! A protocol violation or a socket error ends only this connection; in-flight requests
//! finish and the export is flushed before the socket closes. When the server stops
//! (the `stopping` watch turns true) the loop reads no further request: requests already
//! read finish and are answered, then the connection closes the same way.
//!
//! With TLS credentials the handshake demands NBD_OPT_STARTTLS; after its ACK the
//! socket is wrapped in a rustls server session and everything else (the remaining
//! options and the whole transmission phase) goes over it.
use super::budget::Inflight;
use super::ops;
use super::{Export, TlsCreds};
use crate::proto::handshake::{ExportInfo, Handshake, Negotiated, Step, greeting};
use crate::proto::transmission::{Command, REQUEST_LEN, Replies, Request, Session, validate};
use crate::proto::{MAX_OPTION_LEN, handshake};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, WriteHalf};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

/// Most bytes of idle WRITE payload buffers a connection keeps for reuse.
const POOL_BYTES: usize = 8 << 20;

/// Larger WRITE buffers are freed after use rather than pooled, so memory goes back
/// to the allocator (and, being large, to the OS) once the load is gone.
const POOL_MAX_BUFFER: usize = 1 << 20;

/// Longest header in front of READ data (a structured OFFSET_DATA chunk).
const REPLY_HEADER_MAX: usize = 28;

/// The limits every connection of a server runs under.
#[derive(Clone)]
pub(crate) struct Limits {
    /// Time a client has to finish the handshake.
    pub(crate) handshake: Duration,
    /// Disconnect a client that sends no request for this long.
    pub(crate) idle: Option<Duration>,
    /// The server-wide in-flight budget.
    pub(crate) inflight: Inflight,
}

type Writer<S> = Arc<Mutex<WriteHalf<S>>>;

/// Idle WRITE payload buffers of one connection (so a write neither allocates nor
/// zeroes its buffer).
#[derive(Clone, Default)]
struct Pool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if buf.capacity() <= POOL_MAX_BUFFER && held + buf.capacity() <= POOL_BYTES {
            idle.push(buf);
        }
    }
}

/// Read exactly `n` payload bytes into `buf` (replacing its contents) without first
/// zero-filling it.
async fn read_payload<R>(rd: &mut R, buf: &mut Vec<u8>, n: usize) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    buf.clear();
    buf.reserve_exact(n);
    let mut limited = rd.take(n as u64);
    while buf.len() < n {
        if limited.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// The connection after the handshake: clear text or TLS.
enum Conn<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

/// Completes once the server is stopping (or gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve one connection until the client disconnects or misbehaves, or the server stops.
pub(crate) async fn serve<S>(
    stream: S,
    exports: Arc<[Export]>,
    tls: Option<TlsCreds>,
    peer: String,
    mut stopping: watch::Receiver<bool>,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let infos = exports.iter().map(Export::info).collect();
    let handshake = negotiate(stream, infos, tls.as_ref());
    let timed = async {
        tokio::time::timeout(limits.handshake, handshake)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            })
    };
    let outcome = tokio::select! {
        r = timed => r,
        () = stopped(&mut stopping) => {
            tracing::info!(%peer, "server stopping: handshake abandoned");
            return;
        }
    };
    let (conn, negotiated) = match outcome {
        Ok(Some(n)) => n,
        Ok(None) => {
            tracing::info!(%peer, "client left during the handshake");
            return;
        }
        Err(e) => {
            tracing::info!(%peer, "handshake ended: {e}");
            return;
        }
    };
    let export = &exports[negotiated.export];
    tracing::info!(
        %peer,
        export = %export.name,
        structured = negotiated.structured,
        tls = matches!(conn, Conn::Tls(_)),
        block_status = negotiated.base_allocation,
        "client connected"
    );
    let node = export.node.clone();
    let result = match conn {
        Conn::Plain(s) => transmit(s, export, negotiated, stopping, &limits).await,
        Conn::Tls(s) => transmit(s, export, negotiated, stopping, &limits).await,
    };
    if let Err(e) = result {
        tracing::info!(%peer, "connection closed: {e}");
    }
    match tokio::task::spawn_blocking(move || node.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%peer, "flush after disconnect failed: {}", e.display_chain()),
        Err(e) => tracing::warn!(%peer, "flush task failed: {e}"),
    }
    tracing::info!(%peer, export = %export.name, "client disconnected");
}

fn violation(e: crate::proto::ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How an option loop ended.
enum Outcome {
    /// The client aborted or chose no export.
    Closed,
    Transmit(Negotiated),
    /// STARTTLS was acknowledged: upgrade the socket.
    StartTls,
}

/// Run the handshake (with the TLS upgrade when `tls` is set); `None` when the client
/// aborted or chose no export.
async fn negotiate<S>(
    mut s: S,
    infos: Vec<ExportInfo>,
    tls: Option<&TlsCreds>,
) -> io::Result<Option<(Conn<S>, Negotiated)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Handshake::new(infos).require_tls(tls.is_some());
    s.write_all(&greeting()).await?;
    s.flush().await?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await?;
    hs.client_flags(&flags).map_err(violation)?;
    match options(&mut s, &mut hs).await? {
        Outcome::Closed => Ok(None),
        Outcome::Transmit(n) => Ok(Some((Conn::Plain(s), n))),
        Outcome::StartTls => {
            let Some(creds) = tls else {
                return Err(io::Error::other("STARTTLS acknowledged without TLS"));
            };
            let mut t = creds.acceptor().accept(s).await?;
            hs.tls_started();
            tracing::debug!("TLS session established");
            match options(&mut t, &mut hs).await? {
                Outcome::Closed => Ok(None),
                Outcome::Transmit(n) => Ok(Some((Conn::Tls(Box::new(t)), n))),
                Outcome::StartTls => Err(io::Error::other("STARTTLS acknowledged twice")),
            }
        }
    }
}

/// Read options and answer them until the handshake leaves the option phase.
async fn options<S>(s: &mut S, hs: &mut Handshake) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut header = [0u8; 16];
        s.read_exact(&mut header).await?;
        let (opt, len) = handshake::parse_option_header(&header).map_err(violation)?;
        tracing::debug!(opt, len, "option");
        let step = if len > MAX_OPTION_LEN {
            let drained =
                tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink())
                    .await?;
            if drained < u64::from(len) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            hs.oversized_option(opt)
        } else {
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).await?;
            hs.handle_option(opt, &data)
        };
        match step {
            Step::Continue(bytes) => s.write_all(&bytes).await?,
            Step::Close(bytes) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::Closed);
            }
            Step::Transmit(bytes, n) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::Transmit(n));
            }
            Step::StartTls(bytes) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::StartTls);
            }
        }
        s.flush().await?;
    }
}

/// Bytes a command holds while in flight (at least 1 so every request takes a permit).
fn cost(cmd: &Command) -> u32 {
    match *cmd {
        Command::Read { length, .. } | Command::Write { length, .. } => length.max(1),
        _ => 1,
    }
}

async fn transmit<S>(
    stream: S,
    export: &Export,
    n: Negotiated,
    mut stopping: watch::Receiver<bool>,
    limits: &Limits,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let writer: Writer<S> = Arc::new(Mutex::new(wr));
    let budget = limits.inflight.connection();
    let replies = Replies {
        structured: n.structured,
    };
    let session = Session {
        size: export.node.size(),
        read_only: export.read_only,
        structured: n.structured,
        base_allocation: n.base_allocation,
    };
    let mut inflight = JoinSet::new();
    let pool = Pool::default();
    // Set when a reply cannot be written: the client is gone, so requests it queued
    // are not run for nothing.
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = loop {
        // Reap finished tasks so the set does not grow without bound.
        while inflight.try_join_next().is_some() {}
        let mut header = [0u8; REQUEST_LEN];
        let read = tokio::select! {
            biased;
            () = stopped(&mut stopping) => {
                tracing::info!(in_flight = inflight.len(), "server stopping: reading no more requests");
                break Ok(());
            }
            r = read_header(&mut rd, &mut header, limits.idle) => r,
        };
        if let Err(e) = read {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let req = match Request::decode(&header) {
            Ok(r) => r,
            Err(e) => break Err(violation(e)),
        };
        tracing::debug!(
            cookie = req.cookie,
            kind = req.kind,
            offset = req.offset,
            length = req.length,
            flags = req.flags,
            "request"
        );
        let cmd = match validate(&req, &session) {
            Err(e) => break Err(violation(e)),
            Ok(Err(rej)) => {
                tracing::debug!(cookie = req.cookie, error = ?rej.error, "rejected: {}", rej.message);
                let drained = tokio::io::copy(
                    &mut (&mut rd).take(u64::from(rej.drain)),
                    &mut tokio::io::sink(),
                )
                .await?;
                if drained < u64::from(rej.drain) {
                    break Ok(());
                }
                let reply = replies.error(req.cookie, rej.error, &rej.message);
                send(&writer, &reply).await?;
                continue;
            }
            Ok(Ok(Command::Disconnect)) => break Ok(()),
            Ok(Ok(cmd)) => cmd,
        };
        let permit = budget.acquire(cost(&cmd)).await;
        if gone.load(std::sync::atomic::Ordering::SeqCst) {
            break Ok(());
        }
        let n = req.payload_len() as usize;
        let mut payload = if n > 0 { pool.take() } else { Vec::new() };
        read_payload(&mut rd, &mut payload, n).await?;
        if let Command::Read { length, .. } = cmd {
            // Allocated here on a runtime worker rather than on one of the many
            // blocking threads, so freed reply buffers stay in few malloc arenas and
            // memory goes back once the load is gone.
            payload = Vec::with_capacity(REPLY_HEADER_MAX + length as usize);
        }
        let node = export.node.clone();
        let writer = writer.clone();
        let cookie = req.cookie;
        let pool = pool.clone();
        let gone = gone.clone();
        inflight.spawn(async move {
            let work = move || {
                let reply = ops::execute(node.as_ref(), cmd, &mut payload, replies, cookie);
                (reply, payload)
            };
            let reply = match tokio::task::spawn_blocking(work).await {
                Ok((r, payload)) => {
                    if payload.capacity() > 0 {
                        pool.give(payload);
                    }
                    r
                }
                Err(e) => {
                    tracing::warn!(cookie, "I/O task failed: {e}");
                    replies.error(cookie, crate::proto::NbdError::Io, "internal error")
                }
            };
            if let Err(e) = send(&writer, &reply).await {
                tracing::debug!(cookie, "could not send reply: {e}");
                gone.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            drop(reply);
            drop(permit);
        });
    };
    while inflight.join_next().await.is_some() {}
    let _ = writer.lock().await.shutdown().await;
    result
}

/// Read the next request header; an error of kind `TimedOut` after `idle` without one.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    header: &mut [u8; REQUEST_LEN],
    idle: Option<Duration>,
) -> io::Result<()> {
    let Some(idle) = idle else {
        return rd.read_exact(header).await.map(drop);
    };
    match tokio::time::timeout(idle, rd.read_exact(header)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no request for {idle:?} (idle timeout)"),
        )),
    }
}

async fn send<S: AsyncWrite>(writer: &Writer<S>, bytes: &[u8]) -> io::Result<()> {
    let mut w = writer.lock().await;
    w.write_all(bytes).await?;
    w.flush().await
}
