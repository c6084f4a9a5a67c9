//! The `convert` job: open the source, create the target (or open an existing one with
//! `-n`), carry the new image's key over into its graph description, decide whether
//! the fresh target reads as zeros, then copy with [`super::convert`].
use super::convert::{ConvertStats, convert};
use crate::driver::BlockDriver;
use crate::graph;
use crate::jobs::create::{create_image, created_spec};
use crate::jobs::image_arg::Access;
use crate::jobs::options::merge_options;
use crate::jobs::{Env, Events, ImageArg};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_error::{Result, ResultExt, ensure};

/// What `vmcrypt convert` was asked for.
#[derive(Clone, Debug, Default)]
pub struct ConvertRequest {
    pub source: ImageArg,
    /// The target's filename (or, with `target_image_opts`, its image options).
    pub target: String,
    /// `-O`: the target's format.
    pub out_format: String,
    /// Every `-o` argument (options of the created target).
    pub options: Vec<String>,
    /// `-n`: the target exists; do not create it.
    pub no_create: bool,
    /// `--target-image-opts` (needs `no_create`).
    pub target_image_opts: bool,
}

/// What a conversion did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertReport {
    pub stats: ConvertStats,
    /// The target read as zeros before the copy, so zero ranges were left unwritten.
    pub target_zeroed: bool,
}

/// Run the conversion `req`; progress goes to `events` in bytes of the source.
pub fn run(req: &ConvertRequest, env: &Env, events: &mut dyn Events) -> Result<ConvertReport> {
    ensure!(
        !req.target_image_opts || req.no_create,
        Usage,
        "--target-image-opts requires use of -n flag"
    );
    let src = req.source.open(env, Access::READ, events).ctx("source")?;
    let opts = merge_options(&req.options)?;
    convert_from(src.as_ref(), req, &opts, env, events)
}

/// Convert the opened `src` as `req` asks, with its `-o` arguments already merged into
/// `opts` (what `clone` calls after completing the target's options from the source).
pub fn convert_from(
    src: &dyn BlockDriver,
    req: &ConvertRequest,
    opts: &Map<String, Value>,
    env: &Env,
    events: &mut dyn Events,
) -> Result<ConvertReport> {
    let (dst, target_zeroed) = if req.no_create {
        ensure!(
            opts.is_empty(),
            Usage,
            "-o cannot be used with -n (the target already exists)"
        );
        (open_target(req, None, env)?, false)
    } else {
        create_target(req, opts, src.size(), env)?
    };
    let stats = convert(src, dst.as_ref(), target_zeroed, &mut |d, t| {
        events.progress(d, t)
    })?;
    Ok(ConvertReport {
        stats,
        target_zeroed,
    })
}

/// Open the target read-write; `opts` are the `-o` options it was just created with
/// (the key they name becomes the target node's key), `None` for an existing target.
fn open_target(
    req: &ConvertRequest,
    opts: Option<&Map<String, Value>>,
    env: &Env,
) -> Result<Arc<dyn BlockDriver>> {
    let spec = match opts {
        Some(opts) => created_spec(&req.target, &req.out_format, opts)?,
        None => ImageArg {
            name: req.target.clone(),
            format: (!req.target_image_opts).then(|| req.out_format.clone()),
            image_opts: req.target_image_opts,
            force_share: false,
        }
        .to_spec()?,
    };
    graph::open(&spec, &env.ctx(Access::WRITE)?).ctx("target")
}

/// Create the target with `size` virtual bytes and open it; also says whether it reads
/// as zeros.
fn create_target(
    req: &ConvertRequest,
    opts: &Map<String, Value>,
    size: u64,
    env: &Env,
) -> Result<(Arc<dyn BlockDriver>, bool)> {
    let path = Path::new(&req.target);
    let file = create_image(path, &req.out_format, size, opts, env.secrets()?).ctx("target")?;
    let raw_zeroed = req.out_format == "raw" && file.has_zero_init();
    drop(file);
    let dst = open_target(req, Some(opts), env)?;
    // A new qcow2 without a backing file reads as zeros (encrypted or not: its
    // clusters are unallocated), nor does a new rbd image (encrypted or not: librbd
    // reads objects that do not exist as zeros); a LUKS payload never does.
    let zeroed =
        raw_zeroed || (matches!(req.out_format.as_str(), "qcow2" | "rbd") && dst.has_zero_init());
    Ok((dst, zeroed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;

    fn write_raw(path: &Path, data: &[u8]) {
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn raw_to_raw_creates_a_sparse_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let mut data = vec![0u8; 1 << 20];
        data[4096..8192].fill(7);
        write_raw(&src, &data);
        let req = ConvertRequest {
            source: ImageArg::file(&src.display().to_string(), Some("raw")),
            target: dst.display().to_string(),
            out_format: "raw".into(),
            ..ConvertRequest::default()
        };
        let report = run(&req, &Env::default(), &mut NoEvents).unwrap();
        assert!(report.target_zeroed);
        assert_eq!(report.stats.bytes_written, 4096);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }

    #[test]
    fn existing_target_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        write_raw(&src, &[5u8; 8192]);
        write_raw(&dst, &[1u8; 8192]);
        let req = ConvertRequest {
            source: ImageArg::file(&src.display().to_string(), Some("raw")),
            target: dst.display().to_string(),
            out_format: "raw".into(),
            no_create: true,
            ..ConvertRequest::default()
        };
        let report = run(&req, &Env::default(), &mut NoEvents).unwrap();
        assert!(!report.target_zeroed);
        assert_eq!(std::fs::read(&dst).unwrap(), vec![5u8; 8192]);
        let bad = ConvertRequest {
            options: vec!["size=1M".into()],
            ..req.clone()
        };
        let e = run(&bad, &Env::default(), &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("-o cannot be used with -n"));
        let opts = ConvertRequest {
            no_create: false,
            target_image_opts: true,
            ..req
        };
        let e = run(&opts, &Env::default(), &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("requires use of -n"));
    }
}
