//! Small typed accessors over `serde_json` values with LUKS2-style error messages.
//!
//! LUKS2 keeps 64-bit quantities as decimal strings ("offset":"32768") and small ones as
//! JSON integers ("key_size":64). These helpers fetch a field of the expected JSON type
//! and say which object and field was wrong when it is missing or malformed.
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail};

/// A JSON object.
pub type Obj = Map<String, Value>;

fn missing(what: &str, key: &str, ty: &str) -> Error {
    Error::corrupt(format!(
        "LUKS2 metadata: {what} is missing \"{key}\" ({ty})"
    ))
}

/// `v` as an object.
pub fn as_obj<'a>(v: &'a Value, what: &str) -> Result<&'a Obj> {
    v.as_object()
        .ok_or_else(|| Error::corrupt(format!("LUKS2 metadata: {what} is not a JSON object")))
}

/// Field `key` of `m`, any type.
pub fn field<'a>(m: &'a Obj, key: &str, what: &str) -> Result<&'a Value> {
    m.get(key).ok_or_else(|| missing(what, key, "field"))
}

/// String field.
pub fn get_str<'a>(m: &'a Obj, key: &str, what: &str) -> Result<&'a str> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| missing(what, key, "string"))
}

/// Object field.
pub fn get_obj<'a>(m: &'a Obj, key: &str, what: &str) -> Result<&'a Obj> {
    m.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| missing(what, key, "object"))
}

/// Array field.
pub fn get_arr<'a>(m: &'a Obj, key: &str, what: &str) -> Result<&'a Vec<Value>> {
    m.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| missing(what, key, "array"))
}

/// True for a JSON integer (not a float), as json-c's `json_type_int`.
pub fn is_int(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// Integer field (any size that fits i64/u64).
pub fn get_int(m: &Obj, key: &str, what: &str) -> Result<i128> {
    let v = m
        .get(key)
        .filter(|v| is_int(v))
        .ok_or_else(|| missing(what, key, "integer"))?;
    Ok(v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .unwrap_or_default())
}

/// Integer field that must fit a u32.
pub fn get_u32(m: &Obj, key: &str, what: &str) -> Result<u32> {
    let n = get_int(m, key, what)?;
    u32::try_from(n).map_err(|_| {
        Error::corrupt(format!(
            "LUKS2 metadata: {what} field \"{key}\" value {n} is out of range"
        ))
    })
}

/// Parse a LUKS2 decimal string (digits only, no sign, no overflow).
pub fn parse_u64(s: &str, what: &str) -> Result<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        bail!(
            Corrupt,
            "LUKS2 metadata: {what} \"{s}\" is not a decimal number"
        );
    }
    s.parse::<u64>().map_err(|_| {
        Error::corrupt(format!(
            "LUKS2 metadata: {what} \"{s}\" does not fit in 64 bits"
        ))
    })
}

/// String field holding a decimal u64.
pub fn get_u64_str(m: &Obj, key: &str, what: &str) -> Result<u64> {
    parse_u64(get_str(m, key, what)?, &format!("{what} \"{key}\""))
}

/// Array of strings.
pub fn str_array<'a>(arr: &'a [Value], what: &str) -> Result<Vec<&'a str>> {
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                Error::corrupt(format!(
                    "LUKS2 metadata: {what} element {i} is not a string"
                ))
            })
        })
        .collect()
}

/// An object key that must be a canonical decimal id below `max` ("0".."31").
pub fn parse_id(key: &str, section: &str, max: u32) -> Result<u32> {
    let canonical = !key.is_empty()
        && key.bytes().all(|c| c.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'));
    match key.parse::<u32>() {
        Ok(n) if canonical && n < max => Ok(n),
        _ => bail!(
            Corrupt,
            "LUKS2 metadata: {section} id \"{key}\" is not a number in 0..{max}"
        ),
    }
}

/// Nesting depth of a JSON value (a scalar is 0, `{}` is 1), without recursion.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}
