//! qemu-img's `-o` options of `create` and `convert`: every argument merged into one
//! option map, and `-o help`.
use crate::opts::parse_keyval;
use serde_json::{Map, Value};
use vmcrypt_error::{Result, ensure};

/// Whether the `-o` arguments ask for the option list (`-o help` or `-o ?`).
pub fn wants_help(options: &[String]) -> bool {
    options.iter().any(|o| o == "help" || o == "?")
}

/// Merge every `-o` argument into one option map; an option given twice is refused.
pub fn merge_options(options: &[String]) -> Result<Map<String, Value>> {
    let mut all = Map::new();
    for o in options {
        refuse_legacy_encryption(o)?;
        for (k, v) in parse_keyval(o, None)? {
            ensure!(!all.contains_key(&k), Usage, "option '{k}' is given twice");
            all.insert(k, v);
        }
    }
    Ok(all)
}

/// qemu-img's old `-o encryption` / `-o encryption=on` (qcow2's legacy AES encryption,
/// which QEMU itself no longer creates) is refused with the option to use instead,
/// before anything is announced or created.
fn refuse_legacy_encryption(o: &str) -> Result<()> {
    for item in o.split(',') {
        let key = item.split_once('=').map_or(item, |(k, _)| k);
        ensure!(
            key != "encryption",
            Usage,
            "option 'encryption' (qcow2's legacy AES encryption) is not supported: \
             encrypt with -o encrypt.format=luks,encrypt.key-secret=ID"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_encryption_is_refused_naming_the_replacement() {
        for o in [
            "encryption=on",
            "encryption",
            "cluster_size=4096,encryption=off",
        ] {
            let e = merge_options(&[o.to_string()]).unwrap_err();
            assert_eq!(e.kind(), vmcrypt_error::ErrorKind::Usage, "{o}");
            assert!(e.to_string().contains("encrypt.format=luks"), "{o}: {e}");
        }
        assert!(merge_options(&["encrypt.format=luks".into()]).is_ok());
    }

    #[test]
    fn help_and_merge() {
        assert!(wants_help(&["a=1".into(), "?".into()]));
        assert!(!wants_help(&["a=1".into()]));
        let m = merge_options(&["a=1,b=2".into(), "c=3".into()]).unwrap();
        assert_eq!(m.len(), 3);
        let e = merge_options(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(e.to_string().contains("option 'a' is given twice"));
    }
}
