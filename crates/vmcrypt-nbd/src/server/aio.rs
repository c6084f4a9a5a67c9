//! Requests run through a node's asynchronous path ([`AsyncIo`], offered by the rbd
//! node): READ, WRITE and FLUSH are submitted from the connection's task and their
//! replies built when the node calls back, through a oneshot channel that wakes the
//! task waiting for it. No thread blocks per request in flight, so a request costs a
//! wake-up of a runtime worker instead of a blocking-pool thread's sleep and wake-up.
//!
//! The node owns a request's buffer until it calls back, so a client that disconnects
//! with requests in flight only leaves replies nobody reads; the connection waits for
//! them before it closes. A request the node declines (see [`AsyncIo`]) gets its buffer
//! back and runs the blocking way.
use super::ops;
use crate::proto::transmission::{Command, Replies};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::oneshot;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::driver::IoDone;
use vmcrypt_error::{Error, ErrorKind, Result};

/// What a node reports: the result and the buffer back.
type Answer = (Result<()>, Vec<u8>);

/// A submitted request: resolves to its reply bytes and the WRITE payload buffer (for
/// reuse; empty for the others).
pub(crate) type Pending = Pin<Box<dyn Future<Output = (Vec<u8>, Vec<u8>)> + Send>>;

fn channel() -> (IoDone, oneshot::Receiver<Answer>) {
    let (tx, rx) = oneshot::channel();
    let done: IoDone = Box::new(move |r, buf| {
        // The receiver is gone only if its task was aborted; the buffer is freed here.
        let _ = tx.send((r, buf));
    });
    (done, rx)
}

async fn answer(rx: oneshot::Receiver<Answer>) -> Answer {
    rx.await.unwrap_or_else(|_| {
        let e = Error::new(
            ErrorKind::Io,
            "an asynchronous request ended without an answer",
        );
        (Err(e), Vec::new())
    })
}

fn reply(replies: Replies, cookie: u64, r: Result<()>) -> Vec<u8> {
    match r {
        Ok(()) => {
            let mut out = Vec::new();
            replies.push_ok(cookie, &mut out);
            out
        }
        Err(e) => ops::error_reply(replies, cookie, &e),
    }
}

/// Submit `cmd` through `node`'s asynchronous path; `Err` gives `payload` back when the
/// node has none, declines the request, or `cmd` is not a READ, WRITE or FLUSH. A READ
/// reply buffer gets `header_max` bytes of room for its header.
pub(crate) fn submit(
    node: &Arc<dyn BlockDriver>,
    cmd: Command,
    payload: Vec<u8>,
    (replies, cookie): (Replies, u64),
    header_max: usize,
) -> std::result::Result<Pending, Vec<u8>> {
    let Some(aio) = node.as_async() else {
        return Err(payload);
    };
    match cmd {
        Command::Read { offset, length } if length > 0 => {
            let mut out = Vec::with_capacity(header_max + length as usize);
            replies.push_read_header(cookie, offset, length, &mut out);
            let start = out.len();
            out.resize(start + length as usize, 0);
            let (done, rx) = channel();
            if aio.submit_read(out, start, offset, done).is_err() {
                return Err(payload);
            }
            Ok(Box::pin(async move {
                let (r, mut out) = answer(rx).await;
                if let Err(e) = r {
                    out = ops::error_reply(replies, cookie, &e);
                }
                (out, payload)
            }))
        }
        Command::Write { offset, fua, .. } => {
            let (done, rx) = channel();
            if let Err(d) = aio.submit_write(payload, offset, done) {
                return Err(d.buf);
            }
            let node = node.clone();
            Ok(Box::pin(async move {
                let (mut r, payload) = answer(rx).await;
                if r.is_ok() && fua {
                    r = flush(node).await;
                }
                (reply(replies, cookie, r), payload)
            }))
        }
        Command::Flush => {
            let node = node.clone();
            Ok(Box::pin(async move {
                (reply(replies, cookie, flush(node).await), payload)
            }))
        }
        _ => Err(payload),
    }
}

/// Flush `node`, asynchronously if it can, else on the blocking pool.
async fn flush(node: Arc<dyn BlockDriver>) -> Result<()> {
    let (done, rx) = channel();
    if let Some(Ok(())) = node.as_async().map(|a| a.submit_flush(done)) {
        return answer(rx).await.0;
    }
    tokio::task::spawn_blocking(move || node.flush())
        .await
        .unwrap_or_else(|e| Err(Error::new(ErrorKind::Io, format!("flush task failed: {e}"))))
}
