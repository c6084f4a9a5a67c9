//! The agent's decisions, free of sockets and threads: what to do when the agent starts
//! (adopt the exports still served from a previous run), when media arrive or leave,
//! and on `unlock`, `lock` and `reload`. Exports and VMs are driven through the
//! [`Exporter`] and [`VmControl`] traits, every step is written to the audit log, and
//! per-VM state (with the reason a VM is stopped) is what `status` reports.
//!
//! Unlocking a VM is begun here and run as an [`UnlockJob`] ([`crate::unlock`]): inline
//! by default, or, once [`Agent::defer_unlocks`] is called (the daemon does), handed out
//! by [`Agent::take_unlocks`] to run without the agent's lock and brought back with
//! [`Agent::finish_unlock`]. A VM has at most one unlock in progress.
use crate::audit::{AuditLog, Record};
use crate::config::{Checked, Disk, RemovalPolicy, Vm};
use crate::export::{ExportInfo, Exporter};
use crate::keyfile::KeyFilePolicy;
use crate::keys;
use crate::media::{self, MediaSources, MediumId, Present};
use crate::unlock::{After, KeyEnv, Progress, UnlockJob, Unlocked};
use crate::vm::VmControl;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmcrypt_error::{Result, bail};

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
    exporter: Arc<dyn Exporter>,
    vms: Box<dyn VmControl>,
    audit: Arc<AuditLog>,
    policy: KeyFilePolicy,
    media: Present,
    records: BTreeMap<String, VmRecord>,
    /// The status as of the last change, for `status` while the agent is busy.
    snapshot: Arc<Mutex<Option<AgentStatus>>>,
    /// The unlocks in progress, by VM.
    unlocking: BTreeMap<String, Arc<Progress>>,
    /// Unlocks begun but not run, when the caller runs them ([`Agent::defer_unlocks`]).
    queued: Option<Vec<UnlockJob>>,
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
            exporter: Arc::from(exporter),
            vms,
            audit: Arc::new(audit),
            policy,
            media: Present::new(),
            records: BTreeMap::new(),
            snapshot: Arc::default(),
            unlocking: BTreeMap::new(),
            queued: None,
        }
    }

    /// From now on, unlocks begun by the agent (media arriving, `reload`, `unlock`
    /// requests) wait in [`Agent::take_unlocks`] instead of running inline.
    pub fn defer_unlocks(&mut self) {
        self.queued.get_or_insert_with(Vec::new);
    }

    /// The unlocks begun since the last call: the caller runs each
    /// ([`UnlockJob::run`], without the agent) and hands its outcome to
    /// [`Agent::finish_unlock`].
    pub fn take_unlocks(&mut self) -> Vec<UnlockJob> {
        self.queued.as_mut().map(std::mem::take).unwrap_or_default()
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
        if !self.unlocking.contains_key(name) {
            let job = self.begin_unlock(&vm, true);
            let out = job.run();
            self.finish_unlock(out);
        }
        self.unlock_result(name)
    }

    /// `unlock VM` for a caller that runs unlocks ([`Agent::defer_unlocks`]): begins it
    /// (or finds the one in progress); once the returned progress has ended, its
    /// failure, else [`Agent::unlock_result`].
    pub fn request_unlock(&mut self, name: &str) -> Result<Arc<Progress>> {
        let vm = self.vm(name)?;
        self.rescan();
        if let Some(p) = self.unlocking.get(name) {
            return Ok(p.clone());
        }
        let job = self.begin_unlock(&vm, true);
        let progress = job.progress.clone();
        self.queue_or_run(job);
        Ok(progress)
    }

    /// What `unlock VM` answers: its status if it runs, else why not.
    pub fn unlock_result(&mut self, name: &str) -> Result<VmStatus> {
        let vm = self.vm(name)?;
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

    /// `lock VM`: stop it and close its exports. A VM being unlocked is refused (see
    /// [`Agent::cancel_unlock`]).
    pub fn lock(&mut self, name: &str) -> Result<VmStatus> {
        let vm = self.vm(name)?;
        if self.unlocking.contains_key(name) {
            bail!(
                Busy,
                "vm {name} is being unlocked: cancel the unlock first, then lock it"
            );
        }
        self.lock_vm(&vm, LOCKED);
        Ok(self.vm_status(&vm))
    }

    /// Cancel the unlock of `name` in progress, if there is one, for `why`: a prompt it
    /// waits for is killed, no further key is tried, and when it ends what it opened is
    /// closed and the VM stays stopped. The progress to wait for before locking.
    pub fn cancel_unlock(&mut self, name: &str, why: &str) -> Option<Arc<Progress>> {
        let p = self.unlocking.get(name)?;
        p.set_after(After::Lock(why.to_string()));
        Some(p.clone())
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
            let why = format!("key medium {m} removed");
            if let Some(p) = self.unlocking.get(&vm.name) {
                // Applied when the unlock ends.
                match vm.on_media_removed {
                    RemovalPolicy::Keep => {}
                    RemovalPolicy::Stop => p.set_after(After::Keep(why)),
                    RemovalPolicy::Lock => p.set_after(After::Lock(why)),
                }
                continue;
            }
            if self.state(&vm.name) == VmState::Stopped {
                continue;
            }
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

    fn serving(&self, d: &Disk) -> Option<ExportInfo> {
        self.exporter.status(d).ok().flatten()
    }

    /// Unlock `vm` (open every disk, then start it; on any failure close what was
    /// opened and record why), unless an unlock of it is in progress.
    fn unlock_vm(&mut self, vm: &Vm, interactive: bool) {
        if !self.unlocking.contains_key(&vm.name) {
            let job = self.begin_unlock(vm, interactive);
            self.queue_or_run(job);
        }
    }

    fn queue_or_run(&mut self, job: UnlockJob) {
        match &mut self.queued {
            Some(q) => q.push(job),
            None => {
                let out = job.run();
                self.finish_unlock(out);
            }
        }
    }

    /// Mark `vm` as unlocking and make the job that opens its disks not served yet.
    fn begin_unlock(&mut self, vm: &Vm, interactive: bool) -> UnlockJob {
        let rec = self
            .records
            .entry(vm.name.clone())
            .or_insert_with(|| VmRecord::stopped(None));
        rec.state = VmState::Unlocking;
        rec.reason = None;
        let sources = rec.sources.clone();
        self.publish();
        let progress = Arc::new(Progress::default());
        self.unlocking.insert(vm.name.clone(), progress.clone());
        let disks = vm
            .disks
            .iter()
            .filter(|d| self.serving(d).is_none())
            .cloned()
            .collect();
        UnlockJob {
            vm: vm.clone(),
            disks,
            sources,
            interactive,
            env: KeyEnv {
                store: self.cfg.raw.store.clone(),
                prompt: self.cfg.raw.prompt.clone(),
                policy: self.policy.clone(),
                media: self.media.clone(),
            },
            exporter: self.exporter.clone(),
            audit: self.audit.clone(),
            progress,
        }
    }

    /// Apply how an unlock ended: start the VM, keep its exports (its medium left
    /// meanwhile, `stop` policy), or close what was opened (failed, or cancelled). A VM
    /// a `reload` removed meanwhile is left as it is, like the other VMs removed.
    pub fn finish_unlock(&mut self, out: Unlocked) {
        let Unlocked {
            vm,
            result,
            progress,
        } = out;
        if self
            .unlocking
            .get(&vm.name)
            .is_some_and(|p| Arc::ptr_eq(p, &progress))
        {
            self.unlocking.remove(&vm.name);
        }
        if self.cfg.vms.iter().any(|v| v.name == vm.name) {
            match (progress.after(), result) {
                (After::Lock(why), _) => {
                    self.close_disks(&vm);
                    self.fail(&vm, format!("unlock cancelled: {why}"));
                }
                (_, Err(why)) => {
                    self.close_disks(&vm);
                    self.fail(&vm, why);
                }
                (After::Keep(why), Ok(sources)) => {
                    let rec = VmRecord {
                        state: VmState::Unlocked,
                        reason: Some(why),
                        sources,
                    };
                    self.records.insert(vm.name.clone(), rec);
                }
                (After::Start, Ok(sources)) => self.start_unlocked(&vm, sources),
            }
        }
        progress.end(
            self.unlock_result(&vm.name)
                .err()
                .map(|e| e.display_chain()),
        );
    }

    /// Start `vm`, whose disks are all served.
    fn start_unlocked(&mut self, vm: &Vm, sources: BTreeMap<String, String>) {
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

/// The reason a VM locked by `lock` is stopped.
pub const LOCKED: &str = "locked on request";

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
