//! The daemon's loop while an unlock is slow. A VM whose key comes from a prompt that
//! does not answer (a prompt program that waits for a file) is being unlocked, and
//! meanwhile `lock` of another VM, `rescan` and `reload` are answered at once; `lock` of
//! the VM being unlocked cancels the unlock (the prompt is killed, the VM stays stopped
//! with the reason, the `unlock` request is told why) and answers once it has ended;
//! an unlock that is answered then runs the VM. A key medium removed while its VMs'
//! disks are being opened (an export that waits) is applied when the opens end: the
//! `lock` policy closes what was opened, `stop` keeps it without starting the VM. Real
//! daemon (control socket, media watch), real LUKS disks and VM commands; exports
//! in-process.
mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{InProcess, events, luks_image, vm_toml};
use vmcrypt_agent::Daemon;
use vmcrypt_agent::config::Disk;
use vmcrypt_agent::control::{Request, request};
use vmcrypt_agent::export::{ExportInfo, Exporter};
use vmcrypt_agent::vm::Programs;

const KEY: &str = "the right key";
/// Far less than the prompt would wait: an answer this late means it waited.
const QUICK: Duration = Duration::from_secs(5);
/// The key source of the VMs whose key is on the medium.
const KEY_ON_K: &str = "{ file = \"key\", label = \"K\" }";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// VMs `vms` (name, `[[vm]]` lines, key sources), their disks opened by [`KEY`], and
    /// a prompt that answers [`KEY`] once the file `release` exists (at most 60 s).
    fn new(vms: &[(&str, &str, &str)]) -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(f.p("media")).unwrap();
        let ask = format!(
            "#!/bin/sh\necho \"$@\" >> {d}/asked\ni=0\n\
             while [ ! -e {d}/release ]; do sleep 0.05; i=$((i+1)); [ $i -lt 1200 ] || exit 1; done\n\
             echo answered >> {d}/answered\nprintf '%s\\n' '{KEY}'\n",
            d = f.dir.path().display()
        );
        std::fs::write(f.p("ask.sh"), ask).unwrap();
        std::fs::set_permissions(f.p("ask.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = format!(
            "run_dir = \"{}\"\ncontrol_socket = \"{}\"\naudit_log = \"{}\"\n\
             [media]\nwatch = [\"{}\"]\nmounts = false\n[prompt]\ncommand = \"{}\"\ntimeout = 60\n",
            f.p("run").display(),
            f.sock().display(),
            f.p("audit.jsonl").display(),
            f.p("media").display(),
            f.p("ask.sh").display()
        );
        for (name, extra, keys) in vms {
            luks_image(&f.p(&format!("{name}.img")), KEY.as_bytes());
            c += &vm_toml(f.dir.path(), name, extra, keys);
        }
        std::fs::write(f.p("agent.toml"), c).unwrap();
        f
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The medium labelled K appears at once, holding the key file `key`.
    fn insert(&self) {
        let staged = self.p("staged");
        std::fs::create_dir(&staged).unwrap();
        let key = staged.join("key");
        std::fs::write(&key, KEY).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::rename(&staged, self.p("media/K")).unwrap();
    }

    fn sock(&self) -> PathBuf {
        self.p("agent.sock")
    }

    /// Start the daemon on a thread of this process (it runs until the process ends).
    fn daemon(&self, exporter: Box<dyn Exporter>) {
        let d = Daemon {
            config_path: self.p("agent.toml"),
            exporter,
            vms: Box::new(Programs),
        };
        std::thread::spawn(move || d.run());
    }

    fn call(&self, req: Request, limit: Duration) -> vmcrypt_error::Result<Value> {
        request(&self.sock(), &req, limit)
    }

    /// VM `vm` in `status` (answered at once whatever the agent is doing).
    fn vm_status(&self, vm: &str) -> Value {
        let st = self.call(Request::Status, QUICK).unwrap();
        st["status"]["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .unwrap()
            .clone()
    }

    fn events(&self, vm: &str) -> String {
        events(self.dir.path(), vm)
    }
}

/// Wait (at most 30 s) until `f` holds.
fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send `req` from a thread; its reply comes on the receiver.
fn send(f: &Fixture, req: Request) -> std::sync::mpsc::Receiver<vmcrypt_error::Result<Value>> {
    let sock = f.sock();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(request(&sock, &req, Duration::from_secs(120)));
    });
    rx
}

fn unlock(vm: &str) -> Request {
    Request::Unlock { vm: vm.into() }
}

fn lock(vm: &str) -> Request {
    Request::Lock { vm: vm.into() }
}

fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn requests_are_served_while_an_unlock_waits_for_a_prompt() {
    let f = Fixture::new(&[
        ("slow", "", "{ ask = \"Passphrase for slow\" }"),
        ("other", "", KEY_ON_K),
    ]);
    f.insert();
    f.daemon(Box::new(InProcess::default()));
    until("the agent to run vm other", || {
        f.call(Request::Status, QUICK).is_ok() && f.vm_status("other")["state"] == "running"
    });

    // An unlock of slow that waits for its prompt.
    let slow = send(&f, unlock("slow"));
    until("the prompt", || exists(&f.p("asked")));
    assert_eq!(f.vm_status("slow")["state"], "unlocking");

    // Meanwhile: lock of another VM, rescan and reload are answered at once.
    let t = Instant::now();
    let other = f
        .call(lock("other"), QUICK)
        .expect("lock other during the unlock");
    assert_eq!(other["vm"]["state"], "stopped", "{other:#}");
    assert!(other["vm"]["disks"][0]["serving"].is_null(), "{other:#}");
    assert_eq!(f.events("other"), "start\nstop\n");
    f.call(Request::Rescan, QUICK)
        .expect("rescan during the unlock");
    f.call(Request::Reload, QUICK)
        .expect("reload during the unlock");
    assert!(t.elapsed() < QUICK, "{:?}", t.elapsed());
    assert_eq!(f.vm_status("slow")["state"], "unlocking");
    assert!(!exists(&f.p("answered")), "the prompt has not answered");

    // lock of the VM being unlocked cancels it: the prompt is killed, nothing opens.
    let locked = f
        .call(lock("slow"), QUICK)
        .expect("lock slow during its unlock");
    assert_eq!(locked["vm"]["state"], "stopped", "{locked:#}");
    assert_eq!(locked["vm"]["reason"], "locked on request", "{locked:#}");
    assert!(locked["vm"]["disks"][0]["serving"].is_null(), "{locked:#}");
    let e = slow
        .recv_timeout(QUICK)
        .unwrap()
        .unwrap_err()
        .display_chain();
    assert!(e.contains("unlock cancelled: locked on request"), "{e}");
    std::fs::write(f.p("release"), "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !exists(&f.p("answered")),
        "the prompt was killed, not answered"
    );
    assert_eq!(f.events("slow"), "", "the cancelled vm never started");

    // An unlock whose prompt answers runs the VM.
    let st = f.call(unlock("slow"), QUICK).expect("unlock slow");
    assert_eq!(st["vm"]["state"], "running", "{st:#}");
    assert_eq!(st["vm"]["disks"][0]["key_source"], "prompt", "{st:#}");
    assert_eq!(f.events("slow"), "start\n");
}

/// Exports in-process whose opens wait until the file `gate` exists (a slow KDF); the
/// number of opens begun is counted in `entered`.
struct Gated {
    inner: InProcess,
    gate: PathBuf,
    entered: Arc<AtomicUsize>,
}

impl Exporter for Gated {
    fn open(&self, disk: &Disk, keys: &[&[u8]]) -> vmcrypt_error::Result<ExportInfo> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        until("the gate", || self.gate.exists());
        self.inner.open(disk, keys)
    }
    fn status(&self, disk: &Disk) -> vmcrypt_error::Result<Option<ExportInfo>> {
        self.inner.status(disk)
    }
    fn close(&self, disk: &Disk) -> vmcrypt_error::Result<()> {
        self.inner.close(disk)
    }
}

#[test]
fn a_medium_removed_during_the_unlocks_it_began_is_applied_when_they_end() {
    let f = Fixture::new(&[
        ("locks", "on_media_removed = \"lock\"\n", KEY_ON_K),
        ("stops", "on_media_removed = \"stop\"\n", KEY_ON_K),
    ]);
    let gate = f.p("gate");
    let entered = Arc::new(AtomicUsize::new(0));
    f.daemon(Box::new(Gated {
        inner: InProcess::default(),
        gate: gate.clone(),
        entered: entered.clone(),
    }));
    until("the agent", || f.call(Request::Status, QUICK).is_ok());

    // The medium arrives: both VMs' unlocks begin and wait in the export's open.
    f.insert();
    f.call(Request::Rescan, QUICK).expect("rescan");
    until("both unlocks to open their disk", || {
        entered.load(Ordering::SeqCst) == 2
    });
    for v in ["locks", "stops"] {
        assert_eq!(f.vm_status(v)["state"], "unlocking");
    }
    // It leaves before they end; the agent answers at once.
    std::fs::remove_dir_all(f.p("media/K")).unwrap();
    f.call(Request::Rescan, QUICK)
        .expect("rescan during the unlocks");
    std::fs::write(&gate, "").unwrap();
    until("both unlocks to end", || {
        ["locks", "stops"]
            .iter()
            .all(|v| f.vm_status(v)["state"] != "unlocking")
    });

    let locks = f.vm_status("locks");
    assert_eq!(locks["state"], "stopped", "{locks:#}");
    assert_eq!(
        locks["reason"], "unlock cancelled: key medium label K removed",
        "{locks:#}"
    );
    assert!(locks["disks"][0]["serving"].is_null(), "{locks:#}");
    let stops = f.vm_status("stops");
    assert_eq!(stops["state"], "unlocked", "{stops:#}");
    assert_eq!(stops["reason"], "key medium label K removed", "{stops:#}");
    assert!(stops["disks"][0]["serving"].is_object(), "{stops:#}");
    assert_eq!(
        (f.events("locks"), f.events("stops")),
        (String::new(), String::new())
    );
}
