//! Safe rebase (`qemu-img rebase` without `-u`): move a qcow2 image onto another backing
//! file (or onto none) without changing what the image reads.
//!
//! For every range the image itself does not allocate (its guest data comes from the old
//! backing chain, or reads as zeros past the old chain's end) the old chain's bytes are
//! compared with the new backing file's, one image cluster at a time as qemu-img does;
//! runs of clusters that differ get the old bytes written into the image (encrypted with
//! the image's own key by the qcow2 write path), or zeros where nothing lies below the
//! image. The data is flushed before the header is switched to the new backing name and
//! format ([`crate::drivers::qcow2::create::rebase_unsafe`]), so a rebase cut off at any point
//! leaves an image that reads the same through either backing file.
//!
//! The new backing file is named like qemu-img's `-b`: a filename (relative names are
//! resolved against the image's directory) or a `json:{...}` filename, which is how an
//! encrypted new backing gets its key (`"encrypt.key-secret": "ID"`). The header stores
//! the name exactly as given, with `-F` as its format, as qemu-img does.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::driver::{BlockDriver, map_extent, read_padded};
use crate::drivers::file::FileDriver;
use crate::drivers::qcow2::create::{rebase_unsafe, rebased_header};
use crate::graph::{self, OpenContext};
use crate::spec::NodeSpec;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_error::{Result, ResultExt, ensure};

/// Bytes compared per step (qemu-img's buffer size).
const CHUNK: u64 = 2 << 20;

/// The backing file an image is rebased onto (`-b NAME -F FORMAT`).
#[derive(Clone, Copy, Debug)]
pub struct NewBacking<'a> {
    /// The name stored in the header: a path or a `json:{...}` filename.
    pub name: &'a str,
    /// Its format (`-F`); required, as qemu-img requires it.
    pub format: Option<&'a str>,
}

/// What `vmcrypt rebase` was asked for.
#[derive(Clone, Debug, Default)]
pub struct RebaseRequest {
    pub image: ImageArg,
    /// `-b`: the new backing file ("" removes it).
    pub backing: String,
    /// `-F`: its format.
    pub backing_format: Option<String>,
    /// `-u`: change only the header, copy no data.
    pub unsafe_mode: bool,
}

/// Rebase as `req` asks: safely (see [`rebase`]; progress in bytes goes to `events`) or,
/// with `unsafe_mode`, by rewriting only the header. Unsafe mode reports no stats.
pub fn run(req: &RebaseRequest, env: &Env, events: &mut dyn Events) -> Result<RebaseStats> {
    if let Some(f) = &req.image.format {
        ensure!(
            f == "qcow2",
            Unsupported,
            "rebase needs a qcow2 image (format '{f}' has no backing file)"
        );
    }
    if req.unsafe_mode {
        rebase_unsafe_request(req)?;
        return Ok(RebaseStats::default());
    }
    // As qemu-img: -U opens the new backing file without locking; the image itself,
    // written, keeps its lock.
    let ctx = req.image.context(env, Access::READ)?;
    let top = ImageArg {
        force_share: false,
        ..req.image.clone()
    };
    let spec = top.to_spec()?;
    // qemu-img ignores -F when the backing file is removed.
    let new = (!req.backing.is_empty()).then_some(NewBacking {
        name: &req.backing,
        format: req.backing_format.as_deref(),
    });
    rebase(&spec, new, &ctx, &mut |d, t| events.progress(d, t))
}

/// `rebase -u`: a file name only, and `-F` exactly when a backing file is named.
fn rebase_unsafe_request(req: &RebaseRequest) -> Result<()> {
    ensure!(
        !req.image.image_opts,
        Unsupported,
        "rebase -u takes a file name, not --image-opts"
    );
    let new = if req.backing.is_empty() {
        ensure!(
            req.backing_format.is_none(),
            Usage,
            "-F cannot be used when removing the backing file (-b \"\")"
        );
        None
    } else {
        ensure!(
            req.backing_format.is_some(),
            Usage,
            "a backing format is required with -u (-F FMT)"
        );
        Some((req.backing.as_str(), req.backing_format.as_deref()))
    };
    rebase_unsafe(Path::new(&req.image.name), new)
}

/// What a safe rebase did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebaseStats {
    /// Bytes not allocated in the image, compared between the old and new backing.
    pub compared: u64,
    /// Bytes written into the image because the two differed.
    pub written: u64,
}

/// Safely rebase the qcow2 image `image` (a graph description, with its own key and its
/// old backing chain's keys as `encrypt.key-secret` / `backing.encrypt.key-secret`) onto
/// `new`, or onto no backing file for `None`. `progress(done, total)` reports bytes of the
/// image processed. On any error before the data phase (bad key, missing secret, a name
/// that does not fit in the header) the image is left untouched.
pub fn rebase(
    image: &NodeSpec,
    new: Option<NewBacking>,
    ctx: &OpenContext,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebaseStats> {
    let new = new.filter(|n| !n.name.is_empty());
    if let Some(n) = new {
        ensure!(
            n.format.is_some(),
            Usage,
            "could not change the backing file to '{}': backing format must be specified (-F FMT)",
            n.name
        );
    }
    let rw = OpenContext {
        secrets: ctx.secrets,
        read_only: false,
        metadata_only: false,
        limits: ctx.limits,
        writable_backing: false,
        force_share: false,
    };
    let top = graph::open(image, &rw)?;
    ensure!(
        top.driver_name() == "qcow2",
        Unsupported,
        "rebase needs a qcow2 image ('{}' is {}, which has no backing file)",
        top.filename(),
        top.driver_name()
    );
    let path = top.filename();
    let header_backing = new.map(|n| (n.name, n.format));
    // Fail now, not after copying, if the header cannot take the new name. Our own
    // write lock is held, so this read goes around the locking.
    let unlocked = FileDriver::open_with(Path::new(&path), true, false)?;
    rebased_header(&unlocked, &path, header_backing)?;
    drop(unlocked);
    let target = match new {
        Some(n) => Some(open_new_backing(&path, n, ctx)?),
        None => None,
    };
    let stats = copy_differences(top.as_ref(), target.as_deref(), progress)?;
    top.flush().ctx("flushing the rebased image")?;
    // Release the image (and its lock) before the header is rewritten by path.
    drop(target);
    drop(top);
    rebase_unsafe(Path::new(&path), header_backing)?;
    Ok(stats)
}

/// Open the new backing file `n` of the image at `image_path` read-only, the way the
/// rebased image will open it (relative names from the image's directory).
fn open_new_backing(
    image_path: &str,
    n: NewBacking,
    ctx: &OpenContext,
) -> Result<Arc<dyn BlockDriver>> {
    let full = graph::resolve_backing(image_path, n.name);
    let spec = crate::spec::spec_from_filename(&full, n.format)
        .with_ctx(|| format!("could not open new backing file '{}'", n.name))?;
    let ro = OpenContext {
        secrets: ctx.secrets,
        read_only: true,
        metadata_only: false,
        limits: ctx.limits,
        writable_backing: false,
        force_share: ctx.force_share,
    };
    graph::open(&spec, &ro).with_ctx(|| format!("could not open new backing file '{}'", n.name))
}

/// Walk `top` and write into it the old chain's bytes wherever they differ from `new`'s
/// (zeros past `new`'s end or without `new`).
fn copy_differences(
    top: &dyn BlockDriver,
    new: Option<&dyn BlockDriver>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebaseStats> {
    let size = top.size();
    let cs = top
        .as_introspect()
        .and_then(|i| i.cluster_size())
        .unwrap_or(1 << 16)
        .max(512);
    let has_backing = top.as_backing().and_then(|b| b.backing_info()).is_some();
    let mut stats = RebaseStats::default();
    let mut bufs = (Vec::new(), Vec::new());
    let mut off = 0;
    progress(0, size);
    while off < size {
        let e = map_extent(top, off, CHUNK.min(size - off))?;
        ensure!(
            e.length > 0 && e.offset == off,
            Internal,
            "rebase: empty map extent at {off}"
        );
        if e.depth == 0 && e.present {
            off += e.length;
            progress(off, size);
            continue;
        }
        // Unallocated in the image, so its whole clusters are: extend to the cluster end.
        let end = (off + e.length).next_multiple_of(cs).min(size);
        let range = Range {
            off,
            len: end - off,
            // Nothing lies below here: the old chain reads zeros.
            zeros_below: e.depth == 0 && has_backing,
        };
        let written = compare_and_copy(top, new, range, cs, &mut bufs)?;
        stats.compared += range.len;
        stats.written += written;
        off = end;
        progress(off, size);
    }
    Ok(stats)
}

/// A range of the image not allocated in it.
#[derive(Clone, Copy)]
struct Range {
    off: u64,
    len: u64,
    /// The range lies past the end of the old backing chain (written as zeros).
    zeros_below: bool,
}

/// Compare one range cluster by cluster and write the runs of differing clusters.
/// Returns the bytes written.
fn compare_and_copy(
    top: &dyn BlockDriver,
    new: Option<&dyn BlockDriver>,
    r: Range,
    cs: u64,
    (old_buf, new_buf): &mut (Vec<u8>, Vec<u8>),
) -> Result<u64> {
    let n = r.len as usize;
    old_buf.resize(n, 0);
    new_buf.resize(n, 0);
    // Reading the image where it allocates nothing reads the old backing chain.
    top.read_at(&mut old_buf[..n], r.off)
        .with_ctx(|| format!("reading the old backing chain at offset {}", r.off))?;
    read_new(new, &mut new_buf[..n], r.off)?;
    let cs = cs as usize;
    let mut written = 0;
    let mut i = 0;
    while i < n {
        let differs = |at: usize| {
            let e = (at + cs).min(n);
            old_buf[at..e] != new_buf[at..e]
        };
        let first = differs(i);
        let mut j = (i + cs).min(n);
        while j < n && differs(j) == first {
            j = (j + cs).min(n);
        }
        if first {
            write_run(top, &mut old_buf[i..j], r.off + i as u64, r.zeros_below)?;
            written += (j - i) as u64;
        }
        i = j;
    }
    Ok(written)
}

/// Fill `buf` from the new backing file at `off`, zeros past its end (or without one).
fn read_new(new: Option<&dyn BlockDriver>, buf: &mut [u8], off: u64) -> Result<()> {
    let Some(new) = new else {
        buf.fill(0);
        return Ok(());
    };
    read_padded(new, buf, off).with_ctx(|| format!("reading the new backing file at offset {off}"))
}

/// Write the old chain's bytes `data` at `off` (zero clusters past the old chain's end).
fn write_run(top: &dyn BlockDriver, data: &mut [u8], off: u64, zeros: bool) -> Result<()> {
    let res = if zeros {
        top.write_zeroes(off, data.len() as u64)
    } else {
        top.write_at_mut(data, off)
    };
    res.with_ctx(|| {
        format!(
            "writing {} bytes at offset {off} into the image",
            data.len()
        )
    })
}

#[cfg(test)]
mod request_tests {
    use super::*;
    use crate::jobs::NoEvents;

    fn req(format: Option<&str>, backing: &str, backing_format: Option<&str>) -> RebaseRequest {
        RebaseRequest {
            image: ImageArg::file("/nonexistent/img.qcow2", format),
            backing: backing.into(),
            backing_format: backing_format.map(Into::into),
            unsafe_mode: true,
        }
    }

    #[test]
    fn unsafe_rebase_refusals() {
        let env = Env::default();
        let run_err = |r: RebaseRequest| run(&r, &env, &mut NoEvents).unwrap_err().to_string();
        assert!(run_err(req(Some("raw"), "b", Some("raw"))).contains("needs a qcow2 image"));
        assert!(run_err(req(None, "b", None)).contains("a backing format is required with -u"));
        assert!(run_err(req(None, "", Some("raw"))).contains("-F cannot be used"));
        let opts = RebaseRequest {
            image: ImageArg {
                image_opts: true,
                ..ImageArg::file("driver=qcow2", None)
            },
            ..req(None, "b", Some("raw"))
        };
        assert!(run_err(opts).contains("not --image-opts"));
    }
}
