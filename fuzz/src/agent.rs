//! Fuzz entry point `agent_files` for `vmcrypt-agent`: the files the unlock agent reads.
//! The first input byte picks what the rest is:
//!
//! 0. the agent configuration (TOML), parsed and checked, then every checked view;
//! 1. the mount table (`/proc/self/mountinfo`), scanned for two media, one of them
//!    linked in a `/dev/disk`-like tree to `/dev/null` (so a line whose source is
//!    `/dev/null` mounts it);
//! 2. a key file's path relative to a medium's root, read under the key-file policy:
//!    whatever it names, the bytes of a file outside the medium (reached by a symlink
//!    or otherwise) must never come back.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/agent_files.rs`) and by
//! `crates/vmcrypt-agent/tests/fuzz_replay.rs` (included with `#[path]`).
use crate::replay::Target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vmcrypt_agent::Config;
use vmcrypt_agent::keyfile::{self, KeyFilePolicy};
use vmcrypt_agent::media::{self, MediaSources, MediumId};

/// Every target in this file, by name (the corpus directory names).
pub const TARGETS: &[Target] = &[("agent_files", agent_files)];

/// What the file outside the medium holds.
const OUTSIDE: &[u8] = b"outside-the-medium";

/// A temporary tree: `medium/` (a key, a subdirectory, symlinks in and out),
/// `outside/secret`, `disk/by-label/VMKEYS -> /dev/null`.
fn tree() -> &'static Path {
    static T: OnceLock<tempfile::TempDir> = OnceLock::new();
    T.get_or_init(|| {
        let t = tempfile::tempdir().expect("a temporary directory");
        let p = t.path();
        let mk = |d: &str| std::fs::create_dir_all(p.join(d)).expect("a directory");
        mk("medium/sub");
        mk("outside");
        mk("disk/by-label");
        mk("disk/by-uuid");
        std::fs::write(p.join("outside/secret"), OUTSIDE).expect("a file");
        std::fs::write(p.join("medium/web.key"), b"hunter2").expect("a file");
        std::fs::write(p.join("medium/sub/inner.key"), b"inner").expect("a file");
        let link =
            |to: &Path, at: &str| std::os::unix::fs::symlink(to, p.join(at)).expect("a link");
        link(&p.join("outside/secret"), "medium/out.key");
        link(Path::new("../outside/secret"), "medium/rel-out.key");
        link(Path::new("sub/inner.key"), "medium/in.key");
        link(Path::new("/dev/null"), "disk/by-label/VMKEYS");
        t
    })
    .path()
}

/// See the module documentation.
pub fn agent_files(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match pick % 3 {
        0 => config(text),
        1 => mountinfo(rest),
        _ => key_file(text),
    }
}

fn config(text: &str) {
    let Ok(c) = Config::parse(text) else {
        return;
    };
    for vm in &c.vms {
        let _ = vm.media();
        for d in &vm.disks {
            let _ = d.socket_in(&c.raw.run_dir);
            let _ = d.layer_keys();
            for k in d.all_keys() {
                let _ = (k.describe(), k.medium().map(ToString::to_string));
            }
        }
    }
}

fn mountinfo(data: &[u8]) {
    let t = tree();
    let table: PathBuf = t.join("mountinfo");
    std::fs::write(&table, data).expect("writing the mount table");
    let src = MediaSources {
        watch: vec![],
        require_mount: false,
        mounts: true,
        dev_disk: t.join("disk"),
        mountinfo: table,
    };
    let wanted = [
        MediumId::Label("VMKEYS".into()),
        MediumId::Uuid("0f3c-22aa".into()),
    ];
    let found = media::scan(&src, &wanted);
    assert!(found.len() <= 1, "a medium without a device link was found");
}

fn key_file(rel: &str) {
    let t = tree();
    let policy = KeyFilePolicy::new(64, None);
    if let Ok(k) = keyfile::read(&t.join("medium"), rel, &policy) {
        assert!(
            k.as_bytes() != OUTSIDE,
            "key file '{rel}' read a file outside the medium"
        );
    }
}
