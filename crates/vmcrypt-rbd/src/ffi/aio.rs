//! Requests whose end librbd reports through a callback: nothing waits for them.
//!
//! A submitted request owns everything it needs until librbd calls [`aio_done`]: a
//! boxed [`Pending`] holds the buffer librbd reads into or writes from and the caller's
//! `done`, and is reclaimed exactly once, in the callback (or at once when the submit
//! itself fails). So the buffer outlives the request whatever happens to the caller
//! (a client that disconnects, a future that is dropped). The image counts its
//! requests in flight ([`Inflight`]) and its `Drop` waits for them before closing.
//!
//! The callback runs on a librbd thread: it must not unwind into C, so `done` runs
//! under `catch_unwind`; a `done` must be short (it holds up librbd's completions) and
//! must not own the [`super::Image`] (its `Drop` would wait for the request that is
//! calling it).
use super::{Api, Image, Ptr, check};
use crate::errno_error;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use vmcrypt_error::Result;

/// What an asynchronous request calls when it ends: its result and its buffer back.
pub type AioDone = Box<dyn FnOnce(Result<()>, Vec<u8>) + Send>;

/// The number of an image's requests in flight, and a wait for none.
#[derive(Default)]
pub(super) struct Inflight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Inflight {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn remove(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    /// Wait until no request is in flight.
    pub(super) fn wait_idle(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One request in flight: owned by librbd (through the callback argument) until it ends.
struct Pending {
    api: &'static Api,
    buf: Vec<u8>,
    done: AioDone,
    what: &'static str,
    image: Arc<str>,
    inflight: Arc<Inflight>,
}

impl Pending {
    /// Report the request's return value `ret` to `done`; then it no longer counts.
    fn finish(self, ret: isize) {
        let Pending {
            buf,
            done,
            what,
            image,
            inflight,
            ..
        } = self;
        let result = if ret < 0 {
            Err(errno_error(ret as i64, &format!("{what} on {image}")))
        } else {
            Ok(())
        };
        if catch_unwind(AssertUnwindSafe(move || done(result, buf))).is_err() {
            // The panic message was printed by the hook; nothing may unwind into librbd.
            eprintln!("vmcrypt: an rbd {what} completion panicked");
        }
        inflight.remove();
    }
}

/// librbd's completion callback (`rbd_callback_t`) for every asynchronous request.
extern "C" fn aio_done(c: Ptr, arg: Ptr) {
    // SAFETY: `arg` is the `Box<Pending>` leaked by `Image::submit` for this request;
    // librbd calls back exactly once per completion, so it is reclaimed exactly once.
    let pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    let api = pending.api;
    // SAFETY: `c` is this request's completion, complete now; nothing else holds it, so
    // it is released exactly once, here (as QEMU's rbd driver does in its callback).
    let ret = unsafe {
        let ret = (api.rbd_aio_get_return_value)(c);
        (api.rbd_aio_release)(c);
        ret
    };
    pending.finish(ret);
}

/// Which request to submit.
#[derive(Clone, Copy)]
enum Op {
    Read { offset: u64, start: usize },
    Write { offset: u64, start: usize },
    Flush,
}

impl Image {
    /// Read `buf.len() - start` bytes at `offset` into `buf[start..]`; `done` gets the
    /// result and `buf` when librbd completes (possibly before this returns, on this or
    /// another thread).
    pub fn submit_read(&self, buf: Vec<u8>, start: usize, offset: u64, done: AioDone) {
        self.submit(Op::Read { offset, start }, buf, done, "read");
    }

    /// Write `buf[start..]` at `offset`; `done` gets the result and `buf` back.
    pub fn submit_write(&self, buf: Vec<u8>, start: usize, offset: u64, done: AioDone) {
        self.submit(Op::Write { offset, start }, buf, done, "write");
    }

    /// Make every completed write durable; `done` gets the result (and an empty buffer).
    pub fn submit_flush(&self, done: AioDone) {
        self.submit(Op::Flush, Vec::new(), done, "flush");
    }

    fn submit(&self, op: Op, mut buf: Vec<u8>, done: AioDone, what: &'static str) {
        let api = self.api();
        let start = match op {
            Op::Read { start, .. } | Op::Write { start, .. } => start.min(buf.len()),
            Op::Flush => 0,
        };
        let len = buf.len() - start;
        // The heap block of a Vec does not move when the Vec does.
        let data = buf[start..].as_mut_ptr();
        let pending = Box::new(Pending {
            api,
            buf,
            done,
            what,
            image: self.shared_name.clone(),
            inflight: self.inflight.clone(),
        });
        let mut c: Ptr = std::ptr::null_mut();
        let arg = Box::into_raw(pending);
        // SAFETY: `aio_done` has the `rbd_callback_t` signature; `arg` stays valid until
        // the callback reclaims it; `c` is a valid out-pointer.
        let r = unsafe { (api.rbd_aio_create_completion)(arg.cast(), aio_done as Ptr, &mut c) };
        if let Err(e) = check(r, || "creating a librbd completion".into()) {
            // SAFETY: not submitted, so librbd never saw `arg`: reclaimed once, here.
            let p = unsafe { Box::from_raw(arg) };
            return (p.done)(Err(e), p.buf);
        }
        self.inflight.add();
        let h = self.handle;
        // SAFETY: open handle (Drop waits for requests in flight before closing it),
        // live completion; `data..data+len` lies in the buffer owned by the boxed
        // Pending, which only the callback frees, after the request ended.
        let r = unsafe {
            match op {
                Op::Read { offset, .. } => (api.rbd_aio_read)(h, offset, len, data.cast(), c),
                Op::Write { offset, .. } => (api.rbd_aio_write)(h, offset, len, data.cast(), c),
                Op::Flush => (api.rbd_aio_flush)(h, c),
            }
        };
        if r < 0 {
            // SAFETY: the submit failed, so librbd will not call back: the completion
            // and `arg` are released here, once.
            let p = unsafe {
                (api.rbd_aio_release)(c);
                Box::from_raw(arg)
            };
            p.finish(r as isize);
        }
    }
}
