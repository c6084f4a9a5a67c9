//! Every foreign call of vmcrypt: `dlopen` of librados/librbd, the table of the
//! functions used, and the safe wrappers [`Pool`] and [`Image`] over them.
//!
//! Handles are raw pointers owned by exactly one wrapper and released in its `Drop`.
//! Buffers handed to asynchronous requests are borrowed for the whole call that
//! submits them: every submitted completion is waited for (in [`Completion`]'s `Drop`,
//! so also on an early return) before the borrow ends.
use crate::{ConnectOptions, errno_error};
use libc::{c_char, c_int, c_void};
use std::ffi::{CStr, CString};
use std::sync::{Arc, OnceLock};
use vmcrypt_error::{Error, Result};

mod aio;
mod lock;
mod lock_renew;
pub use aio::AioDone;
pub use lock::{HeaderLock, LOCK_SECONDS_ENV};

/// `LIBRADOS_LOCK_FLAG_MUST_RENEW` (librados.h): renew a lock the caller holds, or fail
/// with ENOENT if it does not hold it any more.
const LIBRADOS_LOCK_FLAG_MUST_RENEW: u8 = 1 << 1;

type Ptr = *mut c_void;
type DiffCb = extern "C" fn(u64, usize, c_int, Ptr) -> c_int;

/// A library opened with `dlopen`, never closed (its functions live in a static table).
struct Lib(Ptr);

// SAFETY: a dlopen handle is a process-wide token; dlsym on it is thread-safe.
unsafe impl Send for Lib {}
// SAFETY: as above, the handle is only passed to dlsym.
unsafe impl Sync for Lib {}

impl Lib {
    fn open(name: &str, package: &str) -> std::result::Result<Lib, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: `c` is a valid NUL-terminated string; dlopen has no other precondition.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(format!(
                "cannot load {name}, needed for rbd images: install Ceph's client library \
                 (Debian/Ubuntu: apt-get install {package})"
            ));
        }
        Ok(Lib(h))
    }

    fn sym(&self, name: &CStr) -> Ptr {
        // SAFETY: the handle came from dlopen and is never closed; `name` is NUL-terminated.
        unsafe { libc::dlsym(self.0, name.as_ptr()) }
    }
}

macro_rules! api {
    ($($name:ident : fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The librados/librbd functions vmcrypt calls.
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            _libs: [Lib; 2],
        }

        impl Api {
            fn load() -> std::result::Result<Api, String> {
                let rados = Lib::open("librados.so.2", "librados2")?;
                let rbd = Lib::open("librbd.so.1", "librbd1")?;
                Ok(Api {
                    $($name: {
                        let name = concat!(stringify!($name), "\0");
                        let cname = CStr::from_bytes_with_nul(name.as_bytes()).unwrap();
                        let mut p = rbd.sym(cname);
                        if p.is_null() {
                            p = rados.sym(cname);
                        }
                        if p.is_null() {
                            return Err(format!(
                                "the installed librbd lacks {} (Ceph 14 or newer is needed)",
                                stringify!($name)
                            ));
                        }
                        // SAFETY: `p` is the address of the C function of that name,
                        // whose prototype in librbd.h / librados.h is the one declared
                        // here; data and function pointers have the same size.
                        unsafe {
                            std::mem::transmute::<Ptr, unsafe extern "C" fn($($arg),*) -> $ret>(p)
                        }
                    },)*
                    _libs: [rados, rbd],
                })
            }
        }
    };
}

api! {
    rados_create: fn(*mut Ptr, *const c_char) -> c_int;
    rados_conf_read_file: fn(Ptr, *const c_char) -> c_int;
    rados_conf_set: fn(Ptr, *const c_char, *const c_char) -> c_int;
    rados_connect: fn(Ptr) -> c_int;
    rados_shutdown: fn(Ptr) -> ();
    rados_ioctx_create: fn(Ptr, *const c_char, *mut Ptr) -> c_int;
    rados_ioctx_destroy: fn(Ptr) -> ();
    rados_ioctx_set_namespace: fn(Ptr, *const c_char) -> ();
    rbd_create: fn(Ptr, *const c_char, u64, *mut c_int) -> c_int;
    rbd_remove: fn(Ptr, *const c_char) -> c_int;
    rbd_clone: fn(Ptr, *const c_char, *const c_char, Ptr, *const c_char, u64, *mut c_int) -> c_int;
    rbd_open: fn(Ptr, *const c_char, *mut Ptr, *const c_char) -> c_int;
    rbd_open_read_only: fn(Ptr, *const c_char, *mut Ptr, *const c_char) -> c_int;
    rbd_close: fn(Ptr) -> c_int;
    rbd_get_size: fn(Ptr, *mut u64) -> c_int;
    rbd_get_features: fn(Ptr, *mut u64) -> c_int;
    rbd_stat: fn(Ptr, *mut RawInfo, usize) -> c_int;
    rbd_resize: fn(Ptr, u64) -> c_int;
    rbd_snap_create: fn(Ptr, *const c_char) -> c_int;
    rbd_snap_protect: fn(Ptr, *const c_char) -> c_int;
    rbd_snap_is_protected: fn(Ptr, *const c_char, *mut c_int) -> c_int;
    rbd_get_parent: fn(Ptr, *mut RawLinkedImage, *mut RawSnapSpec) -> c_int;
    rbd_linked_image_spec_cleanup: fn(*mut RawLinkedImage) -> ();
    rbd_snap_spec_cleanup: fn(*mut RawSnapSpec) -> ();
    rbd_get_overlap: fn(Ptr, *mut u64) -> c_int;
    rbd_flatten: fn(Ptr) -> c_int;
    rbd_diff_iterate2: fn(Ptr, *const c_char, u64, u64, u8, u8, DiffCb, Ptr) -> c_int;
    rbd_aio_create_completion: fn(Ptr, Ptr, *mut Ptr) -> c_int;
    rbd_aio_wait_for_complete: fn(Ptr) -> c_int;
    rbd_aio_get_return_value: fn(Ptr) -> isize;
    rbd_aio_release: fn(Ptr) -> ();
    rbd_aio_read: fn(Ptr, u64, usize, *mut c_char, Ptr) -> c_int;
    rbd_aio_write: fn(Ptr, u64, usize, *const c_char, Ptr) -> c_int;
    rbd_aio_discard: fn(Ptr, u64, u64, Ptr) -> c_int;
    rbd_aio_write_zeroes: fn(Ptr, u64, usize, Ptr, c_int, c_int) -> c_int;
    rbd_aio_flush: fn(Ptr, Ptr) -> c_int;
    rbd_get_id: fn(Ptr, *mut c_char, usize) -> c_int;
    rados_lock_exclusive:
        fn(Ptr, *const c_char, *const c_char, *const c_char, *const c_char, *mut libc::timeval, u8) -> c_int;
    rados_unlock: fn(Ptr, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_list_lockers: fn(
        Ptr, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize,
        *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize
    ) -> isize;
}

/// `rbd_image_info_t` of librbd.h.
#[repr(C)]
struct RawInfo {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; 24],
    parent_pool: i64,
    parent_name: [c_char; 96],
}

/// `rbd_linked_image_spec_t` of librbd.h.
#[repr(C)]
struct RawLinkedImage {
    pool_id: i64,
    pool_name: *mut c_char,
    pool_namespace: *mut c_char,
    image_id: *mut c_char,
    image_name: *mut c_char,
    trash: bool,
}

/// `rbd_snap_spec_t` of librbd.h.
#[repr(C)]
struct RawSnapSpec {
    id: u64,
    namespace_type: c_int,
    name: *mut c_char,
}

/// Where a clone's parent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentSpec {
    pub pool: String,
    pub namespace: String,
    pub image: String,
    pub snapshot: String,
    /// Bytes of the clone (from its start) that still come from the parent.
    pub overlap: u64,
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load)
        .as_ref()
        .map_err(|m| Error::unsupported(m.clone()))
}

fn cstr(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::usage(format!("{what} '{s}' contains a NUL byte")))
}

fn check(ret: c_int, what: impl FnOnce() -> String) -> Result<()> {
    if ret < 0 {
        return Err(errno_error(ret.into(), &what()));
    }
    Ok(())
}

/// A connected cluster and an I/O context on one pool (and namespace).
pub struct Pool {
    api: &'static Api,
    cluster: Ptr,
    ioctx: Ptr,
    name: String,
    namespace: Option<String>,
}

// SAFETY: librados cluster and ioctx handles may be used from any thread; vmcrypt only
// creates images from them and destroys them once, in Drop.
unsafe impl Send for Pool {}
// SAFETY: as above; librados serialises what needs it internally.
unsafe impl Sync for Pool {}

impl Pool {
    /// Connect as `opts` says and open the pool's I/O context.
    pub fn connect(opts: &ConnectOptions) -> Result<Arc<Pool>> {
        let api = api()?;
        let user = cstr(opts.user.unwrap_or("admin"), "user")?;
        let mut cluster: Ptr = std::ptr::null_mut();
        // SAFETY: `cluster` is a valid out-pointer, `user` a NUL-terminated string.
        check(
            unsafe { (api.rados_create)(&mut cluster, user.as_ptr()) },
            || "creating the rados client".into(),
        )?;
        // From here `pool` owns the cluster handle (Drop shuts it down).
        let mut pool = Pool {
            api,
            cluster,
            ioctx: std::ptr::null_mut(),
            name: opts.pool.to_string(),
            namespace: opts.namespace.map(str::to_string),
        };
        pool.configure(opts)?;
        // SAFETY: the cluster handle is valid and configured.
        let r = unsafe { (api.rados_connect)(pool.cluster) };
        check(r, || "connecting to the Ceph cluster".into())?;
        let pname = cstr(opts.pool, "pool")?;
        let mut ioctx: Ptr = std::ptr::null_mut();
        // SAFETY: connected cluster, NUL-terminated pool name, valid out-pointer.
        let r = unsafe { (api.rados_ioctx_create)(pool.cluster, pname.as_ptr(), &mut ioctx) };
        check(r, || format!("opening pool '{}'", opts.pool))?;
        pool.ioctx = ioctx;
        if let Some(ns) = opts.namespace {
            let ns = cstr(ns, "namespace")?;
            // SAFETY: valid ioctx; librados copies the string.
            unsafe { (api.rados_ioctx_set_namespace)(pool.ioctx, ns.as_ptr()) };
        }
        Ok(Arc::new(pool))
    }

    fn configure(&mut self, opts: &ConnectOptions) -> Result<()> {
        let conf = opts.conf.map(|c| cstr(c, "conf")).transpose()?;
        let cptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: valid cluster handle; a NULL path means librados's default search.
        let r = unsafe { (self.api.rados_conf_read_file)(self.cluster, cptr) };
        if opts.conf.is_some() {
            check(r, || {
                format!("reading Ceph config '{}'", opts.conf.unwrap_or(""))
            })?;
        }
        if let Some(key) = opts.key {
            let key = std::str::from_utf8(key)
                .map_err(|_| Error::usage("the rbd key-secret is not a base64 cephx key"))?;
            let k = cstr(key.trim(), "key")?;
            // SAFETY: valid cluster handle and NUL-terminated strings; librados copies them.
            let r = unsafe { (self.api.rados_conf_set)(self.cluster, c"key".as_ptr(), k.as_ptr()) };
            check(r, || "setting the cephx key from key-secret".into())?;
        }
        // librbd copies every written buffer unless told not to. Ours stay owned by
        // their request until librbd has released them (it holds the completion back
        // until then), so it may use them in place (it copies anyway while a writeback
        // cache is on).
        // SAFETY: valid cluster handle and NUL-terminated strings; librados copies them.
        let r = unsafe {
            (self.api.rados_conf_set)(
                self.cluster,
                c"rbd_disable_zero_copy_writes".as_ptr(),
                c"false".as_ptr(),
            )
        };
        check(r, || "setting rbd_disable_zero_copy_writes".into())
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create image `name` of `size` bytes with librbd's default features; `order` is
    /// log2 of the object size (default 22, 4 MiB).
    pub fn create_image(&self, name: &str, size: u64, order: Option<u32>) -> Result<()> {
        let n = cstr(name, "image name")?;
        let mut ord: c_int = order.map_or(0, |o| o as c_int);
        // SAFETY: valid ioctx, NUL-terminated name, valid out-pointer for the order.
        let r = unsafe { (self.api.rbd_create)(self.ioctx, n.as_ptr(), size, &mut ord) };
        check(r, || format!("creating rbd image '{}/{name}'", self.name))
    }

    /// Delete image `name`.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let n = cstr(name, "image name")?;
        // SAFETY: valid ioctx and NUL-terminated name.
        let r = unsafe { (self.api.rbd_remove)(self.ioctx, n.as_ptr()) };
        check(r, || format!("removing rbd image '{}/{name}'", self.name))
    }

    /// Clone `parent@snap` (a protected snapshot) of this pool to `child` in `dest`,
    /// with the parent's features and object size.
    pub fn clone_image(
        self: &Arc<Self>,
        parent: &str,
        snap: &str,
        dest: &Pool,
        child: &str,
    ) -> Result<()> {
        let (p, s, c) = (
            cstr(parent, "image")?,
            cstr(snap, "snapshot")?,
            cstr(child, "image")?,
        );
        let features = self.open(parent, Some(snap), true)?.features()?;
        let mut ord: c_int = 0;
        // SAFETY: valid ioctxs, NUL-terminated names, valid out-pointer.
        let r = unsafe {
            (self.api.rbd_clone)(
                self.ioctx,
                p.as_ptr(),
                s.as_ptr(),
                dest.ioctx,
                c.as_ptr(),
                features,
                &mut ord,
            )
        };
        check(r, || format!("cloning {parent}@{snap} to {child}"))
    }

    /// Open image `name` (at snapshot `snap`, which is always read-only).
    pub fn open(
        self: &Arc<Self>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let n = cstr(name, "image name")?;
        let s = snap.map(|s| cstr(s, "snapshot")).transpose()?;
        let sptr = s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let f = if read_only || snap.is_some() {
            self.api.rbd_open_read_only
        } else {
            self.api.rbd_open
        };
        let mut h: Ptr = std::ptr::null_mut();
        // SAFETY: valid ioctx, NUL-terminated names (snap may be NULL), valid out-pointer.
        let r = unsafe { f(self.ioctx, n.as_ptr(), &mut h, sptr) };
        let at = snap.map(|s| format!("@{s}")).unwrap_or_default();
        check(r, || {
            format!("opening rbd image '{}/{name}{at}'", self.name)
        })?;
        Ok(Image {
            pool: self.clone(),
            handle: h,
            shared_name: format!("{}/{name}{at}", self.name).into(),
            inflight: Default::default(),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the handles are owned by this Pool, valid, and released exactly once;
        // every Image holds an Arc of its Pool, so none is open any more.
        unsafe {
            if !self.ioctx.is_null() {
                (self.api.rados_ioctx_destroy)(self.ioctx);
            }
            (self.api.rados_shutdown)(self.cluster);
        }
    }
}

/// What `rbd_stat` says about an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub size: u64,
    /// The object size in bytes (the stripe unit of an unstriped image).
    pub object_size: u64,
}

/// An open rbd image.
pub struct Image {
    pool: Arc<Pool>,
    handle: Ptr,
    /// `pool/image[@snap]`, shared with requests in flight for their error messages.
    shared_name: Arc<str>,
    /// Requests submitted with a callback ([`aio`]) that have not ended yet.
    inflight: Arc<aio::Inflight>,
}

// SAFETY: librbd image handles are safe to use from several threads at once (QEMU and
// rbd-nbd submit requests on one handle from many threads); closed once, in Drop.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// Largest single asynchronous request: big transfers become several requests in
/// flight at once (librbd spreads them over objects and OSDs).
const AIO_CHUNK: usize = 1 << 20;

/// One librbd completion; dropping it waits for the request (if submitted) and releases
/// it, so a buffer borrowed by the request outlives it.
struct Completion {
    api: &'static Api,
    c: Ptr,
}

impl Completion {
    fn new(api: &'static Api) -> Result<Completion> {
        let mut c: Ptr = std::ptr::null_mut();
        // SAFETY: NULL callback argument and callback (we wait instead); valid out-pointer.
        let r = unsafe {
            (api.rbd_aio_create_completion)(std::ptr::null_mut(), std::ptr::null_mut(), &mut c)
        };
        check(r, || "creating a librbd completion".into())?;
        Ok(Completion { api, c })
    }

    /// Wait for the request and return its result.
    fn wait(&self) -> isize {
        // SAFETY: `c` is a live completion whose request was submitted.
        unsafe {
            (self.api.rbd_aio_wait_for_complete)(self.c);
            (self.api.rbd_aio_get_return_value)(self.c)
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // SAFETY: `c` is live; only completions whose request was submitted are kept
        // (see `Image::batch`), so waiting returns; then it is released exactly once.
        unsafe {
            (self.api.rbd_aio_wait_for_complete)(self.c);
            (self.api.rbd_aio_release)(self.c);
        }
    }
}

impl Image {
    /// `pool/image[@snap]`.
    pub fn name(&self) -> &str {
        &self.shared_name
    }

    fn api(&self) -> &'static Api {
        self.pool.api
    }

    /// The image's size in bytes.
    pub fn size(&self) -> Result<u64> {
        let mut s = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let r = unsafe { (self.api().rbd_get_size)(self.handle, &mut s) };
        check(r, || format!("size of {}", self.shared_name))?;
        Ok(s)
    }

    fn features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let r = unsafe { (self.api().rbd_get_features)(self.handle, &mut f) };
        check(r, || format!("features of {}", self.shared_name))?;
        Ok(f)
    }

    /// Size and object size.
    pub fn info(&self) -> Result<ImageInfo> {
        // SAFETY: RawInfo is plain old data; all-zero is a valid value.
        let mut i: RawInfo = unsafe { std::mem::zeroed() };
        // SAFETY: open handle; `i` is an rbd_image_info_t of the size passed.
        let r =
            unsafe { (self.api().rbd_stat)(self.handle, &mut i, std::mem::size_of::<RawInfo>()) };
        check(r, || format!("stat of {}", self.shared_name))?;
        Ok(ImageInfo {
            size: i.size,
            object_size: i.obj_size,
        })
    }

    /// Submit one request per item of `ranges` (each through `submit`, which gets a fresh
    /// completion), then wait for all of them; the first failure is returned.
    fn batch<T>(
        &self,
        ranges: impl Iterator<Item = T>,
        what: &str,
        mut submit: impl FnMut(&T, Ptr) -> c_int,
    ) -> Result<()> {
        let mut inflight: Vec<(T, Completion)> = Vec::new();
        let mut first_err = None;
        for item in ranges {
            let c = Completion::new(self.api())?;
            let r = submit(&item, c.c);
            if r < 0 {
                // Not submitted: release without waiting.
                let c = std::mem::ManuallyDrop::new(c);
                // SAFETY: the completion was created above and never submitted.
                unsafe { (self.api().rbd_aio_release)(c.c) };
                first_err = Some(errno_error(
                    r.into(),
                    &format!("{what} on {}", self.shared_name),
                ));
                break;
            }
            inflight.push((item, c));
        }
        for (_, c) in &inflight {
            let r = c.wait();
            if r < 0 && first_err.is_none() {
                first_err = Some(errno_error(
                    r as i64,
                    &format!("{what} on {}", self.shared_name),
                ));
            }
        }
        drop(inflight);
        first_err.map_or(Ok(()), Err)
    }

    /// Fill `buf` from `offset` (which with `buf` lies inside the image).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let api = self.api();
        let h = self.handle;
        let chunks = buf
            .chunks_mut(AIO_CHUNK)
            .enumerate()
            .map(|(i, c)| (offset + (i * AIO_CHUNK) as u64, c.len(), c.as_mut_ptr()));
        self.batch(chunks, "read", |&(off, len, ptr), c| {
            // SAFETY: `ptr..ptr+len` is a disjoint piece of `buf`, which stays mutably
            // borrowed until `batch` has waited for every submitted request.
            unsafe { (api.rbd_aio_read)(h, off, len, ptr.cast(), c) }
        })
    }

    /// Write `buf` at `offset`.
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        let api = self.api();
        let h = self.handle;
        let chunks = buf
            .chunks(AIO_CHUNK)
            .enumerate()
            .map(|(i, c)| (offset + (i * AIO_CHUNK) as u64, c.len(), c.as_ptr()));
        self.batch(chunks, "write", |&(off, len, ptr), c| {
            // SAFETY: `ptr..ptr+len` is a piece of `buf`, borrowed until `batch` has
            // waited for every submitted request.
            unsafe { (api.rbd_aio_write)(h, off, len, ptr.cast(), c) }
        })
    }

    /// Discard `[offset, offset+len)` (whole objects are deleted, librbd zeroes the rest).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let (api, h) = (self.api(), self.handle);
        self.batch(std::iter::once((offset, len)), "discard", |&(o, l), c| {
            // SAFETY: open handle, live completion; no buffer involved.
            unsafe { (api.rbd_aio_discard)(h, o, l, c) }
        })
    }

    /// Make `[offset, offset+len)` read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let (api, h) = (self.api(), self.handle);
        let step = 1u64 << 30;
        let pieces = (0..len.div_ceil(step)).map(|i| (offset + i * step, step.min(len - i * step)));
        self.batch(pieces, "write zeroes", |&(o, l), c| {
            // SAFETY: open handle, live completion; no buffer involved.
            unsafe { (api.rbd_aio_write_zeroes)(h, o, l as usize, c, 0, 0) }
        })
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        let (api, h) = (self.api(), self.handle);
        self.batch(std::iter::once(()), "flush", |_, c| {
            // SAFETY: open handle, live completion.
            unsafe { (api.rbd_aio_flush)(h, c) }
        })
    }

    /// Change the image's size.
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: open handle.
        let r = unsafe { (self.api().rbd_resize)(self.handle, size) };
        check(r, || {
            format!("resizing {} to {size} bytes", self.shared_name)
        })
    }

    /// The clone's parent, if it has one.
    pub fn parent(&self) -> Result<Option<ParentSpec>> {
        // SAFETY: both are plain C structs; all-zero (NULL pointers) is a valid value.
        let (mut img, mut snap): (RawLinkedImage, RawSnapSpec) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: open handle, valid out-structs.
        let r = unsafe { (self.api().rbd_get_parent)(self.handle, &mut img, &mut snap) };
        if r == -libc::ENOENT {
            return Ok(None);
        }
        check(r, || format!("parent of {}", self.shared_name))?;
        let text = |p: *mut c_char| {
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: librbd filled `p` with a NUL-terminated string it owns until
                // the cleanup calls below.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        let mut spec = ParentSpec {
            pool: text(img.pool_name),
            namespace: text(img.pool_namespace),
            image: text(img.image_name),
            snapshot: text(snap.name),
            overlap: 0,
        };
        // SAFETY: the structs were filled by rbd_get_parent and are released once.
        unsafe {
            (self.api().rbd_linked_image_spec_cleanup)(&mut img);
            (self.api().rbd_snap_spec_cleanup)(&mut snap);
        }
        // SAFETY: open handle, valid out-pointer.
        let r = unsafe { (self.api().rbd_get_overlap)(self.handle, &mut spec.overlap) };
        check(r, || format!("parent overlap of {}", self.shared_name))?;
        Ok(Some(spec))
    }

    /// Copy every object still in the parent into the image and detach it.
    pub fn flatten(&self) -> Result<()> {
        // SAFETY: open handle.
        let r = unsafe { (self.api().rbd_flatten)(self.handle) };
        check(r, || format!("flattening {}", self.shared_name))
    }

    /// Create snapshot `snap` unless it exists, and protect it unless it is.
    pub fn snap_create_protected(&self, snap: &str) -> Result<()> {
        let s = cstr(snap, "snapshot")?;
        // SAFETY: open handle, NUL-terminated name.
        let r = unsafe { (self.api().rbd_snap_create)(self.handle, s.as_ptr()) };
        if r != -libc::EEXIST {
            check(r, || {
                format!("creating snapshot {}@{snap}", self.shared_name)
            })?;
        }
        let mut prot: c_int = 0;
        // SAFETY: open handle, NUL-terminated name, valid out-pointer.
        let r = unsafe { (self.api().rbd_snap_is_protected)(self.handle, s.as_ptr(), &mut prot) };
        check(r, || format!("snapshot {}@{snap}", self.shared_name))?;
        if prot == 0 {
            // SAFETY: open handle, NUL-terminated name.
            let r = unsafe { (self.api().rbd_snap_protect)(self.handle, s.as_ptr()) };
            check(r, || {
                format!("protecting snapshot {}@{snap}", self.shared_name)
            })?;
        }
        Ok(())
    }

    /// The allocated extents `(offset, length)` of `[offset, offset+len)`, in order:
    /// objects that exist (`whole_object`), or the written extents inside them;
    /// `include_parent` adds what a clone's parent holds.
    pub fn extents(
        &self,
        offset: u64,
        len: u64,
        include_parent: bool,
        whole_object: bool,
    ) -> Result<Vec<(u64, u64)>> {
        extern "C" fn collect(off: u64, len: usize, exists: c_int, arg: Ptr) -> c_int {
            if exists != 0 {
                // SAFETY: `arg` is the `&mut Vec` passed to rbd_diff_iterate2 below,
                // alive and not otherwise borrowed while librbd calls back.
                let v = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
                v.push((off, len as u64));
            }
            0
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        // SAFETY: open handle; NULL from-snapshot (from the beginning); the callback only
        // touches `out`, which outlives this synchronous call.
        let r = unsafe {
            (self.api().rbd_diff_iterate2)(
                self.handle,
                std::ptr::null(),
                offset,
                len,
                u8::from(include_parent),
                u8::from(whole_object),
                collect,
                (&mut out as *mut Vec<(u64, u64)>).cast(),
            )
        };
        check(r, || format!("allocation map of {}", self.shared_name))?;
        out.sort_unstable();
        Ok(out)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // Requests submitted with a callback still use the handle.
        self.inflight.wait_idle();
        // SAFETY: the handle is owned by this Image and closed exactly once; no request
        // is in flight (the synchronous calls wait for their own, the others were
        // waited for above).
        unsafe {
            (self.api().rbd_close)(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_the_package_to_install() {
        let Err(e) = Lib::open("libvmcrypt-no-such-rbd.so.1", "librbd1") else {
            panic!("a library that does not exist was loaded");
        };
        assert!(e.contains("apt-get install librbd1"), "{e}");
        assert!(e.contains("libvmcrypt-no-such-rbd.so.1"), "{e}");
    }

    #[test]
    fn the_installed_librbd_has_every_function() {
        // librbd1 is a test dependency (.ci/install-deps); a missing symbol names itself.
        if let Err(e) = api() {
            panic!("{e}");
        }
    }
}
