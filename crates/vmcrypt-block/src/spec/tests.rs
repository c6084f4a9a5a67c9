//! Parsing and printing node specs: every option lands in its typed field, unknown ones
//! are refused with their name, and a spec prints back to the same tree.
use super::*;
use crate::opts::parse_keyval;
use vmcrypt_error::ErrorKind;

fn parse(keyval: &str) -> Result<NodeSpec> {
    NodeSpec::from_options(&parse_keyval(keyval, None)?)
}

#[test]
fn luks_options_are_typed() {
    let spec =
        parse("driver=luks2,key-secret=s0,key-slot=3,file.filename=d,header=h,cache.direct=on")
            .unwrap();
    let NodeSpec::Luks(l) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(l.key_secret.as_deref(), Some("s0"));
    assert_eq!(l.key_slot, Some(3));
    assert_eq!(*l.file, NodeSpec::File(FileSpec::new("d")));
    assert!(matches!(l.header.as_deref(), Some(NodeSpec::File(f)) if f.filename == "h" && f.bare));
    assert_eq!(spec.driver(), Some("luks"));
    assert_eq!(spec.file_name().unwrap().as_deref(), Some("d"));
}

#[test]
fn unknown_options_are_refused_by_name() {
    let e = parse("driver=raw,file.filename=x,bogus=1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert_eq!(
        e.message(),
        "block driver 'raw' does not support the option 'bogus'"
    );
    let e = parse("driver=luks,file.filename=x,file.nope=1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "opening child 'file': block driver 'file' does not support the option 'nope'"
    );
    let e = parse("driver=qcow2,file.filename=x,encrypt.iter-time=1").unwrap_err();
    assert!(e.message().contains("'encrypt.iter-time'"), "{e}");
    let e = parse("driver=vmdk,file.filename=x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = parse("driver=qcow2,file.filename=x,data-file.filename=y").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = parse("driver=raw").unwrap_err();
    assert!(e.message().contains("needs a 'file' child"), "{e}");
}

#[test]
fn a_node_without_driver_is_left_to_the_probe() {
    let spec = parse("key-secret=s0,file.filename=x").unwrap();
    assert!(matches!(spec, NodeSpec::Probe(_)));
    assert_eq!(spec.driver(), None);
    assert_eq!(spec.file_name().unwrap().as_deref(), Some("x"));
    let spec = spec_from_filename("plain.img", None).unwrap();
    assert!(matches!(spec, NodeSpec::Probe(_)));
}

#[test]
fn qcow2_backing_options_wait_for_the_header() {
    let spec = parse("driver=qcow2,file.filename=t,backing.encrypt.key-secret=sb").unwrap();
    let NodeSpec::Qcow2(q) = &spec else {
        panic!("{spec:?}")
    };
    let BackingSpec::Options(b) = &q.backing else {
        panic!("{q:?}")
    };
    assert!(!b.has_driver() && !b.has_file());
    let json = r#"json:{"driver":"qcow2","file":"t","backing":null}"#;
    let NodeSpec::Qcow2(q) = spec_from_filename(json, None).unwrap() else {
        panic!()
    };
    assert_eq!(q.backing, BackingSpec::Null);
}

#[test]
fn force_share_turns_locking_off_on_the_protocol_node() {
    for name in [
        "driver=raw,file.filename=x",
        "driver=raw,file=x",
        "file.filename=x",
    ] {
        let arg = ImageArg {
            name: name.into(),
            format: None,
            image_opts: true,
            force_share: true,
        };
        let opts = arg.to_spec().unwrap().to_options();
        assert_eq!(opts["file"]["locking"], "off", "{name}");
    }
    let e = ImageArg {
        name: "driver=raw,file.filename=x".into(),
        format: Some("raw".into()),
        image_opts: true,
        force_share: false,
    }
    .to_spec()
    .unwrap_err();
    assert_eq!(e.message(), "--image-opts and -f are mutually exclusive");
}

#[test]
fn specs_print_back_to_the_same_tree() {
    let text = r#"{"driver":"qcow2","file":{"driver":"file","filename":"a"},"encrypt":{"format":"luks","key-secret":"s0"},"aio":"threads"}"#;
    let spec = spec_from_filename(&format!("json:{text}"), None).unwrap();
    assert_eq!(spec.to_json_filename(), format!("json:{text}"));
    let again = spec_from_filename(&spec.to_json_filename(), Some("qcow2")).unwrap();
    assert_eq!(again, spec);
}
