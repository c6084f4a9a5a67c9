//! A real libvirt for the tests that start VMs: `../shared/libvirt/start-libvirt.sh`
//! (libvirtd + virtlogd driving QEMU 10 with TCG; `.ci/install-deps` installs the
//! packages), `virsh` runs, and guards that destroy and undefine what a test defined in
//! libvirt even when the test fails. A missing libvirt fails the test; it is never
//! skipped. Names and UUIDs are unique per test run, so tests (and other users of the
//! same libvirtd) do not collide.
#![allow(dead_code)]

use crate::common::*;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Start libvirt once per test process; its URI.
pub fn libvirt_uri() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        let script = shared("libvirt/start-libvirt.sh");
        let out = tool("bash", &[&script]);
        assert_eq!(
            out.code,
            Some(0),
            "libvirt did not start (run .ci/install-deps; this test needs a real libvirtd and \
             is never skipped):\n{}",
            out.describe()
        );
        let uri = out
            .stdout_str()
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .to_owned();
        assert!(
            uri.contains("://"),
            "start-libvirt.sh printed no URI: {uri:?}"
        );
        uri
    })
}

/// `virsh -c URI ARGS`.
pub fn virsh(args: &[&str]) -> Out {
    let mut all = vec!["-c", libvirt_uri()];
    all.extend_from_slice(args);
    tool("virsh", &all)
}

/// A fresh random UUID (the kernel's).
pub fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_owned()
}

/// A name no other test run uses: `PREFIX-PID-NANOS`.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A secret UUID defined in libvirt; undefined when dropped.
pub struct LvSecret(pub String);

impl Drop for LvSecret {
    fn drop(&mut self) {
        let _ = virsh(&["secret-undefine", &self.0]);
    }
}

/// A domain defined in libvirt; destroyed and undefined when dropped.
pub struct Domain {
    pub name: String,
}

/// What a test domain boots from.
pub struct DiskSpec<'a> {
    pub file: &'a str,
    /// `raw` (a LUKS1 file, QEMU's `luks` driver) or `qcow2` (qcow2 with LUKS inside).
    pub format: &'a str,
    /// The libvirt secret holding the LUKS passphrase.
    pub secret_uuid: &'a str,
}

impl Domain {
    /// Define a 64 MiB TCG domain booting from `disk` (`<encryption format='luks'>`,
    /// opened by QEMU itself) with its serial port written to `serial_log`.
    pub fn define(sc: &Scratch, disk: &DiskSpec<'_>, serial_log: &str) -> Domain {
        let name = unique_name("vmcrypt-test");
        let xml = format!(
            "<domain type='qemu'>\n  <name>{name}</name><memory unit='MiB'>64</memory>\n  \
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n  \
             <devices>\n    <disk type='file' device='disk'>\n      \
             <driver name='qemu' type='{fmt}'/>\n      <source file='{file}'>\n        \
             <encryption format='luks'><secret type='passphrase' uuid='{uuid}'/></encryption>\n      \
             </source>\n      <target dev='hda' bus='ide'/>\n    </disk>\n    \
             <serial type='file'><source path='{serial_log}'/></serial>\n  </devices>\n</domain>\n",
            fmt = disk.format,
            file = disk.file,
            uuid = disk.secret_uuid,
        );
        let path = sc.write(&format!("{name}.xml"), xml.as_bytes());
        virsh(&["define", &path]).ok();
        Domain { name }
    }

    pub fn start(&self) -> Out {
        virsh(&["start", &self.name])
    }

    /// The QEMU process running this domain (from libvirt's pid file).
    pub fn qemu_pid(&self) -> u32 {
        let f = format!("/run/libvirt/qemu/{}.pid", self.name);
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}

/// Wait up to `secs` for `marker` in the file `log`; its text when it appears, a test
/// failure naming what was seen when it does not.
pub fn wait_for_marker(log: &Path, marker: &str, secs: u64) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.contains(marker) {
            return text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no {marker:?} on the serial port of the guest within {secs} s; {} says {text:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids of every process that has `file` open.
pub fn pids_with_open(file: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(file).unwrap();
    let mut out = Vec::new();
    for ent in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = ent.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(ent.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want))
        {
            out.push(pid);
        }
    }
    out
}

/// The executable name of `pid` (`/proc/PID/comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `make-boot-disk.py OUT 1 MARKER`: a 1 MiB raw disk whose boot sector prints MARKER.
pub fn make_boot_disk(sc: &Scratch, name: &str, marker: &str) -> String {
    let out = sc.p(name);
    let script = shared("libvirt/make-boot-disk.py");
    tool("python3", &[&script, &out, "1", marker]).ok();
    out
}

/// Run our binary with extra environment variables.
pub fn vmcrypt_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = std::process::Command::new(VMCRYPT)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Out {
        cmdline: format!("{env:?} vmcrypt {}", args.join(" ")),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
