//! qemu-img-compatible image commands: create, info, convert, check, resize, rebase.
use super::{image_spec, open_ctx, open_image, secrets};
use crate::cli::Common;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::qcow2::check::{self as qcheck, CheckLimits, Repair};
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::jobs::create::{create_image, created_spec, options_for};
use vmcrypt_block::jobs::info::{human_info, image_info};
use vmcrypt_block::jobs::rebase::NewBacking;
use vmcrypt_block::opts::{opt_str, parse_keyval, parse_size};
use vmcrypt_block::spec::{ImageArg, NodeSpec};
use vmcrypt_block::{BlockDriver, jobs::convert as conv};
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

/// The backing-file flags of `create` (`-b`, `-F`, `-u`) and its `-o` arguments.
pub struct CreateArgs<'a> {
    pub options: &'a [String],
    pub backing: Option<&'a str>,
    pub backing_format: Option<&'a str>,
    pub unsafe_backing: bool,
}

/// Fold `-b` / `-F` into the option map as `backing_file` / `backing_fmt`.
fn add_backing_options(a: &CreateArgs, opts: &mut Map<String, Value>) -> Result<()> {
    for (flag, key, val) in [
        ("-b", "backing_file", a.backing),
        ("-F", "backing_fmt", a.backing_format),
    ] {
        if let Some(v) = val {
            ensure!(
                !opts.contains_key(key),
                Usage,
                "{flag} and -o {key} cannot both be given"
            );
            opts.insert(key.into(), Value::String(v.into()));
        }
    }
    Ok(())
}

/// The virtual size of the backing file `name` (relative to the new image's directory,
/// as QEMU resolves it), opened read-only for metadata.
fn backing_size(common: &Common, image: &str, name: &str, fmt: Option<&str>) -> Result<u64> {
    let full = graph::resolve_backing(image, name);
    let plain = Common {
        image_opts: false,
        ..common.clone()
    };
    let store = secrets(common)?;
    let node = open_image(&plain, fmt, &full, &store, true, true)
        .with_ctx(|| format!("could not open backing file '{full}'"))?;
    Ok(node.size())
}

pub fn create(
    common: &Common,
    format: &str,
    args: &CreateArgs,
    filename: Option<&str>,
    size: Option<&str>,
) -> Result<u8> {
    if wants_help(args.options) {
        return print_option_help(format);
    }
    let filename = filename.ok_or_else(|| Error::usage("expecting an image file name"))?;
    let mut opts = merge_options(args.options)?;
    add_backing_options(args, &mut opts)?;
    let backing = if format == "qcow2" {
        vmcrypt_block::drivers::qcow2::create::backing_of(&opts)?
    } else {
        ensure!(
            args.backing.is_none() && args.backing_format.is_none(),
            Usage,
            "format '{format}' does not support backing files"
        );
        None
    };
    let size = match (size, opts.remove("size")) {
        (Some(s), None) => parse_size(s)?,
        (None, Some(v)) => parse_size(v.as_str().unwrap_or_default())?,
        (Some(_), Some(_)) => bail!(Usage, "size given both as an argument and as -o size"),
        (None, None) => match &backing {
            Some((name, fmt)) if !args.unsafe_backing => {
                backing_size(common, filename, name, fmt.as_deref())?
            }
            _ => {
                let detached =
                    opt_str(&opts, "detached-header")?.is_some_and(|v| v == "on" || v == "true");
                ensure!(detached, Usage, "image creation needs a size parameter");
                0
            }
        },
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

/// The flags of `rebase`.
pub struct RebaseArgs<'a> {
    pub format: Option<&'a str>,
    /// `-b`: the new backing file ("" removes it).
    pub backing: &'a str,
    pub backing_format: Option<&'a str>,
    /// `-u`: change only the header.
    pub unsafe_mode: bool,
    pub progress: bool,
}

/// `rebase`: safe by default (data that differs between the old and the new backing file
/// is copied into the image first, see `vmcrypt_block::jobs::rebase`); `-u` changes only the
/// header. `-b ""` removes the backing file.
pub fn rebase(common: &Common, a: &RebaseArgs, filename: &str) -> Result<u8> {
    if let Some(f) = a.format {
        ensure!(
            f == "qcow2",
            Unsupported,
            "rebase needs a qcow2 image (format '{f}' has no backing file)"
        );
    }
    if !a.unsafe_mode {
        return rebase_safe(common, a, filename);
    }
    ensure!(
        !common.image_opts,
        Unsupported,
        "rebase -u takes a file name, not --image-opts"
    );
    let new = if a.backing.is_empty() {
        ensure!(
            a.backing_format.is_none(),
            Usage,
            "-F cannot be used when removing the backing file (-b \"\")"
        );
        None
    } else {
        ensure!(
            a.backing_format.is_some(),
            Usage,
            "a backing format is required with -u (-F FMT)"
        );
        Some((a.backing, a.backing_format))
    };
    vmcrypt_block::drivers::qcow2::create::rebase_unsafe(Path::new(filename), new)?;
    Ok(0)
}

/// Safe `rebase`: the image's keys come from its options (`encrypt.key-secret`,
/// `backing.encrypt.key-secret`), the new backing file's from a `json:` `-b`.
fn rebase_safe(common: &Common, a: &RebaseArgs, filename: &str) -> Result<u8> {
    let store = secrets(common)?;
    let spec = image_spec(common, a.format, filename)?;
    let ctx = open_ctx(common, &store, false, false);
    // qemu-img ignores -F when the backing file is removed.
    let new = (!a.backing.is_empty()).then_some(NewBacking {
        name: a.backing,
        format: a.backing_format,
    });
    let mut bar = Progress::new(a.progress && !common.quiet);
    vmcrypt_block::jobs::rebase::rebase(&spec, new, &ctx, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    Ok(0)
}

pub fn info(
    common: &Common,
    format: Option<&str>,
    output: &str,
    backing_chain: bool,
    filename: &str,
) -> Result<u8> {
    ensure!(
        output == "json" || output == "human",
        Usage,
        "--output must be human or json, not '{output}'"
    );
    let store = secrets(common)?;
    let mut node = open_image(common, format, filename, &store, true, true)?;
    let mut infos = Vec::new();
    let mut human = Vec::new();
    loop {
        infos.push(image_info(node.as_ref()));
        human.push(human_info(node.as_ref(), &node.filename()));
        let next = match node.as_backing().and_then(|b| b.backing_info()) {
            Some(b) if backing_chain => b,
            _ => break,
        };
        ensure!(
            infos.len() < graph::MAX_BACKING_DEPTH,
            LimitExceeded,
            "the backing chain of '{filename}' is deeper than {} images (a loop?)",
            graph::MAX_BACKING_DEPTH
        );
        let path = graph::resolve_backing(&node.filename(), &next.filename);
        let spec = graph::spec_from_filename(&path, next.format.as_deref())?;
        let ctx = open_ctx(common, &store, true, true);
        node =
            graph::open(&spec, &ctx).with_ctx(|| format!("opening the backing file '{path}'"))?;
    }
    match (output, backing_chain) {
        ("json", false) => outln!("{}", pretty(&infos[0])),
        ("json", true) => outln!("{}", pretty(&Value::Array(infos))),
        _ => out!("{}", human.join("\n")),
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
    let ctx = open_ctx(a.common, &store, false, false);
    let (dst, zeroed): (Arc<dyn BlockDriver>, bool) = if a.no_create {
        ensure!(
            opts.is_empty(),
            Usage,
            "-o cannot be used with -n (the target already exists)"
        );
        let spec = if a.target_image_opts {
            let arg = ImageArg {
                name: target,
                format: None,
                image_opts: true,
                force_share: false,
            };
            arg.to_spec()?
        } else {
            graph::spec_from_filename(target, Some(a.out_format))?
        };
        (graph::open(&spec, &ctx).ctx("target")?, false)
    } else {
        let file = create_image(Path::new(target), a.out_format, src.size(), &opts, &store)
            .ctx("target")?;
        let raw_zeroed = a.out_format == "raw" && file.has_zero_init();
        drop(file);
        let spec = created_spec(target, a.out_format, &opts)?;
        let dst = graph::open(&spec, &ctx).ctx("target")?;
        // A new qcow2 without a backing file reads as zeros (encrypted or not: its
        // clusters are unallocated); a LUKS payload never does.
        let zeroed = raw_zeroed || (a.out_format == "qcow2" && dst.has_zero_init());
        (dst, zeroed)
    };
    let mut bar = Progress::new(a.progress && !a.common.quiet);
    conv::convert(src.as_ref(), dst.as_ref(), zeroed, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
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
    let ctx = open_ctx(common, &store, true, true);
    let (fmt, problems) = match graph::open(&spec, &ctx) {
        Ok(node) => match node.as_check() {
            Some(c) => (node.driver_name().to_string(), c.check()),
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
fn qcow2_file(spec: &NodeSpec) -> Result<Option<String>> {
    let driver = match spec.driver() {
        Some(d) => Some(d),
        None => graph::probed_format(spec)?,
    };
    if driver != Some("qcow2") {
        return Ok(None);
    }
    spec.file_name()
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

/// `commit`: the image's data goes into its backing file (opened read-write, with its
/// own key from `backing.encrypt.key-secret`), then the image is emptied unless `-d`.
pub fn commit(
    common: &Common,
    format: Option<&str>,
    keep: bool,
    progress: bool,
    filename: &str,
) -> Result<u8> {
    let store = secrets(common)?;
    let spec = image_spec(common, format, filename)?;
    let ctx = OpenContext {
        writable_backing: true,
        ..open_ctx(common, &store, false, false)
    };
    let node = graph::open(&spec, &ctx)?;
    let mut bar = Progress::new(progress && !common.quiet);
    let Some(top) = node.as_commit() else {
        bail!(
            Unsupported,
            "driver '{}' has no backing file to commit into",
            node.driver_name()
        );
    };
    top.commit(keep, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    if !common.quiet {
        outln!("Image committed.");
    }
    Ok(0)
}

/// qemu-img's `-p` progress line on stderr, "    (12.34/100%)", redrawn when it changes.
struct Progress {
    show: bool,
    last: Option<u64>,
}

impl Progress {
    fn new(show: bool) -> Progress {
        Progress { show, last: None }
    }

    fn update(&mut self, done: u64, total: u64) {
        let hundredths = (u128::from(done) * 10_000)
            .checked_div(u128::from(total))
            .map_or(10_000, |h| h as u64);
        if self.show && self.last != Some(hundredths) {
            self.last = Some(hundredths);
            eprint!("    ({}.{:02}/100%)\r", hundredths / 100, hundredths % 100);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.show {
            eprintln!();
        }
    }
}
