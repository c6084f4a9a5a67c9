//! Replies of the requests a connection ran inline, sent together in one write.
//!
//! The connection's task appends each reply (with the budget it holds) to its
//! [`Outbox`] and sends the lot before it waits for anything the client might only
//! provide after reading them: before reading from the socket when no whole request is
//! buffered, and before waiting for budget. Several requests that arrived in one read
//! are thus answered in one write. A client that does not read its replies must not
//! stop the server from reading its requests (it may be blocked writing them), so when
//! the socket cannot take the whole batch at once the rest is finished by a task of its
//! own and the connection goes on reading.
use super::budget::Held;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

/// Send the batch once it holds this many bytes, even with more requests buffered.
pub(crate) const FLUSH_AT: usize = 128 << 10;

/// Larger batch buffers are freed after sending rather than kept for the next batch.
const KEEP_CAPACITY: usize = 256 << 10;

/// The socket's write side, shared by the connection and its pool tasks.
pub(crate) type Writer<W> = Arc<Mutex<W>>;

/// Unsent replies and the budget they hold.
#[derive(Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    held: Vec<Held>,
}

impl Outbox {
    /// Bytes waiting to be sent.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Where the next reply goes.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Keep `held` until the replies appended so far are sent.
    pub(crate) fn hold(&mut self, held: Held) {
        self.held.push(held);
    }

    /// Send everything. What the socket does not take at once is sent by a task in
    /// `tasks`, which sets `gone` if that fails. An error means the socket is broken.
    pub(crate) async fn send<W>(
        &mut self,
        writer: &Writer<W>,
        tasks: &mut JoinSet<()>,
        gone: &Arc<AtomicBool>,
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        if self.buf.is_empty() {
            self.held.clear();
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let held = std::mem::take(&mut self.held);
        let w = writer.clone();
        let mut sending: Pin<Box<_>> = Box::pin(async move {
            let mut w = w.lock().await;
            w.write_all(&buf).await?;
            w.flush().await?;
            drop(held);
            Ok::<_, io::Error>(buf)
        });
        match std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await {
            Poll::Ready(Ok(mut buf)) => {
                if buf.capacity() <= KEEP_CAPACITY {
                    buf.clear();
                    self.buf = buf;
                }
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => {
                let gone = gone.clone();
                tasks.spawn(async move {
                    if let Err(e) = sending.await {
                        tracing::debug!("could not send replies: {e}");
                        gone.store(true, Ordering::SeqCst);
                    }
                });
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::budget::Inflight;
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Two replies with budget held, one send: the bytes arrive in order in one write,
    /// the budget comes back, the buffer is kept for the next batch.
    #[tokio::test]
    async fn a_batch_goes_out_in_one_write_and_frees_its_budget() {
        let budget = Inflight::new(1 << 20);
        let conn = budget.connection();
        let (client, server) = tokio::io::duplex(1 << 16);
        let writer: Writer<_> = Arc::new(Mutex::new(server));
        let mut out = Outbox::default();
        let (mut tasks, gone) = (JoinSet::new(), Arc::new(AtomicBool::new(false)));
        out.buf().extend_from_slice(b"first ");
        out.hold(conn.acquire(100).await);
        out.buf().extend_from_slice(b"second");
        out.hold(conn.acquire(200).await);
        assert_eq!((out.len(), budget.used()), (12, 300));
        out.send(&writer, &mut tasks, &gone).await.unwrap();
        assert_eq!((out.len(), budget.used()), (0, 0));
        assert!(out.buf.capacity() >= 12 && tasks.is_empty());
        drop(writer);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first second");
    }

    /// A socket that cannot take the batch does not block the sender: a task finishes
    /// the write once the client reads, and only then gives the budget back.
    #[tokio::test]
    async fn a_full_socket_hands_the_rest_to_a_task() {
        let budget = Inflight::new(1 << 20);
        let conn = budget.connection();
        let (mut client, server) = tokio::io::duplex(64);
        let writer: Writer<_> = Arc::new(Mutex::new(server));
        let mut out = Outbox::default();
        let (mut tasks, gone) = (JoinSet::new(), Arc::new(AtomicBool::new(false)));
        out.buf().extend_from_slice(&[7u8; 1000]);
        out.hold(conn.acquire(1000).await);
        out.send(&writer, &mut tasks, &gone).await.unwrap();
        assert_eq!((out.len(), tasks.len(), budget.used()), (0, 1, 1000));
        let mut got = vec![0u8; 1000];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [7u8; 1000]);
        while tasks.join_next().await.is_some() {}
        assert_eq!(budget.used(), 0);
        assert!(!gone.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_broken_socket_is_an_error() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let writer: Writer<_> = Arc::new(Mutex::new(server));
        let mut out = Outbox::default();
        let (mut tasks, gone) = (JoinSet::new(), Arc::new(AtomicBool::new(false)));
        out.buf().extend_from_slice(b"reply");
        assert!(out.send(&writer, &mut tasks, &gone).await.is_err());
    }
}
