//! `vmcrypt agent` end to end with real processes (issue 12 items 2 and 3): the agent
//! watches a media directory; a key medium appearing there (a directory named by its
//! label) unlocks a cryptsetup-made LUKS2 disk with 4096-byte sectors, exports it
//! through a `luks open` daemon, and runs the VM's start command; qemu-io and nbdinfo
//! read the export over its socket. A second VM's key comes from the secret store at
//! the agent's start. A third VM's key file is wrong: it stays stopped, with the reason
//! in `status` and the audit log. The agent is killed and started again: the export
//! keeps serving throughout and is adopted (same daemon, no second start). Removing the
//! medium under the lock policy runs the stop command and closes the export. The audit
//! log and the agent's stderr never contain a key, and the daemons' argv and
//! environment never do.
mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const KEY_ALPHA: &[u8] = b"alpha key file \x01\x02 bytes";
const KEY_BETA: &[u8] = b"beta-from-the-store";
const KEY_GAMMA: &[u8] = b"gamma real key";
const LIBVIRT_URI: &str = "qemu:///system";
const STORE_UUID: &str = "6f1c0a9e-2b47-4c1d-9e55-3a8b7d2c1f00";

/// One test's world: images, store, media directory, config, the agent process.
struct World {
    sc: Scratch,
    agent: Option<Child>,
    /// A libvirt domain that is alpha (instead of start/stop commands).
    domain: Option<String>,
}

impl World {
    fn new() -> World {
        World::with_domain(None)
    }

    fn with_domain(domain: Option<String>) -> World {
        let sc = Scratch::new();
        for d in ["media", "run", "stage"] {
            std::fs::create_dir(sc.path(d)).unwrap();
        }
        let w = World {
            sc,
            agent: None,
            domain,
        };
        w.cs_luks2_4k("alpha.img", KEY_ALPHA);
        w.cs_luks2_4k("beta.img", KEY_BETA);
        w.cs_luks2_4k("gamma.img", KEY_GAMMA);
        w.qemu_qcow2_luks("eps.img", KEY_BETA);
        w.store_secret();
        w.sc.write("agent.toml", w.config().as_bytes());
        w
    }

    fn p(&self, name: &str) -> String {
        self.sc.p(name)
    }

    /// A LUKS2 disk with 4096-byte sectors, formatted by cryptsetup with `key`.
    fn cs_luks2_4k(&self, name: &str, key: &[u8]) {
        let dev = self.sc.sparse(name, 32 * MIB);
        let kf = self.sc.write(&format!("{name}.key"), key);
        #[rustfmt::skip]
        cryptsetup(&[
            "luksFormat", "-q", "--type", "luks2", "--sector-size", "4096",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", &kf, &dev,
        ])
        .ok();
        std::fs::remove_file(kf).unwrap();
        cryptsetup(&["luksDump", &dev])
            .ok()
            .stdout_has("4096 [bytes]");
    }

    /// An 8 MiB qcow2 image with LUKS encryption made by qemu-img, 64 KiB of 0x3c at 0.
    fn qemu_qcow2_luks(&self, name: &str, key: &[u8]) {
        let img = self.p(name);
        let kf = self.sc.write("qcow2.key", key);
        let obj = format!("secret,id=s0,file={kf}");
        #[rustfmt::skip]
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "--object", &obj,
            "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", &img, "8M",
        ])
        .ok();
        let opts = format!("driver=qcow2,encrypt.key-secret=s0,file.filename={img}");
        #[rustfmt::skip]
        qemu_io(&["--object", &obj, "--image-opts", &opts, "-c", "write -P 0x3c 0 64k"]).ok();
        std::fs::remove_file(kf).unwrap();
    }

    /// Beta's key as a stored secret (volume usage = its image).
    fn store_secret(&self) {
        let xml = format!(
            "<secret ephemeral='no' private='yes'><uuid>{STORE_UUID}</uuid>\
             <usage type='volume'><volume>{}</volume></usage></secret>",
            self.p("beta.img")
        );
        let xml = self.sc.write("beta.xml", xml.as_bytes());
        let store = self.p("store");
        vmcrypt(&["secret", "define", "--store", &store, &xml]).ok();
        let v = self.sc.write("beta.value", KEY_BETA);
        #[rustfmt::skip]
        vmcrypt(&["secret", "set-value", "--store", &store, STORE_UUID, "--file", &v, "--plain"]).ok();
        std::fs::remove_file(v).unwrap();
    }

    /// A VM whose start/stop commands append to `NAME.events`.
    fn vm_toml(&self, name: &str, policy: &str, keys: &str) -> String {
        let ev = self.p(&format!("{name}.events"));
        let starter = match &self.domain {
            Some(d) if name == "alpha" => {
                format!("libvirt = {{ domain = \"{d}\", uri = \"{LIBVIRT_URI}\" }}")
            }
            _ => format!(
                "command = {{ start = [\"/bin/sh\", \"-c\", \"echo start >> {ev}\"], stop = [\"/bin/sh\", \"-c\", \"echo stop >> {ev}\"] }}"
            ),
        };
        format!(
            "[[vm]]\nname = \"{name}\"\non_media_removed = \"{policy}\"\n{starter}\n\
             [[vm.disk]]\nname = \"root\"\nimage = \"{}\"\nkeys = [{keys}]\n",
            self.p(&format!("{name}.img"))
        )
    }

    fn config(&self) -> String {
        let mut c = format!(
            "run_dir = \"{}\"\ncontrol_socket = \"{}\"\naudit_log = \"{}\"\nrescan_interval = 3600\n\
             [media]\nwatch = [\"{}\"]\nmounts = false\n[store]\ndir = \"{}\"\n",
            self.p("run"),
            self.p("agent.sock"),
            self.p("audit.jsonl"),
            self.p("media"),
            self.p("store"),
        );
        c += &self.vm_toml(
            "alpha",
            "lock",
            "{ file = \"keys/alpha.key\", label = \"VMKEYS\" }",
        );
        c += &self.vm_toml(
            "beta",
            "keep",
            &format!("{{ store_uuid = \"{STORE_UUID}\" }}"),
        );
        c += &self.vm_toml(
            "gamma",
            "lock",
            "{ file = \"gamma.key\", label = \"VMKEYS\" }",
        );
        // eps: a qcow2+LUKS image (qemu-made) whose key is the same stored secret.
        c += &self.vm_toml(
            "eps",
            "keep",
            &format!("{{ store_uuid = \"{STORE_UUID}\" }}"),
        );
        c += "format = \"qcow2\"\n";
        c
    }

    /// The configuration plus VM delta, whose key is beta's stored secret named by usage.
    fn config_with_delta(&self) -> String {
        let usage = format!("{{ store_usage = \"volume:{}\" }}", self.p("beta.img"));
        self.config() + &self.vm_toml("delta", "keep", &usage)
    }

    /// Start `vmcrypt agent run`, with a notification socket; wait for READY=1.
    fn start_agent(&mut self) {
        let notify = self.sc.path("notify");
        let _ = std::fs::remove_file(&notify);
        let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.sc.path("agent.stderr"))
            .unwrap();
        let child = Command::new(VMCRYPT)
            .args(["agent", "run", "--config", &self.p("agent.toml")])
            .env("NOTIFY_SOCKET", &notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let mut buf = [0u8; 256];
        let n = rx
            .recv(&mut buf)
            .expect("the agent sends READY=1 within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.lines().any(|l| l == "READY=1"), "notification: {msg:?}");
    }

    /// SIGKILL-free stop: SIGTERM ends the agent (its exports live on).
    fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            c.wait().unwrap();
        }
    }

    fn ctl(&self, args: &[&str]) -> Out {
        let sock = self.p("agent.sock");
        let mut v = vec!["agent"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--socket", &sock]);
        vmcrypt(&v)
    }

    fn status(&self) -> Value {
        self.ctl(&["status", "--json"]).ok().json()
    }

    fn vm(&self, name: &str) -> Value {
        let st = self.status();
        st["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    }

    /// Wait until `vm`'s state is `want`.
    fn wait_state(&self, name: &str, want: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.vm(name);
            if v["state"] == want {
                return v;
            }
            assert!(
                Instant::now() < end,
                "vm {name} never became {want}: {v:#}\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent_log(&self) -> String {
        String::from_utf8_lossy(&self.sc.read("agent.stderr")).into_owned()
    }

    fn events(&self, vm: &str) -> String {
        std::fs::read_to_string(self.sc.path(&format!("{vm}.events"))).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.sc.path("audit.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
            .collect()
    }

    /// The key medium: staged, then renamed into the watched directory in one step,
    /// as a mount makes all of a medium's files appear at once.
    fn insert_medium(&self) {
        let stage = self.sc.path("stage/VMKEYS");
        std::fs::create_dir_all(stage.join("keys")).unwrap();
        for (name, data) in [
            ("keys/alpha.key", KEY_ALPHA),
            ("gamma.key", b"not gamma's key" as &[u8]),
        ] {
            let p = stage.join(name);
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::rename(stage, self.sc.path("media/VMKEYS")).unwrap();
    }

    fn remove_medium(&self) {
        std::fs::remove_dir_all(self.sc.path("media/VMKEYS")).unwrap();
    }

    fn socket(&self, export: &str) -> String {
        self.p(&format!("run/{export}.sock"))
    }

    fn luks_status(&self, export: &str) -> Out {
        vmcrypt(&["luks", "status", export, "--run-dir", &self.p("run")])
    }
}

impl Drop for World {
    /// Nothing outlives the test: the agent, then every export.
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for e in [
            "alpha-root",
            "beta-root",
            "gamma-root",
            "delta-root",
            "eps-root",
            "prep",
            "zeta-root",
            "slow-root",
            "thief",
        ] {
            let _ = vmcrypt(&["luks", "close", e, "--run-dir", &self.p("run"), "--force"]);
        }
    }
}

fn qemu_io_nbd(sock: &str, cmd: &str) -> Out {
    let uri = format!("nbd+unix:///?socket={sock}");
    qemu_io(&["-f", "raw", "-c", cmd, &uri])
}

/// The pid serving `export`, from the agent's status.
fn export_pid(vm: &Value) -> u64 {
    vm["disks"][0]["serving"]["pid"]
        .as_u64()
        .expect("the disk is served")
}

#[test]
fn media_unlock_store_wrong_key_restart_and_lock() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let mut w = World::new();
    w.start_agent();

    // Beta's key is in the store: unlocked and started at the agent's start.
    let beta = w.wait_state("beta", "running");
    assert_eq!(
        beta["disks"][0]["key_source"],
        format!("store uuid {STORE_UUID}")
    );
    assert_eq!(w.events("beta"), "start\n");
    // Eps, a qcow2 image with LUKS encryption made by qemu-img, is served decrypted.
    let eps = w.wait_state("eps", "running");
    assert_eq!(eps["disks"][0]["serving"]["slot"], 0, "{eps:#}");
    let eps_sock = w.socket("eps-root");
    let uri = format!("nbd+unix:///?socket={eps_sock}");
    let info = tool("nbdinfo", &["--json", &uri]).ok().json();
    assert_eq!(info["exports"][0]["export-size"], 8 * MIB);
    qemu_io_nbd(&eps_sock, "read -P 0x3c 0 64k").ok();
    qemu_io_nbd(&eps_sock, "read -P 0 64k 64k").ok();
    // Alpha and gamma wait for their medium.
    assert_eq!(w.vm("alpha")["state"], "stopped");
    assert_eq!(w.events("alpha"), "");

    w.insert_medium();
    let alpha = w.wait_state("alpha", "running");
    assert_eq!(
        alpha["disks"][0]["key_source"],
        "file keys/alpha.key on label VMKEYS"
    );
    assert_eq!(w.events("alpha"), "start\n");
    let sock = w.socket("alpha-root");
    assert_eq!(alpha["disks"][0]["serving"]["socket"], sock.as_str());
    // The decrypted disk over NBD: 32 MiB less cryptsetup's 16 MiB LUKS2 header.
    let info = tool(
        "nbdinfo",
        &["--json", &format!("nbd+unix:///?socket={sock}")],
    )
    .ok()
    .json();
    assert_eq!(info["exports"][0]["export-size"], 16 * MIB);
    qemu_io_nbd(&sock, "write -P 0xa5 0 1M").ok();
    qemu_io_nbd(&sock, "read -P 0xa5 0 1M").ok();

    // Gamma's key file is wrong: stopped, with the reason.
    let gamma = w.wait_state("gamma", "stopped");
    let end = Instant::now() + Duration::from_secs(10);
    while w.vm("gamma")["reason"].is_null() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let reason = w.vm("gamma")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("wrong key"),
        "gamma: {gamma:#} reason {reason}"
    );
    assert_eq!(w.events("gamma"), "");
    assert!(
        w.luks_status("gamma-root").code == Some(4),
        "gamma has no export"
    );
    let audit = w.audit();
    let entry = audit
        .iter()
        .find(|r| r["event"] == "disk-open" && r["vm"] == "gamma")
        .expect("an audit entry for gamma's disk");
    assert_eq!(entry["result"], "error");
    assert_eq!(entry["key_source"], "file gamma.key on label VMKEYS");
    assert!(
        entry["reason"].as_str().unwrap().contains("wrong key"),
        "{entry}"
    );
    let ok = audit
        .iter()
        .find(|r| r["event"] == "disk-open" && r["vm"] == "alpha")
        .expect("an audit entry for alpha's disk");
    assert_eq!(
        (ok["result"].as_str(), ok["slot"].as_u64()),
        (Some("ok"), Some(0))
    );

    // The agent goes away: the exports keep serving; a new agent adopts them.
    let pid_before = export_pid(&alpha);
    w.stop_agent();
    qemu_io_nbd(&sock, "read -P 0xa5 0 1M").ok();
    w.start_agent();
    let alpha = w.wait_state("alpha", "running");
    assert_eq!(
        export_pid(&alpha),
        pid_before,
        "the same daemon serves alpha"
    );
    assert_eq!(
        w.events("alpha"),
        "start\n",
        "an adopted VM is not started again"
    );
    assert!(
        w.audit()
            .iter()
            .any(|r| r["event"] == "export-adopted" && r["vm"] == "alpha")
    );
    qemu_io_nbd(&sock, "read -P 0xa5 0 1M").ok();
    w.ctl(&["status"])
        .ok()
        .stdout_has("alpha: running")
        .stdout_has("media: label VMKEYS");

    // The medium leaves; alpha's policy is lock: stopped, export closed.
    w.remove_medium();
    let alpha = w.wait_state("alpha", "stopped");
    assert!(alpha["disks"][0]["serving"].is_null(), "{alpha:#}");
    assert_eq!(w.events("alpha"), "start\nstop\n");
    w.luks_status("alpha-root").code_is(4);
    assert!(!std::path::Path::new(&sock).exists(), "socket removed");
    // Beta's key is not on the medium: untouched.
    assert_eq!(w.vm("beta")["state"], "running");

    // reload: a bad file is refused with the field named and changes nothing; a good
    // one adds delta, unlocked at once with a key from the store found by usage.
    let good = w.sc.read("agent.toml");
    w.sc.write("agent.toml", &[&good[..], b"[[vm]]\nname = 1\n"].concat());
    w.ctl(&["reload"]).code_is(1).stderr_has("agent.toml");
    w.cs_luks2_4k("delta.img", KEY_BETA);
    w.sc.write("agent.toml", w.config_with_delta().as_bytes());
    w.ctl(&["reload"]).ok();
    let delta = w.wait_state("delta", "running");
    let usage = format!("store usage volume:{}", w.p("beta.img"));
    assert_eq!(delta["disks"][0]["key_source"], usage.as_str());
    assert_eq!(w.events("delta"), "start\n");

    // Control commands: lock and unlock by hand.
    w.ctl(&["lock", "beta"]).ok().stdout_has("beta: stopped");
    assert_eq!(w.events("beta"), "start\nstop\n");
    w.ctl(&["unlock", "beta"]).ok().stdout_has("beta: running");
    w.ctl(&["unlock", "alpha"])
        .code_is(1)
        .stderr_has("label VMKEYS is not present");
    w.ctl(&["unlock", "nosuch"])
        .code_is(1)
        .stderr_has("no vm named 'nosuch'");

    no_key_anywhere(&w);
}

/// No key in the audit log, the agent's stderr, or any daemon's argv or environment.
fn no_key_anywhere(w: &World) {
    let audit = std::fs::read(w.sc.path("audit.jsonl")).unwrap();
    let stderr = w.sc.read("agent.stderr");
    let mut places = vec![("audit log", audit), ("agent stderr", stderr)];
    // The agent's own argv and environment, and every file the exports keep.
    let agent = w.agent.as_ref().expect("the agent runs").id();
    for f in ["cmdline", "environ"] {
        places.push((
            "the agent's /proc file",
            std::fs::read(format!("/proc/{agent}/{f}")).unwrap(),
        ));
    }
    for e in std::fs::read_dir(w.sc.path("run")).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            places.push(("a run-directory file", std::fs::read(e.path()).unwrap()));
        }
    }
    for pid in processes_mentioning(&w.p("run")) {
        for f in ["cmdline", "environ"] {
            let data = std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
            places.push(("a daemon's /proc file", data));
        }
    }
    assert!(places.len() > 2, "some export daemon is running");
    for key in [KEY_ALPHA, KEY_BETA, KEY_GAMMA, b"not gamma's key"] {
        for (what, data) in &places {
            assert!(
                !data.windows(key.len()).any(|x| x == key),
                "a key in the {what}"
            );
        }
    }
}

/// `virsh -c qemu:///system ARGS`.
fn virsh(args: &[&str]) -> Out {
    let mut v = vec!["-c", LIBVIRT_URI];
    v.extend_from_slice(args);
    tool("virsh", &v)
}

/// A libvirt domain, destroyed and undefined when dropped.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0]);
    }
}

impl World {
    /// Put a boot sector that prints `marker` on COM1 into alpha's disk, through a
    /// temporary `luks open` export.
    fn write_boot_disk(&self, marker: &str) {
        let raw = self.p("boot.raw");
        tool(
            "python3",
            &[&shared("libvirt/make-boot-disk.py"), &raw, "4", marker],
        )
        .ok();
        let key = self.sc.write("alpha.pass", KEY_ALPHA);
        let (dev, run) = (self.p("alpha.img"), self.p("run"));
        #[rustfmt::skip]
        vmcrypt(&["luks", "open", &dev, "prep", "--run-dir", &run, "--key-file", &key]).ok();
        let uri = format!("nbd+unix:///?socket={}", self.socket("prep"));
        qemu_img(&["convert", "-n", "-f", "raw", "-O", "raw", &raw, &uri]).ok();
        vmcrypt(&["luks", "close", "prep", "--run-dir", &run]).ok();
        std::fs::remove_file(key).unwrap();
    }

    /// Define a domain that boots from alpha's export, its serial port in serial.log.
    fn define_domain(&self, name: &str) -> Domain {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>\
             <disk type='network' device='disk'><driver name='qemu' type='raw'/>\
             <source protocol='nbd'><host transport='unix' socket='{}'/></source>\
             <target dev='hda' bus='ide'/></disk>\
             <serial type='file'><source path='{}'/></serial></devices></domain>",
            self.socket("alpha-root"),
            self.p("serial.log")
        );
        let path = self.sc.write("domain.xml", xml.as_bytes());
        virsh(&["define", &path]).ok();
        Domain(name.to_string())
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.sc.path("serial.log")).unwrap_or_default()
    }
}

fn domstate(name: &str) -> String {
    virsh(&["domstate", name])
        .ok()
        .stdout_str()
        .trim()
        .to_string()
}

/// Issue 12 item 3 with a real libvirtd and QEMU (TCG): the agent starts a libvirt
/// domain whose only disk is its NBD export of a LUKS2 (4096-byte sectors) disk; the
/// guest prints the marker from the decrypted boot sector; the domain keeps running
/// and its disk stays readable while the agent restarts, and the new agent adopts it
/// without starting it again; removing the key medium (lock policy) destroys the
/// domain and closes the export. libvirt missing is a failure, never a skip.
#[test]
fn libvirt_domain_boots_from_the_agents_export() {
    let uri = tool("bash", &[&shared("libvirt/start-libvirt.sh")])
        .ok()
        .stdout_str();
    assert_eq!(uri.trim(), LIBVIRT_URI);
    require_tool("virsh");
    let name = format!("vmcrypt-agent-{}", std::process::id());
    let mut w = World::with_domain(Some(name.clone()));
    let marker = format!("AGENT-BOOT-{}", std::process::id());
    w.write_boot_disk(&marker);
    let _domain = w.define_domain(&name);
    w.start_agent();
    assert_eq!(
        domstate(&name),
        "shut off",
        "not started before its key is present"
    );

    w.insert_medium();
    w.wait_state("alpha", "running");
    assert_eq!(domstate(&name), "running");
    let end = Instant::now() + Duration::from_secs(60);
    while !w.serial().contains(&marker) {
        assert!(
            Instant::now() < end,
            "no marker in the serial log: {:?}",
            w.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The agent restarts; the guest keeps its disk, and is adopted, not restarted.
    let pid = export_pid(&w.vm("alpha"));
    w.stop_agent();
    assert_eq!(domstate(&name), "running");
    qemu_io_nbd(&w.socket("alpha-root"), "read -v 510 2")
        .ok()
        .stdout_has("55 aa");
    w.start_agent();
    let alpha = w.wait_state("alpha", "running");
    assert_eq!(export_pid(&alpha), pid);
    let starts = w
        .audit()
        .iter()
        .filter(|r| r["event"] == "vm-start" && r["vm"] == "alpha")
        .count();
    assert_eq!(starts, 1, "the adopted domain was not started again");

    // Lock policy: the medium leaves, the domain is destroyed, the export closed.
    w.remove_medium();
    w.wait_state("alpha", "stopped");
    assert_eq!(domstate(&name), "shut off");
    w.luks_status("alpha-root").code_is(4);
    no_key_anywhere(&w);
}

const KEY_BASE: &[u8] = b"the base layer's key";

impl World {
    /// A two-layer qcow2 chain made by qemu-img, both layers LUKS-encrypted with
    /// different keys: `base.qcow2` (KEY_BASE, 0x11 in its first 64 KiB) under
    /// `top.qcow2` (KEY_BETA, the stored secret, in key slot 3; 0x22 at 64 KiB), written
    /// by qemu-io.
    fn qemu_chain(&self) {
        let (base, top) = (self.p("base.qcow2"), self.p("top.qcow2"));
        let kb = self.sc.write("base.qkey", KEY_BASE);
        let kt = self.sc.write("top.qkey", KEY_BETA);
        let (ob, ot) = (
            format!("secret,id=sb,file={kb}"),
            format!("secret,id=st,file={kt}"),
        );
        let enc =
            |s: &str| format!("encrypt.format=luks,encrypt.key-secret={s},encrypt.iter-time=10");
        #[rustfmt::skip]
        qemu_img(&["create", "-q", "-f", "qcow2", "--object", &ob, "-o", &enc("sb"), &base, "8M"]).ok();
        let bopts = format!("driver=qcow2,encrypt.key-secret=sb,file.filename={base}");
        qemu_io(&[
            "--object",
            &ob,
            "--image-opts",
            &bopts,
            "-c",
            "write -P 0x11 0 64k",
        ])
        .ok();
        // Top: made with a first key, then KEY_BETA added in key slot 3.
        let k0 = self.sc.write("top.first", b"top's first key");
        let o0 = format!("secret,id=s0,file={k0}");
        let topo = format!("{},backing_file={base},backing_fmt=qcow2", enc("s0"));
        #[rustfmt::skip]
        qemu_img(&["create", "-q", "-f", "qcow2", "--object", &o0, "-o", &topo, &top, "8M"]).ok();
        let amend = format!(
            "driver=qcow2,file.filename={top},encrypt.key-secret=s0,backing.encrypt.key-secret=sb"
        );
        #[rustfmt::skip]
        qemu_img(&["amend", "--object", &o0, "--object", &ot, "--object", &ob, "--image-opts", &amend,
            "-o", "encrypt.state=active,encrypt.new-secret=st,encrypt.keyslot=3,encrypt.iter-time=10"]).ok();
        let topts = format!(
            "driver=qcow2,encrypt.key-secret=st,file.filename={top},backing.encrypt.key-secret=sb"
        );
        #[rustfmt::skip]
        qemu_io(&["--object", &ob, "--object", &ot, "--image-opts", &topts, "-c", "write -P 0x22 64k 64k"]).ok();
        std::fs::remove_file(kb).unwrap();
        std::fs::remove_file(kt).unwrap();
    }

    /// zeta: the chain, exported on a socket path of its own, the top key from the
    /// store, the base key from the medium (a wrong key file tried first). slow: gamma's
    /// disk behind a prompt that takes 3 s to answer.
    fn chain_config(&self) -> String {
        let ask = self.sc.write(
            "slow-ask.sh",
            format!(
                "#!/bin/sh\nsleep 3\nprintf '%s\\n' '{}'\n",
                std::str::from_utf8(KEY_GAMMA).unwrap()
            )
            .as_bytes(),
        );
        std::fs::set_permissions(&ask, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = format!(
            "run_dir = \"{}\"\ncontrol_socket = \"{}\"\naudit_log = \"{}\"\nrescan_interval = 3600\n\
             [media]\nwatch = [\"{}\"]\nmounts = false\n[store]\ndir = \"{}\"\n[prompt]\ncommand = \"{ask}\"\n",
            self.p("run"),
            self.p("agent.sock"),
            self.p("audit.jsonl"),
            self.p("media"),
            self.p("store"),
        );
        c += &self
            .vm_toml(
                "zeta",
                "lock",
                &format!("{{ store_uuid = \"{STORE_UUID}\" }}"),
            )
            .replace(&self.p("zeta.img"), &self.p("top.qcow2"));
        c += &format!(
            "format = \"qcow2\"\nsocket = \"{}\"\n[[vm.disk.backing]]\nimage = \"{}\"\n\
             keys = [{{ file = \"wrong.key\", label = \"VMKEYS\" }}, {{ file = \"base.key\", label = \"VMKEYS\" }}]\n",
            self.zeta_socket(),
            self.p("base.qcow2")
        );
        c += &self
            .vm_toml("slow", "keep", "{ ask = \"Passphrase for slow\" }")
            .replace(&self.p("slow.img"), &self.p("gamma.img"));
        c
    }

    fn zeta_socket(&self) -> String {
        self.p("vms/zeta.sock")
    }

    fn insert_chain_medium(&self) {
        let stage = self.sc.path("stage/VMKEYS");
        std::fs::create_dir_all(&stage).unwrap();
        for (name, data) in [("base.key", KEY_BASE), ("wrong.key", b"wrong" as &[u8])] {
            let p = stage.join(name);
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::rename(stage, self.sc.path("media/VMKEYS")).unwrap();
    }
}

/// Agent gaps closed: a disk with a key per qcow2 layer (one from the store, one from a
/// key file, a wrong key file tried first) served on a socket path given in the config;
/// the export is adopted on that path across an agent restart and its path cannot be
/// taken by another export; `status` answers at once while an unlock waits for a slow
/// prompt, showing that VM as unlocking.
#[test]
fn layered_qcow2_own_socket_and_status_during_a_prompt() {
    require_tool("qemu-io");
    let mut w = World::new();
    w.qemu_chain();
    std::fs::create_dir(w.sc.path("vms")).unwrap();
    w.sc.write("agent.toml", w.chain_config().as_bytes());
    w.insert_chain_medium();
    w.start_agent();

    let zeta = w.wait_state("zeta", "running");
    let sock = w.zeta_socket();
    assert_eq!(
        zeta["disks"][0]["serving"]["socket"],
        sock.as_str(),
        "{zeta:#}"
    );
    assert!(!std::path::Path::new(&w.socket("zeta-root")).exists());
    // What qemu-io wrote into each layer, read through the export.
    qemu_io_nbd(&sock, "read -P 0x11 0 64k").ok();
    qemu_io_nbd(&sock, "read -P 0x22 64k 64k").ok();
    qemu_io_nbd(&sock, "read -P 0 128k 64k").ok();
    let opens: Vec<(String, String)> = w
        .audit()
        .iter()
        .filter(|r| r["event"] == "disk-open" && r["vm"] == "zeta")
        .map(|r| {
            (
                r["key_source"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let top = format!("store uuid {STORE_UUID}");
    assert_eq!(
        opens,
        [
            (
                format!("{top}; backing 1: file wrong.key on label VMKEYS"),
                "error".to_string()
            ),
            (
                format!("{top}; backing 1: file base.key on label VMKEYS"),
                "ok".to_string()
            ),
        ]
    );

    // The socket path is taken: another export may not have it.
    let k = w.sc.write("thief.key", KEY_ALPHA);
    #[rustfmt::skip]
    vmcrypt(&["luks", "open", &w.p("alpha.img"), "thief", "--run-dir", &w.p("run"), "--key-file", &k, "--socket", &sock])
        .code_is(5)
        .stderr_has("belongs to the active export zeta-root");
    qemu_io_nbd(&sock, "read -P 0x11 0 64k").ok();

    // Restart: adopted on its own path, same daemon.
    let pid = export_pid(&zeta);
    w.stop_agent();
    w.start_agent();
    let zeta = w.wait_state("zeta", "running");
    assert_eq!(export_pid(&zeta), pid);
    assert_eq!(zeta["disks"][0]["serving"]["socket"], sock.as_str());
    assert_eq!(w.events("zeta"), "start\n");

    // status does not wait behind an unlock that waits for a prompt.
    let ctl_sock = w.p("agent.sock");
    let unlock = Command::new(VMCRYPT)
        .args(["agent", "unlock", "slow", "--socket", &ctl_sock])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let mut seen = Value::Null;
    while Instant::now() < end {
        let t = Instant::now();
        seen = w.vm("slow");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "status took {:?}",
            t.elapsed()
        );
        if seen["state"] == "unlocking" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen["state"], "unlocking", "{seen:#}");
    assert_eq!(w.vm("zeta")["state"], "running");
    let out = unlock.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.vm("slow")["state"], "running");

    // Lock closes the export and frees its path.
    w.ctl(&["lock", "zeta"]).ok().stdout_has("zeta: stopped");
    assert!(!std::path::Path::new(&sock).exists(), "socket removed");
}
