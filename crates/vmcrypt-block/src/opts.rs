//! QEMU's option syntaxes turned into JSON trees: `key=value,a.b=c` (keyval, with `,,`
//! escaping a comma) and `json:{...}` filenames. Dotted keys become nested objects, so
//! `file.filename=x` and `{"file": {"filename": "x"}}` are the same tree.
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail};

/// Split `s` at unescaped commas (`,,` is a literal comma).
pub fn split_commas(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Parse `a=1,b.c=2` into a nested object. A first element without `=` is stored under
/// `implied_key` (QEMU's `--object secret,id=..` form) if one is given.
pub fn parse_keyval(s: &str, implied_key: Option<&str>) -> Result<Map<String, Value>> {
    let mut root = Map::new();
    for (i, part) in split_commas(s).into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match implied_key {
                Some(ik) if i == 0 => (ik.to_string(), part),
                _ => bail!(Usage, "invalid option '{part}': expected KEY=VALUE"),
            },
        };
        insert_dotted(&mut root, &k, Value::String(v))?;
    }
    Ok(root)
}

/// Insert `value` at a dotted path (`file.filename`), creating objects as needed.
pub fn insert_dotted(root: &mut Map<String, Value>, key: &str, value: Value) -> Result<()> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!(Usage, "invalid option name '{key}'");
    }
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty");
    let mut cur = root;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match entry {
            Value::Object(m) => m,
            _ => bail!(
                Usage,
                "option '{key}' conflicts with a value already given for '{p}'"
            ),
        };
    }
    if cur.contains_key(last) {
        bail!(Usage, "option '{key}' is given twice");
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Parse a `json:{...}` filename (without the prefix) into a nested object; dotted keys
/// inside the JSON are expanded as QEMU does.
pub fn parse_json_filename(json: &str) -> Result<Map<String, Value>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::usage(format!("invalid json: filename: {e}")))?;
    match v {
        Value::Object(m) => expand_dotted(m),
        _ => bail!(Usage, "a json: filename must be a JSON object"),
    }
}

fn expand_dotted(m: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in m {
        let v = match v {
            Value::Object(inner) => Value::Object(expand_dotted(inner)?),
            other => other,
        };
        if k.contains('.') {
            insert_dotted(&mut out, &k, v)?;
        } else if let (Some(Value::Object(existing)), Value::Object(new)) = (out.get_mut(&k), &v) {
            for (nk, nv) in new.clone() {
                existing.insert(nk, nv);
            }
        } else {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Read an option as a string (QEMU accepts numbers and bools as strings too).
pub fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => bail!(Usage, "option '{key}' must be a string"),
    }
}

/// Read an option as a boolean (`on/off/true/false/yes/no`).
pub fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.as_str() {
            "on" | "true" | "yes" => Ok(Some(true)),
            "off" | "false" | "no" => Ok(Some(false)),
            _ => bail!(Usage, "option '{key}' expects on/off, got '{s}'"),
        },
        Some(_) => bail!(Usage, "option '{key}' expects on/off"),
    }
}

/// Read an option as an unsigned number (accepts size suffixes k/M/G/T).
pub fn opt_u64(m: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::usage(format!("option '{key}' must be a non-negative integer"))),
        Some(Value::String(s)) => parse_size(s)
            .map(Some)
            .map_err(|e| e.context(format!("option '{key}'"))),
        Some(_) => bail!(Usage, "option '{key}' must be a number"),
    }
}

/// Parse a size like qemu-img: plain bytes, or a k/K, M, G, T, P, E suffix (powers of 1024),
/// optional trailing `B`/`iB`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => bail!(Usage, "invalid size '{s}': unknown suffix '{c}'"),
            };
            (&t[..t.len() - 1], 1u64 << shift)
        }
        _ => (t, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| Error::usage(format!("size '{s}' is too large")));
    }
    match num.parse::<f64>() {
        Ok(f) if f >= 0.0 && mult > 1 && (f * mult as f64) < u64::MAX as f64 => {
            Ok((f * mult as f64) as u64)
        }
        _ => bail!(Usage, "invalid size '{s}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyval_nests_and_unescapes() {
        let m = parse_keyval("driver=luks,key-secret=s0,file.filename=a,,b.img", None).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"driver":"luks","key-secret":"s0","file":{"filename":"a,b.img"}})
        );
        let m = parse_keyval("secret,id=s0,file=/x", Some("qom-type")).unwrap();
        assert_eq!(m["qom-type"], "secret");
        assert!(parse_keyval("a=1,a=2", None).is_err());
        assert!(parse_keyval("novalue", None).is_err());
    }

    #[test]
    fn json_filenames_expand_dots() {
        let m = parse_json_filename(
            r#"{"driver":"luks","file.filename":"x","header":{"filename":"h"}}"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"driver":"luks","file":{"filename":"x"},"header":{"filename":"h"}})
        );
        assert!(parse_json_filename("[1]").is_err());
        assert!(parse_json_filename("{oops").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
    }
}
