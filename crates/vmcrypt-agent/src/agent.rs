//! The agent's decisions, free of sockets and threads: what to do when the agent starts
//! (adopt the exports still served from a previous run), when media arrive or leave,
//! and on `unlock`, `lock` and `reload`. Exports and VMs are driven through the
//! [`Exporter`] and [`VmControl`] traits, every step is written to the audit log, and
//! per-VM state (with the reason a VM is stopped) is what `status` reports.
use crate::audit::{AuditLog, Record};
use crate::config::{Checked, Disk, KeySource, RemovalPolicy, Vm};
use crate::export::{ExportInfo, Exporter};
use crate::keyfile::KeyFilePolicy;
use crate::keys::{self, KeyContext};
use crate::media::{self, MediaSources, MediumId, Present};
use crate::vm::VmControl;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{ErrorKind, Result, bail};

/// What a VM is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not running; its disks are closed.
    Stopped,
    /// Its disks are exported but the VM is stopped (the `stop` removal policy).
    Unlocked,
    /// Its disks are being opened (a key being fetched or asked for, a KDF running).
    Unlocking,
    Running,
}

/// A VM in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    /// Why it is not running, when it should be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub disks: Vec<DiskStatus>,
}

/// A disk in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct DiskStatus {
    pub name: String,
    pub export: String,
    /// The export, when one serves the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<ExportInfo>,
    /// The key source that opened it (unknown for an adopted export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_source: Option<String>,
}

/// The agent's whole status.
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    pub media: Vec<String>,
    pub vms: Vec<VmStatus>,
}

#[derive(Clone, Debug)]
struct VmRecord {
    state: VmState,
    reason: Option<String>,
    sources: BTreeMap<String, String>,
}

impl VmRecord {
    fn stopped(reason: Option<String>) -> Self {
        VmRecord {
            state: VmState::Stopped,
            reason,
            sources: BTreeMap::new(),
        }
    }
}

/// The agent.
pub struct Agent {
    cfg: Checked,
    exporter: Box<dyn Exporter>,
    vms: Box<dyn VmControl>,
    audit: AuditLog,
    policy: KeyFilePolicy,
    media: Present,
    records: BTreeMap<String, VmRecord>,
    /// The status as of the last change, for `status` while the agent is busy.
    snapshot: Arc<Mutex<Option<AgentStatus>>>,
}

impl Agent {
    pub fn new(
        cfg: Checked,
        exporter: Box<dyn Exporter>,
        vms: Box<dyn VmControl>,
        audit: AuditLog,
    ) -> Self {
        let policy = policy_of(&cfg);
        Agent {
            cfg,
            exporter,
            vms,
            audit,
            policy,
            media: Present::new(),
            records: BTreeMap::new(),
            snapshot: Arc::default(),
        }
    }

    /// The status as of the agent's last change (a `status` call, or the start of an
    /// unlock, which shows the VM as `unlocking`): what a control thread answers with
    /// while the agent is busy (a prompt, a slow KDF).
    pub fn snapshot(&self) -> Arc<Mutex<Option<AgentStatus>>> {
        self.snapshot.clone()
    }

    fn publish(&mut self) {
        let _ = self.status();
    }

    /// First steps: adopt running exports, look at the media, unlock what can be.
    pub fn start(&mut self) {
        self.audit.write(&Record::new("agent-start", true));
        let names: Vec<String> = self.cfg.vms.iter().map(|v| v.name.clone()).collect();
        for name in &names {
            self.adopt(name);
        }
        self.media = self.scan();
        for m in self.media.keys() {
            self.audit
                .write(&Record::new("media-present", true).medium(m.to_string()));
        }
        self.autostart(&names);
    }

    /// Look at the media again; act on arrivals and removals.
    pub fn rescan(&mut self) {
        let now = self.scan();
        let removed: Vec<MediumId> = self
            .media
            .keys()
            .filter(|m| !now.contains_key(*m))
            .cloned()
            .collect();
        let arrived: Vec<MediumId> = now
            .keys()
            .filter(|m| !self.media.contains_key(*m))
            .cloned()
            .collect();
        self.media = now;
        for m in &removed {
            self.audit
                .write(&Record::new("media-removed", true).medium(m.to_string()));
            self.on_removed(m);
        }
        for m in &arrived {
            self.audit
                .write(&Record::new("media-arrived", true).medium(m.to_string()));
            self.on_arrived(m);
        }
    }

    /// `unlock VM`: open its disks (prompting if a source asks) and start it.
    pub fn unlock(&mut self, name: &str) -> Result<VmStatus> {
        let vm = self.vm(name)?;
        // Media that came or went meanwhile are acted on first.
        self.rescan();
        self.unlock_vm(&vm, true);
        let st = self.vm_status(&vm);
        match st.state {
            VmState::Running => Ok(st),
            _ => bail!(
                NotFound,
                "vm {name} is {}: {}",
                state_word(st.state),
                st.reason.as_deref().unwrap_or("no reason recorded")
            ),
        }
    }

    /// `lock VM`: stop it and close its exports.
    pub fn lock(&mut self, name: &str) -> Result<VmStatus> {
        let vm = self.vm(name)?;
        self.lock_vm(&vm, "locked on request");
        Ok(self.vm_status(&vm))
    }

    /// `reload`: take `cfg`; VMs new to it are adopted and autostarted, VMs gone from it
    /// are left as they are (their exports keep serving until locked by hand).
    pub fn reload(&mut self, cfg: Checked) {
        let new: Vec<String> = cfg
            .vms
            .iter()
            .filter(|v| !self.records.contains_key(&v.name))
            .map(|v| v.name.clone())
            .collect();
        self.policy = policy_of(&cfg);
        self.cfg = cfg;
        self.records
            .retain(|n, _| self.cfg.vms.iter().any(|v| &v.name == n));
        self.audit.write(&Record::new("reload", true));
        for n in &new {
            self.adopt(n);
        }
        // The new VMs' media count as arrivals; the others are autostarted if they did
        // not just fail.
        self.rescan();
        self.autostart(&new);
    }

    /// Everything `status` shows.
    pub fn status(&mut self) -> AgentStatus {
        let vms: Vec<Vm> = self.cfg.vms.clone();
        let st = AgentStatus {
            media: self.media.keys().map(ToString::to_string).collect(),
            vms: vms.iter().map(|v| self.vm_status(v)).collect(),
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(st.clone());
        st
    }

    fn vm(&self, name: &str) -> Result<Vm> {
        match self.cfg.vms.iter().find(|v| v.name == name) {
            Some(v) => Ok(v.clone()),
            None => bail!(
                NotFound,
                "no vm named '{name}' in the agent's configuration"
            ),
        }
    }

    fn scan(&self) -> Present {
        let raw = &self.cfg.raw.media;
        let src = MediaSources {
            watch: raw.watch.clone(),
            require_mount: raw.require_mount,
            mounts: raw.mounts,
            dev_disk: raw.dev_disk.clone(),
            mountinfo: raw.mountinfo.clone(),
        };
        let wanted: Vec<MediumId> = self
            .cfg
            .vms
            .iter()
            .flat_map(|v| v.media().into_iter().cloned())
            .collect();
        media::scan(&src, &wanted)
    }

    /// Exports left by a previous agent become this one's.
    fn adopt(&mut self, name: &str) {
        let Ok(vm) = self.vm(name) else { return };
        let served: Vec<bool> = vm.disks.iter().map(|d| self.serving(d).is_some()).collect();
        let mut rec = VmRecord::stopped(None);
        if served.iter().all(|s| *s) {
            rec.state = match self.vms.is_running(&vm) {
                Some(false) => VmState::Unlocked,
                _ => VmState::Running,
            };
            for d in &vm.disks {
                let mut r = Record::new("export-adopted", true).vm(name).disk(&d.name);
                let want = d.socket_in(&self.cfg.raw.run_dir);
                if let Some(e) = self.serving(d)
                    && std::path::Path::new(&e.socket) != want
                {
                    r = r.reason(format!(
                        "served on {}, configured {} (takes effect when the export is reopened)",
                        e.socket,
                        want.display()
                    ));
                }
                self.audit.write(&r);
            }
        }
        self.records.insert(name.to_string(), rec);
    }

    fn autostart(&mut self, names: &[String]) {
        for n in names {
            let Ok(vm) = self.vm(n) else { continue };
            let failed = self.records.get(n).is_some_and(|r| r.reason.is_some());
            if vm.autostart
                && !failed
                && self.state(n) != VmState::Running
                && self.keys_available(&vm)
            {
                self.unlock_vm(&vm, false);
            }
        }
    }

    /// The VMs that take a key from `m`.
    fn vms_using(&self, m: &MediumId) -> Vec<Vm> {
        let uses = |v: &&Vm| v.media().contains(&m);
        self.cfg.vms.iter().filter(uses).cloned().collect()
    }

    fn on_arrived(&mut self, m: &MediumId) {
        let vms = self.vms_using(m);
        for vm in vms {
            if self.state(&vm.name) != VmState::Running && self.keys_available(&vm) {
                self.unlock_vm(&vm, false);
            }
        }
    }

    fn on_removed(&mut self, m: &MediumId) {
        let vms = self.vms_using(m);
        for vm in vms {
            if self.state(&vm.name) == VmState::Stopped {
                continue;
            }
            let why = format!("key medium {m} removed");
            match vm.on_media_removed {
                RemovalPolicy::Keep => {}
                RemovalPolicy::Stop => self.stop_vm(&vm, &why),
                RemovalPolicy::Lock => self.lock_vm(&vm, &why),
            }
        }
    }

    fn state(&self, name: &str) -> VmState {
        self.records.get(name).map_or(VmState::Stopped, |r| r.state)
    }

    /// Every disk has a key source that needs no prompt and is present now, even a disk
    /// that is still served: a VM stopped because its medium left is not started again
    /// (by an arrival of another medium, a restart of the agent) until the medium is back.
    fn keys_available(&self, vm: &Vm) -> bool {
        vm.disks.iter().all(|d| {
            d.layer_keys()
                .iter()
                .all(|l| l.iter().any(|k| keys::available(k, &self.media)))
        })
    }

    fn serving(&mut self, d: &Disk) -> Option<ExportInfo> {
        self.exporter.status(d).ok().flatten()
    }

    /// Open every disk of `vm`, then start it; on any failure close what was opened and
    /// record why.
    fn unlock_vm(&mut self, vm: &Vm, interactive: bool) {
        let rec = self
            .records
            .entry(vm.name.clone())
            .or_insert_with(|| VmRecord::stopped(None));
        rec.state = VmState::Unlocking;
        rec.reason = None;
        let mut sources = rec.sources.clone();
        self.publish();
        for d in &vm.disks {
            if self.serving(d).is_some() {
                continue;
            }
            match self.open_disk(vm, d, interactive) {
                Ok(src) => {
                    sources.insert(d.name.clone(), src);
                }
                Err(why) => {
                    self.close_disks(vm);
                    return self.fail(vm, format!("disk {}: {why}", d.name));
                }
            }
        }
        match self.vms.start(vm) {
            Ok(()) => {
                self.audit
                    .write(&Record::new("vm-start", true).vm(&vm.name));
                let rec = VmRecord {
                    state: VmState::Running,
                    reason: None,
                    sources,
                };
                self.records.insert(vm.name.clone(), rec);
            }
            Err(e) => {
                self.close_disks(vm);
                self.fail(vm, format!("starting the vm failed: {}", e.display_chain()));
            }
        }
    }

    /// Try `d`'s key sources in order (for a disk with backing layers, every
    /// combination of one source per layer, the last layer's sources varying fastest);
    /// the name of the one that opened it, or why none did. A key is fetched at most once
    /// per unlock and dropped (zeroized) on return.
    fn open_disk(
        &mut self,
        vm: &Vm,
        d: &Disk,
        interactive: bool,
    ) -> std::result::Result<String, String> {
        let layers = d.layer_keys();
        let mut fetched: Vec<Vec<Option<std::result::Result<SecretBytes, String>>>> = layers
            .iter()
            .map(|l| l.iter().map(|_| None).collect())
            .collect();
        let mut pick = vec![0usize; layers.len()];
        let mut why = Vec::new();
        loop {
            for (i, src) in layers.iter().enumerate() {
                if fetched[i][pick[i]].is_none() {
                    let k = self.fetch_key(vm, d, &src[pick[i]], interactive);
                    fetched[i][pick[i]] = Some(k);
                }
            }
            let keys: Option<Vec<&[u8]>> = pick
                .iter()
                .enumerate()
                .map(|(i, p)| match &fetched[i][*p] {
                    Some(Ok(k)) => Some(k.as_bytes()),
                    _ => None,
                })
                .collect();
            let name = describe(&layers, &pick);
            match keys {
                Some(keys) => match self.try_keys(vm, d, &name, &keys) {
                    Ok(()) => return Ok(name),
                    Err(e) => why.push(format!("{name}: {e}")),
                },
                None => {
                    // Report each source that gave no key once.
                    for (i, p) in pick.iter().enumerate() {
                        // (An emptied message marks one already reported.)
                        if let Some(Err(e)) = &mut fetched[i][*p]
                            && !e.is_empty()
                        {
                            why.push(format!("{}: {e}", describe_one(i, &layers[i][*p])));
                            e.clear();
                        }
                    }
                }
            }
            if !next_pick(&mut pick, &layers) {
                return Err(why.join("; "));
            }
        }
    }

    /// One key from one source (a failure to read one is audited; a source that is not
    /// available is not).
    fn fetch_key(
        &mut self,
        vm: &Vm,
        d: &Disk,
        src: &KeySource,
        interactive: bool,
    ) -> std::result::Result<SecretBytes, String> {
        if !interactive && !keys::available(src, &self.media) {
            return Err("not available".into());
        }
        let cx = KeyContext {
            store: &self.cfg.raw.store,
            prompt: &self.cfg.raw.prompt,
            policy: &self.policy,
            media: &self.media,
            interactive,
            prompt_id: format!("vmcrypt:{}:{}", vm.name, d.name),
        };
        keys::fetch(src, &cx).map_err(|e| {
            let why = e.display_chain();
            self.audit.write(
                &Record::new("disk-open", false)
                    .vm(&vm.name)
                    .disk(&d.name)
                    .source(src.describe())
                    .reason(why.clone()),
            );
            why
        })
    }

    /// Open `d` with `keys` (named `name` in the log).
    fn try_keys(
        &mut self,
        vm: &Vm,
        d: &Disk,
        name: &str,
        keys: &[&[u8]],
    ) -> std::result::Result<(), String> {
        let rec = Record::new("disk-open", false)
            .vm(&vm.name)
            .disk(&d.name)
            .source(name.to_string());
        match self.exporter.open(d, keys) {
            Ok(info) => {
                let mut r = rec;
                r.slot = info.slot;
                r.result = "ok";
                self.audit.write(&r);
                Ok(())
            }
            Err(e) => {
                let why = match e.kind() {
                    ErrorKind::WrongKey => format!("wrong key ({})", e.display_chain()),
                    _ => e.display_chain(),
                };
                self.audit.write(&rec.reason(why.clone()));
                Err(why)
            }
        }
    }

    fn fail(&mut self, vm: &Vm, reason: String) {
        self.audit.write(
            &Record::new("vm-unlock", false)
                .vm(&vm.name)
                .reason(reason.clone()),
        );
        self.records
            .insert(vm.name.clone(), VmRecord::stopped(Some(reason)));
    }

    fn stop_vm(&mut self, vm: &Vm, why: &str) {
        let r = self.vms.stop(vm);
        self.audit.write(&outcome(
            Record::new("vm-stop", r.is_ok()).vm(&vm.name).reason(why),
            &r,
        ));
        let rec = self
            .records
            .entry(vm.name.clone())
            .or_insert_with(|| VmRecord::stopped(None));
        rec.state = VmState::Unlocked;
        rec.reason = Some(why.to_string());
    }

    fn lock_vm(&mut self, vm: &Vm, why: &str) {
        if self.state(&vm.name) != VmState::Stopped || self.vms.is_running(vm) == Some(true) {
            self.stop_vm(vm, why);
        }
        self.close_disks(vm);
        self.records
            .insert(vm.name.clone(), VmRecord::stopped(Some(why.to_string())));
    }

    fn close_disks(&mut self, vm: &Vm) {
        for d in &vm.disks {
            if self.serving(d).is_none() {
                continue;
            }
            let r = self.exporter.close(d);
            self.audit.write(&outcome(
                Record::new("export-close", r.is_ok())
                    .vm(&vm.name)
                    .disk(&d.name),
                &r,
            ));
        }
    }

    fn vm_status(&mut self, vm: &Vm) -> VmStatus {
        let rec = self
            .records
            .get(&vm.name)
            .cloned()
            .unwrap_or_else(|| VmRecord::stopped(None));
        let disks = vm
            .disks
            .iter()
            .map(|d| DiskStatus {
                name: d.name.clone(),
                export: d.export.clone(),
                serving: self.serving(d),
                key_source: rec.sources.get(&d.name).cloned(),
            })
            .collect();
        VmStatus {
            name: vm.name.clone(),
            state: rec.state,
            reason: rec.reason,
            disks,
        }
    }
}

/// A source as named for layer `i` (layer 0 is the image itself).
fn describe_one(i: usize, src: &KeySource) -> String {
    match i {
        0 => src.describe(),
        _ => format!("backing {i}: {}", src.describe()),
    }
}

/// The sources `pick` chooses, one per layer.
fn describe(layers: &[&[KeySource]], pick: &[usize]) -> String {
    let names: Vec<String> = pick
        .iter()
        .enumerate()
        .map(|(i, p)| describe_one(i, &layers[i][*p]))
        .collect();
    names.join("; ")
}

/// The next combination of one source per layer; false after the last.
fn next_pick(pick: &mut [usize], layers: &[&[KeySource]]) -> bool {
    for i in (0..pick.len()).rev() {
        pick[i] += 1;
        if pick[i] < layers[i].len() {
            return true;
        }
        pick[i] = 0;
    }
    false
}

fn outcome(r: Record, res: &Result<()>) -> Record {
    match res {
        Ok(()) => r,
        Err(e) => {
            let why = match &r.reason {
                Some(w) => format!("{w}: {}", e.display_chain()),
                None => e.display_chain(),
            };
            r.reason(why)
        }
    }
}

fn policy_of(cfg: &Checked) -> KeyFilePolicy {
    KeyFilePolicy::new(
        cfg.raw.media.max_key_size,
        cfg.raw.media.key_owners.as_deref(),
    )
}

/// A state as a word for messages.
pub fn state_word(s: VmState) -> &'static str {
    match s {
        VmState::Stopped => "stopped",
        VmState::Unlocked => "unlocked (vm stopped)",
        VmState::Unlocking => "unlocking",
        VmState::Running => "running",
    }
}
