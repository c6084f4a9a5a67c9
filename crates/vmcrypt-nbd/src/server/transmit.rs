//! The transmission phase of one connection: read requests in order and run them.
//!
//! READs, WRITEs and FLUSHes to a node with an asynchronous path (rbd) are submitted
//! to it and answered when it calls back (see [`super::aio`]), whatever their size.
//! Otherwise small READs and WRITEs run inline on the connection's task while the node answers
//! them quickly (see [`super::pace`]); their replies are collected in an
//! [`Outbox`] and sent together once no further whole request is buffered. Every other
//! request, and small ones while the node is slow, runs on tokio's blocking pool in a
//! task of its own that writes its reply under the connection's writer lock, so several
//! requests are in flight while every reply goes out whole. Replies may thus leave in
//! another order than their requests came, as NBD allows.
//!
//! A byte budget (see [`super::budget`]), per connection and server-wide, bounds the
//! memory held by in-flight requests, inline ones until their replies are sent. A
//! client that sends no request for the idle timeout (when set) is disconnected. When
//! the loop ends (the client left or broke the protocol, or the server is stopping and
//! the `stopping` watch turned true) the replies of requests already read are sent and
//! requests on the pool finish before the socket is shut down.
use super::budget::ConnBudget;
use super::conn::{Limits, stopped, violation};
use super::outbox::{self, Outbox, Writer};
use super::pace::{self, Pace};
use super::{Export, aio, ops};
use crate::proto::handshake::Negotiated;
use crate::proto::transmission::{Command, REQUEST_LEN, Replies, Request, Session, validate};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf};
use tokio::io::{WriteHalf, split};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use vmcrypt_block::BlockDriver;

/// Most bytes of idle WRITE payload buffers a connection keeps for reuse.
const POOL_BYTES: usize = 8 << 20;

/// Larger WRITE buffers are freed after use rather than pooled, so memory goes back
/// to the allocator (and, being large, to the OS) once the load is gone.
const POOL_MAX_BUFFER: usize = 1 << 20;

/// Longest header in front of READ data (a structured OFFSET_DATA chunk).
const REPLY_HEADER_MAX: usize = 28;

/// Bytes read from the socket at once: a queue of small requests arrives in one read.
const READ_BUFFER: usize = 64 << 10;

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
        if buf.capacity() == 0 {
            return;
        }
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

/// Bytes a command holds while in flight (at least 1 so every request takes a permit).
fn cost(cmd: &Command) -> u32 {
    match *cmd {
        Command::Read { length, .. } | Command::Write { length, .. } => length.max(1),
        _ => 1,
    }
}

/// One connection in the transmission phase.
struct Transmission<S> {
    rd: BufReader<ReadHalf<S>>,
    writer: Writer<WriteHalf<S>>,
    outbox: Outbox,
    /// Pool tasks and replies still being sent.
    tasks: JoinSet<()>,
    /// Set when a reply cannot be written: the client is gone, so requests it queued
    /// are not run for nothing.
    gone: Arc<AtomicBool>,
    budget: ConnBudget,
    pool: Pool,
    pace: Pace,
    node: Arc<dyn BlockDriver>,
    replies: Replies,
    session: Session,
    idle: Option<Duration>,
    /// Requests run inline, on the pool and asynchronously, for the log.
    counts: (u64, u64, u64),
}

/// Serve requests on `stream` until the client disconnects or misbehaves, or the server
/// stops; then send what is left and shut the socket down.
pub(crate) async fn transmit<S>(
    stream: S,
    export: &Export,
    n: Negotiated,
    mut stopping: watch::Receiver<bool>,
    limits: &Limits,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = split(stream);
    let mut t = Transmission {
        rd: BufReader::with_capacity(READ_BUFFER, rd),
        writer: Arc::new(Mutex::new(wr)),
        outbox: Outbox::default(),
        tasks: JoinSet::new(),
        gone: Arc::new(AtomicBool::new(false)),
        budget: limits.inflight.connection(),
        pool: Pool::default(),
        pace: Pace::default(),
        node: export.node.clone(),
        replies: Replies {
            structured: n.structured,
        },
        session: Session {
            size: export.node.size(),
            read_only: export.read_only,
            structured: n.structured,
            base_allocation: n.base_allocation,
        },
        idle: limits.idle,
        counts: (0, 0, 0),
    };
    let result = t.run(&mut stopping).await;
    let sent = t.send().await;
    while t.tasks.join_next().await.is_some() {}
    let _ = t.writer.lock().await.shutdown().await;
    tracing::info!(
        inline = t.counts.0,
        on_pool = t.counts.1,
        asynchronous = t.counts.2,
        "requests run"
    );
    result.and(sent)
}

impl<S> Transmission<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Send the replies of inline requests.
    async fn send(&mut self) -> io::Result<()> {
        self.outbox
            .send(&self.writer, &mut self.tasks, &self.gone)
            .await
    }

    /// Send the replies of inline requests unless `n` more bytes are buffered (so
    /// reading them cannot wait for the client) and the batch is still small.
    async fn send_unless_buffered(&mut self, n: usize) -> io::Result<()> {
        if self.rd.buffer().len() < n || self.outbox.len() >= outbox::FLUSH_AT {
            self.send().await?;
        }
        Ok(())
    }

    /// The request loop; `Ok` when the client disconnected or the server is stopping.
    async fn run(&mut self, stopping: &mut watch::Receiver<bool>) -> io::Result<()> {
        loop {
            // Reap finished tasks so the set does not grow without bound.
            while self.tasks.try_join_next().is_some() {}
            self.send_unless_buffered(REQUEST_LEN).await?;
            let mut header = [0u8; REQUEST_LEN];
            let read = tokio::select! {
                biased;
                () = stopped(stopping) => {
                    tracing::info!(in_flight = self.tasks.len(), "server stopping: reading no more requests");
                    return Ok(());
                }
                r = read_header(&mut self.rd, &mut header, self.idle) => r,
            };
            match read {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                r => r?,
            }
            let req = Request::decode(&header).map_err(violation)?;
            tracing::debug!(
                cookie = req.cookie,
                kind = req.kind,
                offset = req.offset,
                length = req.length,
                flags = req.flags,
                "request"
            );
            let cmd = match validate(&req, &self.session).map_err(violation)? {
                Err(rej) => {
                    tracing::debug!(cookie = req.cookie, error = ?rej.error, "rejected: {}", rej.message);
                    self.send_unless_buffered(rej.drain as usize).await?;
                    let drained = tokio::io::copy(
                        &mut (&mut self.rd).take(u64::from(rej.drain)),
                        &mut tokio::io::sink(),
                    )
                    .await?;
                    if drained < u64::from(rej.drain) {
                        return Ok(());
                    }
                    let reply = self.replies.error(req.cookie, rej.error, &rej.message);
                    self.outbox.buf().extend_from_slice(&reply);
                    continue;
                }
                Ok(Command::Disconnect) => return Ok(()),
                Ok(cmd) => cmd,
            };
            if !self.request(&req, cmd).await? {
                return Ok(());
            }
        }
    }

    /// Read the payload of a valid request and run it; `false` when the client is gone.
    async fn request(&mut self, req: &Request, cmd: Command) -> io::Result<bool> {
        let permit = match self.budget.try_acquire(cost(&cmd)) {
            Some(p) => p,
            None => {
                // The budget comes back as replies are sent, ours included.
                self.send().await?;
                self.budget.acquire(cost(&cmd)).await
            }
        };
        if self.gone.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let n = req.payload_len() as usize;
        let mut payload = Vec::new();
        if n > 0 {
            self.send_unless_buffered(n).await?;
            payload = self.pool.take();
            read_payload(&mut self.rd, &mut payload, n).await?;
        }
        let shape = (self.replies, req.cookie);
        let mut payload = match aio::submit(&self.node, cmd, payload, shape, REPLY_HEADER_MAX) {
            Ok(pending) => {
                self.counts.2 += 1;
                let (writer, pool, gone) =
                    (self.writer.clone(), self.pool.clone(), self.gone.clone());
                let cookie = req.cookie;
                self.tasks.spawn(async move {
                    let (reply, payload) = pending.await;
                    pool.give(payload);
                    send_reply(&writer, &gone, cookie, &reply).await;
                    drop(permit);
                });
                return Ok(true);
            }
            Err(payload) => payload,
        };
        let small = pace::small(&cmd);
        if small && self.pace.inline() {
            let t0 = Instant::now();
            let out = self.outbox.buf();
            ops::execute(
                self.node.as_ref(),
                cmd,
                &mut payload,
                self.replies,
                req.cookie,
                out,
            );
            self.pace.record(t0.elapsed());
            self.outbox.hold(permit);
            self.pool.give(payload);
            self.counts.0 += 1;
            return Ok(true);
        }
        self.counts.1 += 1;
        let mut out = Vec::new();
        if let Command::Read { length, .. } = cmd {
            // Allocated here on a runtime worker rather than on one of the many
            // blocking threads, so freed reply buffers stay in few malloc arenas and
            // memory goes back once the load is gone.
            out = Vec::with_capacity(REPLY_HEADER_MAX + length as usize);
        }
        let (node, writer, pool, gone) = (
            self.node.clone(),
            self.writer.clone(),
            self.pool.clone(),
            self.gone.clone(),
        );
        let (replies, cookie) = (self.replies, req.cookie);
        let pace = small.then(|| self.pace.clone());
        self.tasks.spawn(async move {
            let work = move || {
                let t0 = Instant::now();
                ops::execute(node.as_ref(), cmd, &mut payload, replies, cookie, &mut out);
                if let Some(p) = pace {
                    p.record(t0.elapsed());
                }
                (out, payload)
            };
            let reply = match tokio::task::spawn_blocking(work).await {
                Ok((r, payload)) => {
                    pool.give(payload);
                    r
                }
                Err(e) => {
                    tracing::warn!(cookie, "I/O task failed: {e}");
                    replies.error(cookie, crate::proto::NbdError::Io, "internal error")
                }
            };
            send_reply(&writer, &gone, cookie, &reply).await;
            drop(reply);
            drop(permit);
        });
        Ok(true)
    }
}

/// Write one whole reply under the writer lock; a failure marks the client `gone`.
async fn send_reply<W: AsyncWrite + Unpin>(
    writer: &Writer<W>,
    gone: &AtomicBool,
    cookie: u64,
    reply: &[u8],
) {
    let mut w = writer.lock().await;
    if let Err(e) = async {
        w.write_all(reply).await?;
        w.flush().await
    }
    .await
    {
        tracing::debug!(cookie, "could not send reply: {e}");
        gone.store(true, Ordering::SeqCst);
    }
}
