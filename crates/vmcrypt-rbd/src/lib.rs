//! librbd and librados, loaded at run time with `dlopen`, behind a small safe API.
//!
//! vmcrypt builds and runs on hosts without Ceph: nothing links against librbd. The
//! first [`Pool::connect`] loads `librados.so.2` and `librbd.so.1`; when they are
//! missing the error names the Debian packages to install (`librbd1`, `librados2`).
//!
//! This crate is the only place in vmcrypt with foreign calls, and all of them live in
//! the one module `ffi` (each `unsafe` block with a SAFETY comment). What it exposes
//! is safe: a connected [`Pool`] (cluster + I/O context, optionally a namespace), and an
//! open [`Image`] with positioned reads and writes that are split into many librbd
//! asynchronous requests in flight at once, reads, writes and flushes that call an
//! [`AioDone`] from librbd's completion callback instead of waiting (the request owns
//! its buffer until then), flush, discard, write-zeroes, resize,
//! allocation extents (`rbd_diff_iterate2`), snapshots and clones.
//!
//! It knows nothing of vmcrypt's block graph: `vmcrypt-block`'s `rbd` driver is built
//! on it, so the trust boundary (foreign code) stays out of the `forbid(unsafe_code)`
//! crates.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ffi;

pub use ffi::{AioDone, HeaderLock, Image, ImageInfo, LOCK_SECONDS_ENV, ParentSpec, Pool};

/// How to reach a pool: QEMU's rbd options `conf=`, `user=`, the key from `key-secret=`,
/// `pool=` and `namespace=`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions<'a> {
    /// A ceph.conf path; without it librados's default search (`$CEPH_CONF`,
    /// `/etc/ceph/ceph.conf`, ...).
    pub conf: Option<&'a str>,
    /// The cephx user without `client.` (default `admin`).
    pub user: Option<&'a str>,
    /// The cephx key (base64, as in a keyring); without it the keyring from the conf.
    pub key: Option<&'a [u8]>,
    pub pool: &'a str,
    pub namespace: Option<&'a str>,
}

/// Turn a negative errno from librados/librbd into vmcrypt's error.
pub(crate) fn errno_error(ret: i64, what: &str) -> vmcrypt_error::Error {
    use vmcrypt_error::{Error, ErrorKind};
    let errno = (-ret) as i32;
    let os = std::io::Error::from_raw_os_error(errno);
    let kind = match errno {
        libc::ENOENT => ErrorKind::NotFound,
        libc::EEXIST | libc::EBUSY => ErrorKind::Busy,
        libc::EROFS => ErrorKind::ReadOnly,
        libc::EINVAL => ErrorKind::Usage,
        libc::EOPNOTSUPP => ErrorKind::Unsupported,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what}: {os}"))
}
