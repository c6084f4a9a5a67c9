//! The `create` job: qemu-img's `create` arguments (`-o` options, `-b`/`-F`/`-u`, the
//! size argument) checked and folded into one [`CreatePlan`], which names the image's
//! virtual size (from the argument, `-o size`, or the backing file) and is then run by
//! [`create::create_image`](super::create::create_image).
use super::create::create_image;
use super::image_arg::Access;
use super::options::merge_options;
use super::{Env, Events, ImageArg};
use crate::drivers::qcow2::create::backing_of;
use crate::graph;
use crate::opts::{opt_str, parse_size};
use serde_json::{Map, Value};
use std::path::Path;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// What `vmcrypt create` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    /// The image to create (required unless only `-o help` was asked).
    pub filename: Option<String>,
    pub format: String,
    /// Every `-o` argument.
    pub options: Vec<String>,
    /// `-b`: backing file (qcow2 only).
    pub backing: Option<String>,
    /// `-F`: its format.
    pub backing_format: Option<String>,
    /// `-u`: do not open the backing file (the size must then be given).
    pub unsafe_backing: bool,
    /// The size argument.
    pub size: Option<String>,
    /// `-U`: open the backing file without locking it.
    pub force_share: bool,
}

/// A checked create request: what will be created.
#[derive(Clone, Debug)]
pub struct CreatePlan {
    pub filename: String,
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// The merged options (without `size`), `-b`/`-F` as `backing_file`/`backing_fmt`.
    pub options: Map<String, Value>,
}

impl CreatePlan {
    /// qemu-img's "Formatting 'NAME', fmt=FMT size=N key=value..." line.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "Formatting '{}', fmt={} size={}",
            self.filename, self.format, self.size
        );
        push_options(&mut line, "", &self.options);
        line
    }

    /// Create the image.
    pub fn run(&self, env: &Env) -> Result<()> {
        let path = Path::new(&self.filename);
        create_image(path, &self.format, self.size, &self.options, env.secrets()?)?;
        Ok(())
    }
}

/// Append ` key=value` for every option, nested ones with dotted keys as qemu-img
/// prints them (`encrypt.format=luks encrypt.key-secret=s0`).
fn push_options(line: &mut String, prefix: &str, options: &Map<String, Value>) {
    for (k, v) in options {
        match v {
            Value::Object(m) => push_options(line, &format!("{prefix}{k}."), m),
            Value::String(s) => *line += &format!(" {prefix}{k}={s}"),
            other => *line += &format!(" {prefix}{k}={other}"),
        }
    }
}

/// Check `req` and work out the size; opens the backing file (metadata only) when the
/// size comes from it.
pub fn plan(req: &CreateRequest, env: &Env, events: &mut dyn Events) -> Result<CreatePlan> {
    let filename = req
        .filename
        .clone()
        .ok_or_else(|| Error::usage("expecting an image file name"))?;
    let mut opts = merge_options(&req.options)?;
    add_backing_options(req, &mut opts)?;
    let backing = if req.format == "qcow2" {
        backing_of(&opts)?
    } else {
        ensure!(
            req.backing.is_none() && req.backing_format.is_none(),
            Usage,
            "format '{}' does not support backing files",
            req.format
        );
        None
    };
    let size = match (&req.size, opts.remove("size")) {
        (Some(s), None) => parse_size(s)?,
        (None, Some(v)) => parse_size(v.as_str().unwrap_or_default())?,
        (Some(_), Some(_)) => bail!(Usage, "size given both as an argument and as -o size"),
        (None, None) => match &backing {
            Some((name, fmt)) if !req.unsafe_backing => {
                let full = graph::resolve_backing(&filename, name);
                let arg = ImageArg {
                    force_share: req.force_share,
                    ..ImageArg::file(&full, fmt.as_deref())
                };
                arg.open(env, Access::METADATA, events)
                    .with_ctx(|| format!("could not open backing file '{full}'"))?
                    .size()
            }
            _ => {
                let detached =
                    opt_str(&opts, "detached-header")?.is_some_and(|v| v == "on" || v == "true");
                ensure!(detached, Usage, "image creation needs a size parameter");
                0
            }
        },
    };
    // A bad --object fails before the image is announced, as in qemu-img.
    env.secrets()?;
    Ok(CreatePlan {
        filename,
        format: req.format.clone(),
        size,
        options: opts,
    })
}

/// Fold `-b` / `-F` into the option map as `backing_file` / `backing_fmt`.
fn add_backing_options(req: &CreateRequest, opts: &mut Map<String, Value>) -> Result<()> {
    for (flag, key, val) in [
        ("-b", "backing_file", &req.backing),
        ("-F", "backing_fmt", &req.backing_format),
    ] {
        if let Some(v) = val {
            ensure!(
                !opts.contains_key(key),
                Usage,
                "{flag} and -o {key} cannot both be given"
            );
            opts.insert(key.into(), Value::String(v.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;

    fn req(dir: &Path, format: &str, options: &[&str], size: Option<&str>) -> CreateRequest {
        CreateRequest {
            filename: Some(dir.join("img").display().to_string()),
            format: format.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            size: size.map(Into::into),
            ..CreateRequest::default()
        }
    }

    #[test]
    fn raw_plan_and_run() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::default();
        let p = plan(
            &req(dir.path(), "raw", &[], Some("1M")),
            &env,
            &mut NoEvents,
        )
        .unwrap();
        assert_eq!(p.size, 1 << 20);
        assert!(p.summary().ends_with("', fmt=raw size=1048576"));
        p.run(&env).unwrap();
        let len = std::fs::metadata(dir.path().join("img")).unwrap().len();
        assert_eq!(len, 1 << 20);
    }

    #[test]
    fn size_from_options_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::default();
        let p = plan(
            &req(dir.path(), "raw", &["size=2k"], None),
            &env,
            &mut NoEvents,
        );
        assert_eq!(p.unwrap().size, 2048);
        let both = req(dir.path(), "raw", &["size=2k"], Some("1k"));
        let e = plan(&both, &env, &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("size given both"));
        let none = req(dir.path(), "raw", &[], None);
        let e = plan(&none, &env, &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("needs a size parameter"));
        let backed = CreateRequest {
            backing: Some("base".into()),
            ..req(dir.path(), "raw", &[], Some("1k"))
        };
        let e = plan(&backed, &env, &mut NoEvents).unwrap_err();
        assert!(e.to_string().contains("does not support backing files"));
    }

    #[test]
    fn qcow2_size_comes_from_the_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::default();
        plan(
            &req(dir.path(), "raw", &[], Some("64k")),
            &env,
            &mut NoEvents,
        )
        .unwrap()
        .run(&env)
        .unwrap();
        let top = CreateRequest {
            filename: Some(dir.path().join("top").display().to_string()),
            backing: Some("img".into()),
            backing_format: Some("raw".into()),
            ..req(dir.path(), "qcow2", &[], None)
        };
        let p = plan(&top, &env, &mut NoEvents).unwrap();
        assert_eq!(p.size, 65536);
        assert!(p.summary().contains("backing_file=img backing_fmt=raw"));
    }
}
