//! A node spec in the syntaxes of QEMU's `-blockdev` (JSON, or dotted keyval with `,,`
//! escaping a comma), and words quoted for a POSIX shell.
use crate::spec::NodeSpec;
use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail, ensure};

/// How a `-blockdev` argument is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// `driver=luks,file.filename=a,,b` (`--output human`).
    Keyval,
    /// `{"driver":"luks",...}` (`--output json`).
    Json,
}

impl Syntax {
    /// The syntax `--output NAME` asks for.
    pub fn from_output(name: &str) -> Result<Syntax> {
        match name {
            "human" => Ok(Syntax::Keyval),
            "json" => Ok(Syntax::Json),
            o => bail!(Usage, "--output '{o}' must be human or json"),
        }
    }

    /// `node` in this syntax.
    pub fn render(self, node: &Map<String, Value>) -> String {
        match self {
            Syntax::Keyval => keyval(node),
            Syntax::Json => Value::Object(node.clone()).to_string(),
        }
    }
}

/// The node as QEMU's -blockdev wants it: `driver`, then `node-name`, then its options,
/// every child an object with an explicit driver.
pub(crate) fn qemu_node(spec: &NodeSpec, node_name: &str) -> Result<Map<String, Value>> {
    ensure!(
        !node_name.is_empty()
            && node_name.starts_with(|c: char| c.is_ascii_alphabetic())
            && node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        Usage,
        "--node-name '{node_name}' must start with a letter and hold only letters, digits, '-', '_', '.'"
    );
    let mut options = spec.to_options();
    let mut top = Map::new();
    if let Some(d) = options.shift_remove("driver") {
        top.insert("driver".into(), d);
    }
    top.insert("node-name".into(), Value::String(node_name.into()));
    options.shift_remove("node-name");
    top.extend(options);
    Ok(top)
}

/// QEMU's dotted keyval syntax for a node (`driver=luks,file.filename=a,,b`).
pub(crate) fn keyval(node: &Map<String, Value>) -> String {
    let mut parts = Vec::new();
    flatten("", node, &mut parts);
    parts.join(",")
}

fn flatten(prefix: &str, node: &Map<String, Value>, out: &mut Vec<String>) {
    for (k, v) in node {
        let key = format!("{prefix}{k}");
        let val = match v {
            Value::Object(m) => {
                flatten(&format!("{key}."), m, out);
                continue;
            }
            Value::String(s) => s.replace(',', ",,"),
            Value::Bool(b) => (if *b { "on" } else { "off" }).to_string(),
            other => other.to_string(),
        };
        out.push(format!("{key}={val}"));
    }
}

/// `s` as one POSIX shell word: unchanged when it holds only safe characters, otherwise
/// in single quotes (a quote inside becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::parse_keyval;

    #[test]
    fn keyval_escapes_commas_and_nests() {
        let node: Map<String, Value> = serde_json::from_str(
            r#"{"driver":"luks","file":{"driver":"file","filename":"a,b"},"x":true}"#,
        )
        .unwrap();
        assert_eq!(
            keyval(&node),
            "driver=luks,file.driver=file,file.filename=a,,b,x=on"
        );
        // Round trip through the keyval parser QEMU's syntax is modelled on.
        let back = parse_keyval(&keyval(&node), None).unwrap();
        assert_eq!(back["file"]["filename"], "a,b");
    }

    #[test]
    fn typed_spec_prints_children_with_drivers() {
        let spec = NodeSpec::from_options(
            &parse_keyval("driver=raw,file=a,,b,offset=512,cache.direct=on", None).unwrap(),
        )
        .unwrap();
        let node = qemu_node(&spec, "disk0").unwrap();
        assert_eq!(
            keyval(&node),
            "driver=raw,node-name=disk0,file.driver=file,file.filename=a,,b,offset=512,cache.direct=on"
        );
        assert_eq!(
            Syntax::Json.render(&node),
            r#"{"driver":"raw","node-name":"disk0","file":{"driver":"file","filename":"a,b"},"offset":512,"cache":{"direct":"on"}}"#
        );
        assert!(qemu_node(&spec, "0bad").is_err());
    }

    #[test]
    fn shell_quote_round_trips_through_sh() {
        for s in ["plain", "it's", "a b", "", "{\"k\":\"v\"}", "$HOME`x`"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}
