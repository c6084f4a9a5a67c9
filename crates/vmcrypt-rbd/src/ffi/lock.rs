//! [`HeaderLock`]: an advisory RADOS lock that serialises changes of an encrypted
//! image's LUKS header between vmcrypt processes (and anything else that takes it).
//!
//! It is a `cls_lock` exclusive lock on the image's header object (`rbd_header.ID`), the
//! mechanism of `rbd lock add`, under its own lock name [`LOCK_NAME`] instead of
//! librbd's `rbd_lock`. librbd's exclusive lock (`rbd_lock` with the `exclusive-lock`
//! feature) belongs to whoever writes the data: taking it would make a running VM's
//! writes fail with EROFS for the length of a key change (measured on Pacific with
//! `rbd_lock_acquire`), and `rbd lock add` is refused while any client writes. A
//! separate name keeps writers running, as cryptsetup's metadata lock does for a device
//! in use, and still lets only one header change run at a time.
//!
//! The lock is taken for a limited time ([`lock_seconds`], 30 s by default) and renewed
//! while it is held (`lock_renew.rs`), so that a holder killed mid-way leaves a lock
//! that expires by itself instead of one that blocks every later change.
use super::lock_renew::{Held, Renewer};
use super::{Image, check, cstr};
use libc::{c_char, c_int};
use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_error::{Error, Result, bail};

/// The RADOS lock name on the header object.
pub const LOCK_NAME: &str = "vmcrypt_luks";

/// The environment variable that sets how long the lock lasts unless renewed.
pub const LOCK_SECONDS_ENV: &str = "VMCRYPT_RBD_LOCK_SECONDS";

/// How long the lock lasts unless renewed, by default.
const LOCK_SECONDS_DEFAULT: u64 = 30;

/// The header lock of one image, renewed while held, released on drop.
pub struct HeaderLock {
    held: Arc<Held>,
    renewer: Option<Renewer>,
}

impl HeaderLock {
    /// Fail unless the lock is still this process's: renewed in time (renewing it now
    /// if less than a third of its duration is left). A holder stopped for longer than
    /// the duration has lost it, and another change may have run meanwhile, so whatever
    /// it was about to write must not be written.
    pub fn ensure_held(&self) -> Result<()> {
        self.held.ensure()
    }
}

/// How long a lock lasts unless renewed: `VMCRYPT_RBD_LOCK_SECONDS` (2 to 3600) or
/// 30 s.
pub fn lock_seconds() -> Result<Duration> {
    let Ok(v) = std::env::var(LOCK_SECONDS_ENV) else {
        return Ok(Duration::from_secs(LOCK_SECONDS_DEFAULT));
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (2..=3600).contains(&n) => Ok(Duration::from_secs(n)),
        _ => bail!(
            Usage,
            "{LOCK_SECONDS_ENV}={v:?}: expected whole seconds from 2 to 3600"
        ),
    }
}

/// Who holds a lock, as `rados_list_lockers` reports it.
struct Locker {
    client: String,
    cookie: String,
    addr: String,
}

impl Image {
    /// The RADOS object holding the image's metadata (`rbd_header.ID`; `NAME.rbd` for
    /// an old format 1 image, which has no id).
    fn header_object(&self) -> Result<String> {
        let mut id = vec![0 as c_char; 64];
        // SAFETY: open handle; `id` is writable for the length passed.
        let r = unsafe { (self.api().rbd_get_id)(self.handle, id.as_mut_ptr(), id.len()) };
        if r == -libc::EINVAL {
            let image = self.name().rsplit('/').next().unwrap_or(self.name());
            return Ok(format!("{image}.rbd"));
        }
        check(r, || format!("id of rbd image {}", self.name()))?;
        let bytes: Vec<u8> = id
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Ok(format!("rbd_header.{}", String::from_utf8_lossy(&bytes)))
    }

    /// Take the header lock for `purpose` (e.g. `luks add-key`); a lock some other
    /// process holds is a `Busy` error naming it and how to remove a stale one.
    pub fn lock_header(&self, purpose: &str) -> Result<HeaderLock> {
        let duration = lock_seconds()?;
        let oid = self.header_object()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let cookie = format!(
            "vmcrypt {purpose}, pid {} on {}",
            std::process::id(),
            host.trim()
        );
        let (o, n, c) = (
            cstr(&oid, "object")?,
            cstr(LOCK_NAME, "lock")?,
            cstr(&cookie, "cookie")?,
        );
        let held = Held::new(self.pool.clone(), o, c, duration);
        let r = held.take();
        if r == -libc::EBUSY || r == -libc::EEXIST {
            return Err(self.held_error(&held.oid, &n, &oid, duration));
        }
        check(r, || format!("locking the LUKS header of {}", self.name()))?;
        let held = Arc::new(held);
        let renewer = match Renewer::start(held.clone()) {
            Ok(r) => r,
            Err(e) => {
                held.release();
                return Err(e);
            }
        };
        Ok(HeaderLock {
            renewer: Some(renewer),
            held,
        })
    }

    fn held_error(&self, o: &CString, n: &CString, oid: &str, duration: Duration) -> Error {
        let pool = &self.pool;
        let ns = pool
            .namespace
            .as_ref()
            .map(|ns| format!(" --namespace {ns}"))
            .unwrap_or_default();
        let held = match lockers(pool, o, n).ok().and_then(|v| v.into_iter().next()) {
            Some(l) => format!(
                "held by {} at {} (cookie '{}'); a lock vmcrypt took expires once its \
                 holder stops renewing it ({LOCK_SECONDS_ENV}, here {} s); if the holder \
                 is gone and the lock stays, remove it with: rados -p {}{ns} lock break {oid} {LOCK_NAME} {} \
                 --lock-cookie '{}'",
                l.client,
                l.addr,
                l.cookie,
                duration.as_secs(),
                pool.name,
                l.client,
                l.cookie
            ),
            None => "held by another client".to_string(),
        };
        Error::new(
            vmcrypt_error::ErrorKind::Busy,
            format!(
                "the LUKS header of rbd image {} is being changed elsewhere: lock {LOCK_NAME} \
                 on {oid} is {held}",
                self.name()
            ),
        )
    }
}

/// The holders of lock `n` on object `o`.
fn lockers(pool: &super::Pool, o: &CString, n: &CString) -> Result<Vec<Locker>> {
    let mut cap = 256usize;
    loop {
        let mut bufs = [
            vec![0u8; cap],
            vec![0u8; cap],
            vec![0u8; cap],
            vec![0u8; cap],
        ];
        let mut lens = [cap; 4];
        let mut exclusive: c_int = 0;
        let [tag, clients, cookies, addrs] = &mut bufs;
        let [tl, cl, kl, al] = &mut lens;
        // SAFETY: valid ioctx, NUL-terminated names; each buffer is writable for the
        // length passed with it, and librados updates the lengths.
        let r = unsafe {
            (pool.api.rados_list_lockers)(
                pool.ioctx,
                o.as_ptr(),
                n.as_ptr(),
                &mut exclusive,
                tag.as_mut_ptr().cast(),
                tl,
                clients.as_mut_ptr().cast(),
                cl,
                cookies.as_mut_ptr().cast(),
                kl,
                addrs.as_mut_ptr().cast(),
                al,
            )
        };
        if r == -(libc::ERANGE as isize) && cap < 1 << 20 {
            cap = lens.iter().copied().max().unwrap_or(cap).max(cap * 2);
            continue;
        }
        check(r.try_into().unwrap_or(c_int::MIN), || {
            "listing lockers".into()
        })?;
        let split = |b: &[u8], l: usize| -> Vec<String> {
            b[..l.min(b.len())]
                .split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let (c, k, a) = (split(clients, *cl), split(cookies, *kl), split(addrs, *al));
        return Ok(c
            .into_iter()
            .zip(k)
            .zip(a)
            .map(|((client, cookie), addr)| Locker {
                client,
                cookie,
                addr,
            })
            .collect());
    }
}

impl Drop for HeaderLock {
    fn drop(&mut self) {
        // Stop renewing first, so no renewal runs after the unlock.
        drop(self.renewer.take());
        self.held.release();
    }
}
