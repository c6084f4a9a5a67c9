//! The `info` job: describe an image (and with `backing_chain` every image below it) in
//! `qemu-img info`'s shapes: the JSON object (`--output=json`) and the human text, with
//! qemu-img's field names and size formatting.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::driver::{BlockDriver, allocated_size};
use crate::graph;
use serde_json::{Map, Value, json};
use vmcrypt_error::{Result, ResultExt, ensure};

/// What `vmcrypt info` was asked for.
#[derive(Clone, Debug, Default)]
pub struct InfoRequest {
    pub image: ImageArg,
    /// Also describe every backing file of the chain.
    pub backing_chain: bool,
}

/// One image of the report, in both renderings.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    /// qemu-img's JSON object.
    pub json: Value,
    /// qemu-img's human text (ends with a newline).
    pub human: String,
}

/// The images described, top first.
#[derive(Clone, Debug, PartialEq)]
pub struct InfoReport {
    pub images: Vec<ImageInfo>,
    /// Whether the whole chain was asked for (JSON is then an array).
    pub backing_chain: bool,
}

impl InfoReport {
    /// `--output=json`: the top image's object, or an array of the chain.
    pub fn json(&self) -> Value {
        if self.backing_chain {
            Value::Array(self.images.iter().map(|i| i.json.clone()).collect())
        } else {
            self.images[0].json.clone()
        }
    }

    /// The human text, images separated by blank lines.
    pub fn human(&self) -> String {
        let parts: Vec<&str> = self.images.iter().map(|i| i.human.as_str()).collect();
        parts.join("\n")
    }
}

/// A node's backing file: the name in its header, where that resolves to, its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingFile {
    /// The name as stored.
    pub filename: String,
    /// The name resolved against the image's directory (as QEMU opens it).
    pub full_filename: String,
    pub format: Option<String>,
}

impl BackingFile {
    /// The backing file of `node`, if it has one.
    pub fn of(node: &dyn BlockDriver) -> Option<BackingFile> {
        let crate::driver::BackingInfo { filename, format } = node.as_backing()?.backing_info()?;
        let full_filename = graph::resolve_backing(&node.filename(), &filename);
        Some(BackingFile {
            filename,
            full_filename,
            format,
        })
    }
}

/// Describe the image of `req` (opened read-only, metadata only: no key needed).
pub fn run(req: &InfoRequest, env: &Env, events: &mut dyn Events) -> Result<InfoReport> {
    let mut node = req.image.open(env, Access::METADATA, events)?;
    let mut images = Vec::new();
    let mut seen = graph::BackingLoop::default();
    seen.visit(&req.image.name, &node.filename())?;
    loop {
        images.push(ImageInfo {
            json: image_info(node.as_ref()),
            human: human_info(node.as_ref(), &node.filename()),
        });
        let next = match BackingFile::of(node.as_ref()) {
            Some(b) if req.backing_chain => b,
            _ => break,
        };
        ensure!(
            images.len() < graph::MAX_BACKING_DEPTH,
            LimitExceeded,
            "the backing chain of '{}' is deeper than {} images (a loop?)",
            req.image.name,
            graph::MAX_BACKING_DEPTH
        );
        let path = next.full_filename;
        seen.visit(&req.image.name, &path)?;
        let layer = ImageArg {
            force_share: req.image.force_share,
            ..ImageArg::file(&path, next.format.as_deref())
        };
        node = graph::open(&layer.to_spec()?, &layer.context(env, Access::METADATA)?)
            .with_ctx(|| format!("opening the backing file '{path}'"))?;
    }
    Ok(InfoReport {
        images,
        backing_chain: req.backing_chain,
    })
}

/// The JSON `qemu-img info --output=json` prints for `node`.
pub fn image_info(node: &dyn BlockDriver) -> Value {
    let children: Vec<Value> = node
        .children()
        .iter()
        .map(|c| json!({"name": c.role, "info": image_info(c.node.as_ref())}))
        .collect();
    let mut m = Map::new();
    m.insert("children".into(), Value::Array(children));
    m.insert("virtual-size".into(), json!(reported_size(node)));
    m.insert("filename".into(), json!(node.filename()));
    let fmt = node.as_introspect();
    if let Some(c) = fmt.and_then(|f| f.cluster_size()) {
        m.insert("cluster-size".into(), json!(c));
    }
    if let Some(b) = BackingFile::of(node) {
        m.insert("backing-filename".into(), json!(b.filename));
        m.insert("full-backing-filename".into(), json!(b.full_filename));
        if let Some(f) = b.format {
            m.insert("backing-filename-format".into(), json!(f));
        }
    }
    m.insert("format".into(), json!(node.driver_name()));
    if let Some(a) = allocated_size(node) {
        m.insert("actual-size".into(), json!(a));
    }
    let fs = match fmt.and_then(|f| f.format_specific()) {
        Some(data) => Some(json!({"type": node.driver_name(), "data": data})),
        None if node.driver_name() == "file" => Some(json!({"type": "file", "data": {}})),
        None => None,
    };
    if let Some(fs) = fs {
        m.insert("format-specific".into(), fs);
    }
    if fmt.is_some_and(|f| f.is_encrypted()) {
        m.insert("encrypted".into(), json!(true));
    }
    m.insert("dirty-flag".into(), json!(false));
    Value::Object(m)
}

/// qemu's `size_to_str`: three significant digits and a binary unit ("2.97 MiB").
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if val == 0 {
        return "0 B".into();
    }
    // Switch to the next unit once the integer part reaches 1000.
    let exp = ((val as f64) * 1.024).log2().floor() as i32;
    let i = (exp / 10).clamp(0, 6) as usize;
    let scaled = val as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", g3(scaled), SUFFIXES[i])
}

/// printf's `%0.3g` for values in [0.1, 1000).
fn g3(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The size QEMU reports for a node: protocol nodes in whole 512-byte sectors
/// (QEMU keeps their length as a sector count, rounded up).
fn reported_size(node: &dyn BlockDriver) -> u64 {
    if node.driver_name() == "file" {
        node.size().div_ceil(512) * 512
    } else {
        node.size()
    }
}

/// The human text `qemu-img info` prints for `node` called `name`.
pub fn human_info(node: &dyn BlockDriver, name: &str) -> String {
    let mut s = format!("image: {name}\nfile format: {}\n", node.driver_name());
    s += &format!(
        "virtual size: {} ({} bytes)\n",
        size_to_str(node.size()),
        node.size()
    );
    if let Some(a) = allocated_size(node) {
        s += &format!("disk size: {}\n", size_to_str(a));
    }
    let fmt = node.as_introspect();
    if fmt.is_some_and(|f| f.is_encrypted()) {
        s += "encrypted: yes\n";
    }
    if let Some(c) = fmt.and_then(|f| f.cluster_size()) {
        s += &format!("cluster_size: {c}\n");
    }
    if let Some(b) = BackingFile::of(node) {
        let (file, full) = (&b.filename, &b.full_filename);
        if full == file {
            s += &format!("backing file: {file}\n");
        } else {
            s += &format!("backing file: {file} (actual path: {full})\n");
        }
        if let Some(f) = b.format {
            s += &format!("backing file format: {f}\n");
        }
    }
    if let Some(data) = fmt.and_then(|f| f.format_specific()) {
        s += "Format specific information:\n";
        render(&data, 1, &mut s);
    }
    for c in node.children() {
        s += &format!("Child node '/{}':\n", c.role);
        s += &format!("    filename: {}\n", c.node.filename());
        s += &format!("    protocol type: {}\n", c.node.driver_name());
        s += &format!(
            "    file length: {} ({} bytes)\n",
            size_to_str(reported_size(c.node.as_ref())),
            reported_size(c.node.as_ref())
        );
        if let Some(a) = allocated_size(c.node.as_ref()) {
            s += &format!("    disk size: {}\n", size_to_str(a));
        }
    }
    s
}

fn render(v: &Value, depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let key = k.replace('-', " ");
                match val {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        render(val, depth + 1, out);
                    }
                    Value::String(st) => out.push_str(&format!("{pad}{key}: {st}\n")),
                    other => out.push_str(&format!("{pad}{key}: {other}\n")),
                }
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                out.push_str(&format!("{pad}[{i}]:\n"));
                render(val, depth + 1, out);
            }
        }
        other => out.push_str(&format!("{pad}{other}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_a_raw_file() {
        let sc = crate::jobs::testutil::Scratch::new();
        let name = sc.raw("img", &vec![0u8; 1 << 20]);
        let req = InfoRequest {
            image: ImageArg::file(&name, Some("raw")),
            backing_chain: false,
        };
        let report = run(&req, &Env::default(), &mut crate::jobs::NoEvents).unwrap();
        assert_eq!(report.images.len(), 1);
        assert_eq!(report.json()["format"], "raw");
        assert_eq!(report.json()["virtual-size"], 1 << 20);
        assert!(
            report
                .human()
                .starts_with(&format!("image: {name}\nfile format: raw\n"))
        );
        assert!(
            report
                .human()
                .contains("virtual size: 1 MiB (1048576 bytes)\n")
        );
        let chain = InfoRequest {
            backing_chain: true,
            ..req
        };
        let report = run(&chain, &Env::default(), &mut crate::jobs::NoEvents).unwrap();
        assert!(report.json().is_array());
    }

    #[test]
    fn sizes_print_like_qemu() {
        // Values from qemu-img info output in shared/vectors/qemu/INFO.txt.
        assert_eq!(size_to_str(1_048_576), "1 MiB");
        assert_eq!(size_to_str(3_117_056), "2.97 MiB");
        assert_eq!(size_to_str(1_310_720), "1.25 MiB");
        assert_eq!(size_to_str(593_920), "580 KiB");
        assert_eq!(size_to_str(4_259_840), "4.06 MiB");
        assert_eq!(size_to_str(2_068_480), "1.97 MiB");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
    }
}
