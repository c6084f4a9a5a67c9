//! The one-node Ceph cluster the rbd tests run against (127.0.0.1 only): started once
//! per machine by `shared/ceph/start-ceph.sh` (idempotent, ~10 s the first time, a
//! no-op while it runs; `.ci/run` stops it after the tests), serialised between test
//! processes with `flock`. A missing Ceph fails the test, it is never skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the cluster keeps its state (and `ceph.conf`).
pub fn ceph_dir() -> String {
    std::env::var("CEPH_DIR").unwrap_or_else(|_| "/tmp/vmcrypt-ceph".into())
}

/// The cluster's ceph.conf, after making sure the cluster runs.
pub fn ceph_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = shared_dir().join("ceph/start-ceph.sh");
        assert!(
            script.is_file(),
            "{} is missing: the rbd tests start their cluster with it",
            script.display()
        );
        for tool in ["ceph-mon", "ceph-osd", "rbd", "flock", "python3"] {
            assert!(
                which(tool),
                "{tool} not found: install ceph-mon ceph-osd ceph-common ceph-mgr \
                 uuid-runtime python3-rbd (.ci/install-deps does); the rbd tests are never skipped"
            );
        }
        let dir = ceph_dir();
        // -o: the lock's descriptor is closed before the script runs, so the daemons
        // it starts do not inherit it (they would hold the lock for the cluster's life
        // and every later `flock` would wait forever).
        let out = Command::new("flock")
            .arg("-o")
            .arg(format!("{dir}.lock"))
            .arg("bash")
            .arg(&script)
            .env("CEPH_DIR", &dir)
            .output()
            .expect("running start-ceph.sh");
        assert!(
            out.status.success(),
            "start-ceph.sh failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!("{dir}/ceph.conf");
        let text = std::fs::read_to_string(&conf).expect("reading the cluster's ceph.conf");
        let mon = text
            .lines()
            .find(|l| l.starts_with("mon host"))
            .expect("ceph.conf names its monitor");
        let addrs: Vec<&str> = mon
            .split(['[', ']', ',', ' ', '='])
            .filter(|t| t.starts_with("v"))
            .collect();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.contains(":127.0.0.1:")),
            "the test cluster must listen on 127.0.0.1 only: {mon}"
        );
        conf
    })
}

fn shared_dir() -> PathBuf {
    // crates/<crate>/ -> workspace root -> ../shared
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn which(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// The python3 helper that drives librbd itself (python3-rbd), see `librbd.py`.
pub fn librbd_py() -> String {
    // From either crate's directory (crates/X/../vmcrypt-block).
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vmcrypt-block/tests/support/librbd.py")
        .to_string_lossy()
        .into_owned()
}

/// Run the librbd helper with `args`; panics with its output when it fails.
pub fn librbd(args: &[&str]) -> Vec<u8> {
    let out = Command::new("/usr/bin/python3")
        .arg(librbd_py())
        .args(args)
        .env("CEPH_CONF", ceph_conf())
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "librbd helper failed: {args:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run the `rbd` CLI against the test cluster.
pub fn rbd_cli(args: &[&str]) -> std::process::Output {
    Command::new("rbd")
        .arg("--conf")
        .arg(ceph_conf())
        .args(args)
        .output()
        .expect("running rbd")
}

/// An image name unique to this process and test, removed (with its snapshots) on drop.
pub struct TestImage {
    pub name: String,
}

impl TestImage {
    pub fn new(test: &str) -> TestImage {
        ceph_conf();
        let name = format!("t{}-{test}", std::process::id());
        let _ = rbd_cli(&["rm", "--no-progress", &format!("rbd/{name}")]);
        TestImage { name }
    }

    /// `rbd/NAME`.
    pub fn path(&self) -> String {
        format!("rbd/{}", self.name)
    }

    /// QEMU's pseudo-filename of the image.
    pub fn filename(&self) -> String {
        format!("rbd:rbd/{}:conf={}", self.name, ceph_conf())
    }

    /// `--image-opts` options for the image, plus `extra`.
    pub fn opts(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "," };
        format!(
            "driver=rbd,pool=rbd,image={},conf={}{sep}{extra}",
            self.name,
            ceph_conf()
        )
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let ls = rbd_cli(&["snap", "ls", "--format", "json", &self.path()]);
        let snaps: serde_json::Value =
            serde_json::from_slice(&ls.stdout).unwrap_or(serde_json::Value::Null);
        for snap in snaps.as_array().into_iter().flatten() {
            if let Some(name) = snap["name"].as_str() {
                let _ = rbd_cli(&["snap", "unprotect", &format!("{}@{name}", self.path())]);
            }
        }
        let _ = rbd_cli(&["snap", "purge", "--no-progress", &self.path()]);
        let _ = rbd_cli(&["rm", "--no-progress", &self.path()]);
    }
}
