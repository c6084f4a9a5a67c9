//! The time-limited side of the header lock: [`Held`] takes, renews and releases the
//! RADOS lock (`rados_lock_exclusive` with a duration; `cls_lock` drops a locker whose
//! time is up the next time anyone looks at the lock), and [`Renewer`] is the thread
//! that renews it every third of its duration while the lock is held.
//!
//! A renewal asks for `LIBRADOS_LOCK_FLAG_MUST_RENEW`: it fails (ENOENT) once the lock
//! has expired, even if nobody took it since, because another change may have run and
//! ended in between. From then on the lock counts as lost and [`Held::ensure`] refuses.
use super::lock::LOCK_NAME;
use super::{LIBRADOS_LOCK_FLAG_MUST_RENEW, Pool};
use crate::errno_error;
use std::ffi::CString;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmcrypt_error::{Error, ErrorKind, Result};

/// A taken lock: the object, the cookie, how long each taking lasts, and until when it
/// is known to be ours.
pub(super) struct Held {
    pool: Arc<Pool>,
    pub(super) oid: CString,
    cookie: CString,
    duration: Duration,
    state: Mutex<State>,
}

struct State {
    /// When the last successful taking or renewal was sent, plus the duration: the OSD
    /// computes the expiry from when it ran the request, which is no earlier.
    valid_until: Instant,
    /// Why the lock is no longer ours, once it is not.
    lost: Option<String>,
}

impl Held {
    pub(super) fn new(pool: Arc<Pool>, oid: CString, cookie: CString, duration: Duration) -> Held {
        Held {
            pool,
            oid,
            cookie,
            duration,
            state: Mutex::new(State {
                valid_until: Instant::now(),
                lost: None,
            }),
        }
    }

    /// Take the lock (no renewal flag); librados's return code.
    pub(super) fn take(&self) -> libc::c_int {
        let sent = Instant::now();
        let r = self.lock_call(0);
        if r == 0 {
            self.state().valid_until = sent + self.duration;
        }
        r
    }

    /// Renew the lock for another duration; on failure it is lost for good.
    fn renew(&self, state: &mut State) -> Result<()> {
        if let Some(why) = &state.lost {
            return Err(Error::new(ErrorKind::Busy, why.clone()));
        }
        let sent = Instant::now();
        let r = self.lock_call(LIBRADOS_LOCK_FLAG_MUST_RENEW);
        if r == 0 {
            state.valid_until = sent + self.duration;
            return Ok(());
        }
        let why = format!(
            "lost the LUKS header lock {LOCK_NAME} on {}: it was not renewed within {} s \
             (was this process stopped?) and another header change may have run since; \
             nothing more is written",
            self.oid.to_string_lossy(),
            self.duration.as_secs()
        );
        let e = errno_error(r.into(), &why);
        state.lost = Some(e.to_string());
        Err(Error::new(ErrorKind::Busy, why))
    }

    /// Fail if the lock is lost; renew it now if less than a third of its time is left.
    pub(super) fn ensure(&self) -> Result<()> {
        let mut state = self.state();
        if state.lost.is_none()
            && state.valid_until.saturating_duration_since(Instant::now()) > self.duration / 3
        {
            return Ok(());
        }
        self.renew(&mut state)
    }

    /// Unlock (a lock already lost is not ours to remove: librados answers ENOENT or
    /// EBUSY and nothing changes).
    pub(super) fn release(&self) {
        let n = CString::new(LOCK_NAME).expect("no NUL in the lock name");
        // SAFETY: the pool (and its ioctx) is kept alive by the Arc; NUL-terminated
        // strings. A failed unlock leaves a lock that expires by itself.
        unsafe {
            (self.pool.api.rados_unlock)(
                self.pool.ioctx,
                self.oid.as_ptr(),
                n.as_ptr(),
                self.cookie.as_ptr(),
            );
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `rados_lock_exclusive` for the duration with `flags`.
    fn lock_call(&self, flags: u8) -> libc::c_int {
        let n = CString::new(LOCK_NAME).expect("no NUL in the lock name");
        let mut tv = libc::timeval {
            tv_sec: self.duration.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: valid ioctx kept alive by the Arc; NUL-terminated strings; `tv` is a
        // live timeval for the call (librados copies it).
        unsafe {
            (self.pool.api.rados_lock_exclusive)(
                self.pool.ioctx,
                self.oid.as_ptr(),
                n.as_ptr(),
                self.cookie.as_ptr(),
                self.cookie.as_ptr(),
                &mut tv,
                flags,
            )
        }
    }
}

/// The thread renewing a [`Held`] lock; stopped (and joined) on drop.
pub(super) struct Renewer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Renewer {
    pub(super) fn start(held: Arc<Held>) -> Result<Renewer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let every = held.duration / 3;
        let thread = std::thread::Builder::new()
            .name("rbd-lock-renew".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let mut state = held.state();
                    if held.renew(&mut state).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "starting the thread that renews the header lock",
                )
                .with_source(e)
            })?;
        Ok(Renewer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
