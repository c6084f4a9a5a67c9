//! The agent's decisions with real LUKS disks (formatted by cryptsetup), real key files
//! in a watched directory, a real prompt program and real VM start/stop commands; only
//! the export is in-process (the node the `luks open` daemon would serve is opened here
//! with the same job, so a wrong key fails exactly as it would there). Proves: key
//! sources are tried in order and a wrong one is logged and skipped; a prompt is asked
//! only on an explicit unlock, with the VM's id, and its answer opens the disk; the
//! `stop` policy stops the VM but keeps its exports and a returning medium starts it
//! again; `keep` leaves the VM running; `lock` closes exports; a VM whose keys are not
//! all present is left alone, with the reason when an unlock is asked for.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::{InProcess, events, luks_image, vm_toml};
use vmcrypt_agent::audit::AuditLog;
use vmcrypt_agent::config::Config;
use vmcrypt_agent::vm::Programs;
use vmcrypt_agent::{Agent, VmState};

const KEY: &[u8] = b"the right key";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(f.p("media")).unwrap();
        for vm in ["a", "b", "c"] {
            f.luks(&format!("{vm}.img"));
        }
        // The prompt: records its arguments, answers with the right key.
        let ask = format!(
            "#!/bin/sh\necho \"$@\" >> {}\nprintf '%s\\n' '{}'\n",
            f.p("asked").display(),
            std::str::from_utf8(KEY).unwrap()
        );
        std::fs::write(f.p("ask.sh"), ask).unwrap();
        std::fs::set_permissions(f.p("ask.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        f
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn luks(&self, name: &str) {
        luks_image(&self.p(name), KEY);
    }

    fn vm(&self, name: &str, policy: &str, keys: &str) -> String {
        let policy = format!("on_media_removed = \"{policy}\"\n");
        vm_toml(self.dir.path(), name, &policy, keys)
    }

    fn agent(&self, exports: &InProcess) -> Agent {
        let mut c = format!(
            "audit_log = \"{}\"\n[media]\nwatch = [\"{}\"]\nmounts = false\n[prompt]\ncommand = \"{}\"\n",
            self.p("audit.jsonl").display(),
            self.p("media").display(),
            self.p("ask.sh").display()
        );
        // a: a wrong key file first, then the right one.
        c += &self.vm(
            "a",
            "stop",
            "{ file = \"bad.key\", label = \"K\" }, { file = \"a.key\", label = \"K\" }",
        );
        // b: on the medium, kept running when it leaves.
        c += &self.vm("b", "keep", "{ file = \"a.key\", label = \"K\" }");
        // c: a prompt only.
        c += &self.vm("c", "lock", "{ ask = \"Passphrase for c\" }");
        let cfg = Config::parse(&c).unwrap();
        let audit = AuditLog::open(&self.p("audit.jsonl")).unwrap();
        Agent::new(cfg, Box::new(exports.clone()), Box::new(Programs), audit)
    }

    fn insert(&self) {
        let m = self.p("media/K");
        std::fs::create_dir(&m).unwrap();
        for (n, data) in [("a.key", KEY), ("bad.key", b"wrong" as &[u8])] {
            std::fs::write(m.join(n), data).unwrap();
            std::fs::set_permissions(m.join(n), std::fs::Permissions::from_mode(0o400)).unwrap();
        }
    }

    fn events(&self, vm: &str) -> String {
        events(self.dir.path(), vm)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let t = std::fs::read_to_string(self.p("audit.jsonl")).unwrap();
        t.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn state(agent: &mut Agent, vm: &str) -> (VmState, Option<String>) {
    let st = agent.status();
    let v = st.vms.iter().find(|v| v.name == vm).unwrap();
    (v.state, v.reason.clone())
}

fn slot_of_open(audit: &[serde_json::Value], vm: &str) -> Vec<(String, String)> {
    audit
        .iter()
        .filter(|r| r["event"] == "disk-open" && r["vm"] == vm)
        .map(|r| {
            (
                r["key_source"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn sources_in_order_policies_and_prompt() {
    let f = Fixture::new();
    let exports = InProcess::default();
    let mut agent = f.agent(&exports);
    agent.start();
    // Nothing present, nothing started; the prompt is not shown automatically.
    assert_eq!(state(&mut agent, "a").0, VmState::Stopped);
    assert_eq!(state(&mut agent, "c").0, VmState::Stopped);
    assert!(!f.p("asked").exists(), "no prompt at start");

    f.insert();
    agent.rescan();
    assert_eq!(state(&mut agent, "a").0, VmState::Running);
    assert_eq!(state(&mut agent, "b").0, VmState::Running);
    assert_eq!(f.events("a"), "start\n");
    assert_eq!(
        slot_of_open(&f.audit(), "a"),
        [
            ("file bad.key on label K".to_string(), "error".to_string()),
            ("file a.key on label K".to_string(), "ok".to_string())
        ]
    );
    let st = agent.status();
    let a = st.vms.iter().find(|v| v.name == "a").unwrap();
    assert_eq!(
        a.disks[0].key_source.as_deref(),
        Some("file a.key on label K")
    );

    // Removal: a (stop) is stopped with its export kept, b (keep) runs on.
    std::fs::remove_dir_all(f.p("media/K")).unwrap();
    agent.rescan();
    let (s, why) = state(&mut agent, "a");
    assert_eq!(
        (s, why.as_deref()),
        (VmState::Unlocked, Some("key medium label K removed"))
    );
    assert_eq!(f.events("a"), "start\nstop\n");
    assert!(
        agent.status().vms[0].disks[0].serving.is_some(),
        "stop keeps the export"
    );
    assert_eq!(state(&mut agent, "b").0, VmState::Running);
    assert_eq!(f.events("b"), "start\n");

    // A new agent adopts the exports: b runs, a stays stopped (its status command says
    // so) and is not started while its medium is away.
    drop(agent);
    let mut agent = f.agent(&exports);
    agent.start();
    assert_eq!(state(&mut agent, "a").0, VmState::Unlocked);
    assert_eq!(state(&mut agent, "b").0, VmState::Running);
    assert_eq!(
        (f.events("a"), f.events("b")),
        ("start\nstop\n".into(), "start\n".into())
    );

    // The medium returns: a starts again from its open export, without a key.
    f.insert();
    agent.rescan();
    assert_eq!(state(&mut agent, "a").0, VmState::Running);
    assert_eq!(f.events("a"), "start\nstop\nstart\n");
    assert_eq!(
        slot_of_open(&f.audit(), "a").len(),
        2,
        "no new key was read"
    );

    // c: only an explicit unlock prompts, with the VM's id.
    let c = agent.unlock("c").unwrap();
    assert_eq!(c.state, VmState::Running);
    let asked = std::fs::read_to_string(f.p("asked")).unwrap();
    assert!(
        asked.contains("--id=vmcrypt:c:root") && asked.contains("Passphrase for c"),
        "{asked}"
    );
    assert_eq!(
        slot_of_open(&f.audit(), "c"),
        [("prompt".to_string(), "ok".to_string())]
    );

    // lock closes the export; unknown names are refused.
    let c = agent.lock("c").unwrap();
    assert_eq!(c.state, VmState::Stopped);
    assert!(c.disks[0].serving.is_none());
    assert_eq!(f.events("c"), "start\nstop\n");
    assert!(
        agent
            .lock("zz")
            .unwrap_err()
            .display_chain()
            .contains("no vm named 'zz'")
    );
}

#[test]
fn a_wrong_prompt_answer_leaves_the_vm_stopped_with_the_reason() {
    let f = Fixture::new();
    std::fs::write(f.p("ask.sh"), "#!/bin/sh\necho wrong\n").unwrap();
    let mut agent = f.agent(&InProcess::default());
    agent.start();
    let e = agent.unlock("c").unwrap_err().display_chain();
    assert!(e.contains("prompt: wrong key"), "{e}");
    let (s, why) = state(&mut agent, "c");
    assert_eq!(s, VmState::Stopped);
    assert!(why.unwrap().contains("wrong key"));
    assert_eq!(f.events("c"), "");
    let mode = Path::new(&f.p("audit.jsonl"))
        .metadata()
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the audit log is private");
}
