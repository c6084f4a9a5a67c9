//! The `resize` job (`qemu-img resize`): a new virtual size, absolute or relative
//! (`+N` / `-N`); shrinking must be asked for, since data past the new end is lost.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::opts::parse_size;
use vmcrypt_error::{Error, Result, ensure};

/// What `vmcrypt resize` was asked for.
#[derive(Clone, Debug, Default)]
pub struct ResizeRequest {
    pub image: ImageArg,
    /// The size argument: `N`, `+N` or `-N` (with qemu-img's suffixes).
    pub size: String,
    /// `--shrink`: allow a smaller size.
    pub shrink: bool,
}

/// What a resize did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeReport {
    pub old_size: u64,
    pub new_size: u64,
}

/// The size `arg` asks for, given the current size `cur`.
pub fn new_size(cur: u64, arg: &str) -> Result<u64> {
    if let Some(d) = arg.strip_prefix('+') {
        cur.checked_add(parse_size(d)?)
            .ok_or_else(|| Error::usage("size overflow"))
    } else if let Some(d) = arg.strip_prefix('-') {
        cur.checked_sub(parse_size(d)?)
            .ok_or_else(|| Error::usage("cannot shrink below zero"))
    } else {
        parse_size(arg)
    }
}

/// Resize the image of `req` (opened read-write, metadata only) and flush it.
pub fn run(req: &ResizeRequest, env: &Env, events: &mut dyn Events) -> Result<ResizeReport> {
    let access = Access {
        read_only: false,
        metadata_only: true,
    };
    let node = req.image.open(env, access, events)?;
    let old_size = node.size();
    let new = new_size(old_size, &req.size)?;
    ensure!(
        new >= old_size || req.shrink,
        Usage,
        "use the --shrink option to perform a shrink operation (data past {new} bytes is lost)"
    );
    node.resize(new)?;
    node.flush()?;
    Ok(ResizeReport {
        old_size,
        new_size: new,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;

    #[test]
    fn sizes() {
        assert_eq!(new_size(1024, "+1k").unwrap(), 2048);
        assert_eq!(new_size(2048, "-1k").unwrap(), 1024);
        assert_eq!(new_size(2048, "4k").unwrap(), 4096);
        assert!(new_size(1024, "-2k").is_err());
    }

    #[test]
    fn grow_and_refuse_to_shrink() {
        let sc = crate::jobs::testutil::Scratch::new();
        let path = sc.raw("img", &[0u8; 4096]);
        let mut req = ResizeRequest {
            image: ImageArg::file(&path, Some("raw")),
            size: "+4k".into(),
            shrink: false,
        };
        let r = run(&req, &Env::default(), &mut NoEvents).unwrap();
        assert_eq!((r.old_size, r.new_size), (4096, 8192));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        req.size = "1k".into();
        let e = run(&req, &Env::default(), &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("--shrink"));
        req.shrink = true;
        run(&req, &Env::default(), &mut NoEvents).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
    }
}
