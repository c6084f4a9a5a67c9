//! qemu-img-compatible image commands: create, info, convert, check, resize.
use super::{image_spec, open_image, secrets};
use crate::cli::Common;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::create::{create_image, options_for};
use vmcrypt_block::file::FileDriver;
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::info::{human_info, image_info};
use vmcrypt_block::opts::{opt_str, parse_keyval, parse_size};
use vmcrypt_block::qcow2::check::{self as qcheck, CheckLimits, Repair};
use vmcrypt_block::{BlockDriver, convert as conv};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// Merge every `-o` argument into one option map.
fn merge_options(options: &[String]) -> Result<Map<String, Value>> {
    let mut all = Map::new();
    for o in options {
        for (k, v) in parse_keyval(o, None)? {
            ensure!(!all.contains_key(&k), Usage, "option '{k}' is given twice");
            all.insert(k, v);
        }
    }
    Ok(all)
}

fn print_option_help(format: &str) -> Result<u8> {
    outln!("Supported options:");
    for (name, help) in options_for(format)? {
        outln!("  {name:<18} - {help}");
    }
    Ok(0)
}

fn wants_help(options: &[String]) -> bool {
    options.iter().any(|o| o == "help" || o == "?")
}

pub fn create(
    common: &Common,
    format: &str,
    options: &[String],
    filename: Option<&str>,
    size: Option<&str>,
) -> Result<u8> {
    if wants_help(options) {
        return print_option_help(format);
    }
    let filename = filename.ok_or_else(|| Error::usage("expecting an image file name"))?;
    let mut opts = merge_options(options)?;
    let size = match (size, opts.remove("size")) {
        (Some(s), None) => parse_size(s)?,
        (None, Some(v)) => parse_size(v.as_str().unwrap_or_default())?,
        (Some(_), Some(_)) => bail!(Usage, "size given both as an argument and as -o size"),
        (None, None) => {
            let detached =
                opt_str(&opts, "detached-header")?.is_some_and(|v| v == "on" || v == "true");
            ensure!(detached, Usage, "image creation needs a size parameter");
            0
        }
    };
    let store = secrets(common)?;
    if !common.quiet {
        let mut line = format!("Formatting '{filename}', fmt={format} size={size}");
        for (k, v) in &opts {
            line += &format!(" {k}={}", v.as_str().unwrap_or_default());
        }
        outln!("{line}");
    }
    create_image(Path::new(filename), format, size, &opts, &store)?;
    Ok(0)
}

pub fn info(common: &Common, format: Option<&str>, output: &str, filename: &str) -> Result<u8> {
    let store = secrets(common)?;
    let node = open_image(common, format, filename, &store, true, true)?;
    match output {
        "json" => outln!("{}", pretty(&image_info(node.as_ref()))),
        "human" => out!("{}", human_info(node.as_ref(), &node.filename())),
        other => bail!(Usage, "--output must be human or json, not '{other}'"),
    }
    Ok(0)
}

/// JSON with qemu-img's 4-space indentation.
pub fn pretty(v: &Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("JSON serialisation");
    String::from_utf8(out).expect("JSON is UTF-8")
}

pub struct ConvertArgs<'a> {
    pub common: &'a Common,
    pub format: Option<&'a str>,
    pub out_format: &'a str,
    pub options: &'a [String],
    pub no_create: bool,
    pub target_image_opts: bool,
    pub progress: bool,
    pub source: Option<&'a str>,
    pub target: Option<&'a str>,
}

pub fn convert(a: &ConvertArgs) -> Result<u8> {
    if wants_help(a.options) {
        return print_option_help(a.out_format);
    }
    let (Some(source), Some(target)) = (a.source, a.target) else {
        bail!(Usage, "convert needs a source and a target image");
    };
    ensure!(
        !a.target_image_opts || a.no_create,
        Usage,
        "--target-image-opts requires use of -n flag"
    );
    let store = secrets(a.common)?;
    let src = open_image(a.common, a.format, source, &store, true, false).ctx("source")?;
    let opts = merge_options(a.options)?;
    let ctx = OpenContext {
        secrets: &store,
        read_only: false,
        metadata_only: false,
        limits: a.common.limits.limits(),
    };
    let (dst, zeroed): (Arc<dyn BlockDriver>, bool) = if a.no_create {
        ensure!(
            opts.is_empty(),
            Usage,
            "-o cannot be used with -n (the target already exists)"
        );
        let spec = if a.target_image_opts {
            parse_keyval(target, None)?
        } else {
            graph::spec_from_filename(target, Some(a.out_format))?
        };
        (graph::open(&spec, &ctx).ctx("target")?, false)
    } else {
        let file = create_image(Path::new(target), a.out_format, src.size(), &opts, &store)
            .ctx("target")?;
        let zeroed = a.out_format == "raw" && file.has_zero_init();
        drop(file);
        let mut spec = graph::spec_from_filename(target, Some(a.out_format))?;
        if let Some(id) = opt_str(&opts, "key-secret")? {
            spec.insert("key-secret".into(), Value::String(id));
        }
        (graph::open(&spec, &ctx).ctx("target")?, zeroed)
    };
    let show = a.progress && !a.common.quiet;
    let mut report = |done: u64, total: u64| {
        if show {
            let pct = if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            };
            eprint!("    ({pct:.2}/100%)\r");
            let _ = std::io::stderr().flush();
        }
    };
    conv::convert(src.as_ref(), dst.as_ref(), zeroed, &mut report)?;
    if show {
        eprintln!();
    }
    Ok(0)
}

pub fn check(
    common: &Common,
    format: Option<&str>,
    output: &str,
    repair: Option<&str>,
    filename: &str,
) -> Result<u8> {
    ensure!(
        output == "human" || output == "json",
        Usage,
        "--output must be human or json, not '{output}'"
    );
    let repair = match repair {
        None => None,
        Some("leaks") => Some(Repair::Leaks),
        Some("all") => Some(Repair::All),
        Some(o) => bail!(Usage, "-r must be 'leaks' or 'all', not '{o}'"),
    };
    let spec = image_spec(common, format, filename)?;
    if let Some(path) = qcow2_file(&spec)? {
        return check_qcow2(common, &path, output, repair, filename);
    }
    let store = secrets(common)?;
    let ctx = OpenContext {
        secrets: &store,
        read_only: true,
        metadata_only: true,
        limits: common.limits.limits(),
    };
    let (fmt, problems) = match graph::open(&spec, &ctx) {
        Ok(node) => match node.check() {
            Some(p) => (node.driver_name().to_string(), p),
            None => {
                eprintln!("vmcrypt: This image format does not support checks");
                return Ok(63);
            }
        },
        Err(e)
            if matches!(
                e.kind(),
                vmcrypt_error::ErrorKind::Corrupt | vmcrypt_error::ErrorKind::LimitExceeded
            ) =>
        {
            ("luks".to_string(), vec![e.display_chain()])
        }
        Err(e) => return Err(e),
    };
    match output {
        "json" => outln!(
            "{}",
            pretty(&serde_json::json!({"filename": filename, "format": fmt,
                                       "check-errors": problems.len(), "corruptions": problems}))
        ),
        _ if problems.is_empty() => outln!("No errors were found on the image."),
        _ => {
            for p in &problems {
                outln!("ERROR: {p}");
            }
            outln!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                problems.len()
            );
        }
    }
    Ok(if problems.is_empty() { 0 } else { 2 })
}

/// The file of `spec` if its top node is (or probes as) qcow2.
fn qcow2_file(spec: &Map<String, Value>) -> Result<Option<String>> {
    let driver = match spec.get("driver") {
        Some(Value::String(d)) => Some(d.as_str()),
        Some(_) => None,
        None => graph::probed_format(spec)?,
    };
    if driver != Some("qcow2") {
        return Ok(None);
    }
    Ok(match spec.get("file") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(m)) => opt_str(m, "filename")?,
        _ => None,
    })
}

/// qemu-img check for qcow2: the checker reads the file node itself (no key needed).
fn check_qcow2(
    common: &Common,
    path: &str,
    output: &str,
    repair: Option<Repair>,
    filename: &str,
) -> Result<u8> {
    // Like qemu-img, an image that cannot be checked (or repaired) exits with 1.
    let fail = |e: Error| {
        eprintln!("vmcrypt: Check failed: {}", e.display_chain());
        Ok(1)
    };
    let file = match FileDriver::open(Path::new(path), repair.is_none()) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let limits = CheckLimits::default();
    let (report, preamble) = match repair {
        None => match qcheck::check_with(&file, &limits) {
            Ok(r) => (r, String::new()),
            Err(e) => return fail(e),
        },
        Some(mode) => {
            let r = match qcheck::repair(&file, mode, &limits) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            for m in &r.messages {
                eprintln!("{m}");
            }
            let pre = r.human_preamble();
            (r.report, pre)
        }
    };
    for m in &report.messages {
        eprintln!("{m}");
    }
    if output == "json" {
        outln!("{}", pretty(&report.json(filename)));
    } else if !common.quiet {
        out!("{preamble}{}", report.human());
    }
    let code = report.exit_code();
    if code == 1 {
        eprintln!("vmcrypt: Check failed");
    }
    Ok(code)
}

pub fn resize(
    common: &Common,
    format: Option<&str>,
    shrink: bool,
    filename: &str,
    size: &str,
) -> Result<u8> {
    let store = secrets(common)?;
    let node = open_image(common, format, filename, &store, false, true)?;
    let cur = node.size();
    let new = if let Some(d) = size.strip_prefix('+') {
        cur.checked_add(parse_size(d)?)
            .ok_or_else(|| Error::usage("size overflow"))?
    } else if let Some(d) = size.strip_prefix('-') {
        cur.checked_sub(parse_size(d)?)
            .ok_or_else(|| Error::usage("cannot shrink below zero"))?
    } else {
        parse_size(size)?
    };
    ensure!(
        new >= cur || shrink,
        Usage,
        "use the --shrink option to perform a shrink operation (data past {new} bytes is lost)"
    );
    node.resize(new)?;
    node.flush()?;
    if !common.quiet {
        outln!("Image resized.");
    }
    Ok(0)
}
