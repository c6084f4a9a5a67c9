//! `qemu-img info`-shaped descriptions of an open graph: the JSON object
//! (`--output=json`) and the human text, with qemu-img's field names and size formatting.
use crate::driver::{BlockDriver, allocated_size};
use serde_json::{Map, Value, json};

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
    if let Some(b) = node.as_backing().and_then(|b| b.backing_info()) {
        let full = crate::graph::resolve_backing(&node.filename(), &b.filename);
        m.insert("backing-filename".into(), json!(b.filename));
        m.insert("full-backing-filename".into(), json!(full));
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
    if let Some(b) = node.as_backing().and_then(|b| b.backing_info()) {
        let file = &b.filename;
        let full = crate::graph::resolve_backing(&node.filename(), file);
        if full == *file {
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
