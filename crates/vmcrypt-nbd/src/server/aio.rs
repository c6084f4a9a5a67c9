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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::transmission::simple_reply;
    use vmcrypt_block::driver::{AsyncIo, Declined};
    use vmcrypt_block::drivers::mem::MemDriver;

    /// A memory node whose asynchronous requests end on another thread, later ones
    /// first (each waits less than the one before), and which declines odd offsets.
    struct Late {
        mem: Arc<MemDriver>,
        delay: std::sync::atomic::AtomicU64,
    }

    impl Late {
        fn later(&self, job: impl FnOnce() + Send + 'static) {
            let ms = self.delay.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                job();
            });
        }
    }

    impl AsyncIo for Late {
        fn submit_read(
            &self,
            mut buf: Vec<u8>,
            start: usize,
            offset: u64,
            done: IoDone,
        ) -> std::result::Result<(), Declined> {
            if offset % 2 == 1 {
                return Err(Declined { buf, done });
            }
            let mem = self.mem.clone();
            self.later(move || {
                let r = mem.read_at(&mut buf[start..], offset);
                done(r, buf)
            });
            Ok(())
        }
        fn submit_write(
            &self,
            buf: Vec<u8>,
            offset: u64,
            done: IoDone,
        ) -> std::result::Result<(), Declined> {
            let mem = self.mem.clone();
            self.later(move || {
                let r = mem.write_at(&buf, offset);
                done(r, buf)
            });
            Ok(())
        }
        fn submit_flush(&self, done: IoDone) -> std::result::Result<(), Declined> {
            done(Ok(()), Vec::new());
            Ok(())
        }
    }

    impl BlockDriver for Late {
        fn driver_name(&self) -> &'static str {
            "late"
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn size(&self) -> u64 {
            self.mem.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.mem.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.mem.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn as_async(&self) -> Option<&dyn AsyncIo> {
            Some(self)
        }
    }

    const SIMPLE: Replies = Replies { structured: false };

    #[tokio::test]
    async fn replies_come_from_the_nodes_callbacks_in_any_order() {
        let mem = Arc::new(MemDriver::new(vec![0u8; 64 * 1024]));
        let node: Arc<dyn BlockDriver> = Arc::new(Late {
            mem: mem.clone(),
            delay: std::sync::atomic::AtomicU64::new(40),
        });
        let mut writes = Vec::new();
        for i in 0..16u64 {
            let cmd = Command::Write {
                offset: i * 4096,
                length: 4096,
                fua: i == 3,
            };
            let p = submit(&node, cmd, vec![i as u8 + 1; 4096], (SIMPLE, i), 28);
            writes.push(p.unwrap_or_else(|_| panic!("write {i} declined")));
        }
        for (i, w) in writes.into_iter().enumerate() {
            let (reply, payload) = w.await;
            assert_eq!(reply, simple_reply(i as u64, 0));
            assert_eq!(payload.len(), 4096, "the payload buffer comes back");
        }
        let read = Command::Read {
            offset: 5 * 4096,
            length: 8192,
        };
        let p = submit(&node, read, Vec::new(), (SIMPLE, 99), 28).unwrap_or_else(|_| panic!());
        let (reply, _) = p.await;
        assert_eq!(&reply[..16], &simple_reply(99, 0));
        assert!(reply[16..4096 + 16].iter().all(|&b| b == 6));
        assert!(reply[4096 + 16..].iter().all(|&b| b == 7));
        assert!(mem.snapshot()[15 * 4096..].iter().all(|&b| b == 16));
        // Declined: the request comes back to run the blocking way.
        let odd = Command::Read {
            offset: 1,
            length: 10,
        };
        assert!(submit(&node, odd, Vec::new(), (SIMPLE, 5), 28).is_err());
        assert!(submit(&node, Command::Cache, Vec::new(), (SIMPLE, 6), 28).is_err());
        // A read past the end is the node's error, as an error reply.
        let past = Command::Read {
            offset: 64 * 1024,
            length: 4096,
        };
        let p = submit(&node, past, Vec::new(), (SIMPLE, 7), 28).unwrap_or_else(|_| panic!());
        let (reply, _) = p.await;
        assert_eq!(&reply[..8], &simple_reply(7, 22)[..8], "EINVAL");
        assert_eq!(reply.len(), 16, "no data after an error");
    }
}
