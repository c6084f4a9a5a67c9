//! `libvirt::push` against a stand-in for virsh (`PushRequest::virsh`) that records its
//! arguments and stdin: the commands and their order, the XML and the value on stdin
//! and never in the arguments, `--ephemeral`, "created" vs "updated", the undo of a
//! failed set-value, and the refusals made before virsh runs. (The real libvirtd is
//! driven by the CLI's tests/libvirt_push.rs.)
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use vmcrypt_error::ErrorKind;
use vmcrypt_secrets::libvirt::{PushRequest, push};
use vmcrypt_secrets::{MasterKeyConfig, SecretDef, Store, Uuid};

const A: &str = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";
const VALUE: &[u8] = b"pushed \xc3\xa9 value";

/// A virsh that logs each call's arguments to `calls`, saves the stdin of
/// secret-define / secret-set-value to `xml` / `value`, fails secret-dumpxml unless
/// `known` exists and secret-set-value when `fail-set` exists.
fn fake_virsh(dir: &Path) -> String {
    let d = dir.display();
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {d}/calls\ncase \"$*\" in\n\
         *secret-dumpxml*) [ -e {d}/known ] || {{ echo 'error: no secret' >&2; exit 1; }} ;;\n\
         *secret-define*) cat > {d}/xml ;;\n\
         *secret-set-value*) [ -e {d}/fail-set ] && {{ echo 'error: refused' >&2; exit 1; }}; cat > {d}/value ;;\n\
         esac\nexit 0\n"
    );
    let p = dir.join("virsh");
    fs::write(&p, script).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn calls(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string(dir.join("calls")).unwrap_or_default();
    fs::remove_file(dir.join("calls")).ok();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn push_through_a_recording_virsh() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let store = Store::new(Some(dir.join("store")), MasterKeyConfig::default());
    let uuid: Uuid = A.parse().unwrap();
    let virsh = std::path::PathBuf::from(fake_virsh(dir));
    let req = |ephemeral| PushRequest {
        uri: "test:///x",
        ephemeral,
        virsh: Some(&virsh),
    };

    // Refused before virsh runs: unknown secret, no value yet.
    let e = push(&store, &uuid, &req(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let def = SecretDef::parse(&format!(
        "<secret ephemeral='no' private='yes'><uuid>{A}</uuid>\
         <usage type='volume'><volume>/v.img</volume></usage></secret>"
    ))
    .unwrap();
    store.define(&def).unwrap();
    let e = push(&store, &uuid, &req(false)).unwrap_err();
    assert!(e.to_string().contains("does not have a value"), "{e}");
    assert!(calls(dir).is_empty(), "virsh ran before the store was read");

    store.set_value(&uuid, VALUE).unwrap();
    let p = push(&store, &uuid, &req(false)).unwrap();
    assert!(p.created && p.private && !p.ephemeral && p.text, "{p:?}");
    let c = calls(dir);
    assert_eq!(
        c,
        [
            "-q -c test:///x uri".to_owned(),
            format!("-q -c test:///x secret-dumpxml {A}"),
            "-q -c test:///x secret-define /dev/stdin".to_owned(),
            format!("-q -c test:///x secret-set-value {A} --file /dev/stdin --plain"),
        ]
    );
    assert_eq!(fs::read_to_string(dir.join("xml")).unwrap(), def.to_xml());
    assert_eq!(fs::read(dir.join("value")).unwrap(), VALUE);

    // Already in libvirt: updated; --ephemeral changes only libvirt's copy.
    fs::write(dir.join("known"), b"").unwrap();
    let p = push(&store, &uuid, &req(true)).unwrap();
    assert!(!p.created && p.ephemeral, "{p:?}");
    calls(dir);
    let xml = fs::read_to_string(dir.join("xml")).unwrap();
    assert!(
        xml.starts_with("<secret ephemeral='yes' private='yes'>"),
        "{xml}"
    );
    assert!(!store.definition(&uuid).unwrap().ephemeral);

    // A failed set-value undoes a secret the push created, not one libvirt had.
    fs::write(dir.join("fail-set"), b"").unwrap();
    let e = push(&store, &uuid, &req(false)).unwrap_err();
    assert!(e.display_chain().contains("refused"), "{e:?}");
    assert!(!calls(dir).iter().any(|c| c.contains("secret-undefine")));
    fs::remove_file(dir.join("known")).unwrap();
    push(&store, &uuid, &req(false)).unwrap_err();
    assert_eq!(
        calls(dir).last().unwrap(),
        &format!("-q -c test:///x secret-undefine {A}")
    );
    fs::remove_file(dir.join("fail-set")).unwrap();

    // Over virsh's 1 KiB: refused before virsh runs; a binary value is flagged.
    store.set_value(&uuid, &[b'a'; 1025]).unwrap();
    let e = push(&store, &uuid, &req(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(calls(dir).is_empty());
    store.set_value(&uuid, b"a\0b").unwrap();
    assert!(!push(&store, &uuid, &req(false)).unwrap().text);
    // No virsh at all: named.
    let missing = dir.join("missing");
    let no_virsh = PushRequest {
        virsh: Some(&missing),
        ..req(false)
    };
    let e = push(&store, &uuid, &no_virsh).unwrap_err();
    assert!(e.to_string().contains("libvirt-clients"), "{e}");
}
