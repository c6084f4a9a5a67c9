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
use super::{Image, check, cstr};
use libc::{c_char, c_int};
use std::ffi::CString;
use std::sync::Arc;
use vmcrypt_error::{Error, Result};

/// The RADOS lock name on the header object.
pub const LOCK_NAME: &str = "vmcrypt_luks";

/// The header lock of one image, released on drop.
pub struct HeaderLock {
    pool: Arc<super::Pool>,
    oid: CString,
    cookie: CString,
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
        let api = self.api();
        // SAFETY: valid ioctx of the image's pool; NUL-terminated strings; a NULL
        // duration (held until released); no flags.
        let r = unsafe {
            (api.rados_lock_exclusive)(
                self.pool.ioctx,
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        if r == -libc::EBUSY || r == -libc::EEXIST {
            return Err(self.held_error(&o, &n, &oid));
        }
        check(r, || format!("locking the LUKS header of {}", self.name()))?;
        Ok(HeaderLock {
            pool: self.pool.clone(),
            oid: o,
            cookie: c,
        })
    }

    fn held_error(&self, o: &CString, n: &CString, oid: &str) -> Error {
        let pool = &self.pool;
        let ns = pool
            .namespace
            .as_ref()
            .map(|ns| format!(" --namespace {ns}"))
            .unwrap_or_default();
        let held = match lockers(pool, o, n).ok().and_then(|v| v.into_iter().next()) {
            Some(l) => format!(
                "held by {} at {} (cookie '{}'); if that process is gone, remove the lock \
                 with: rados -p {}{ns} lock break {oid} {LOCK_NAME} {} --lock-cookie '{}'",
                l.client, l.addr, l.cookie, pool.name, l.client, l.cookie
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
        let n = CString::new(LOCK_NAME).expect("no NUL in the lock name");
        // SAFETY: the pool (and its ioctx) is kept alive by the Arc; NUL-terminated
        // strings. A failed unlock leaves a lock that the next taker reports.
        unsafe {
            (self.pool.api.rados_unlock)(
                self.pool.ioctx,
                self.oid.as_ptr(),
                n.as_ptr(),
                self.cookie.as_ptr(),
            );
        }
    }
}
