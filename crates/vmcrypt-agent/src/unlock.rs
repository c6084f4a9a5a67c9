//! One VM's unlock in progress, the slow part of the agent's work: fetching each disk's
//! keys (a prompt may wait minutes for its answer) and opening the disk with them (the
//! export daemon runs the KDF). An [`UnlockJob`] owns everything it needs (the VM's
//! configuration, the media present when it began, a handle on the exporter and the
//! audit log), so it runs without the agent's lock while the agent serves `lock`,
//! `reload` and `rescan` for other VMs; the agent then applies its [`Unlocked`] outcome
//! (start the VM, or close what was opened). The [`Progress`] it shares with the agent
//! says what happens after it: `lock` of the VM cancels it (a prompt it waits for is
//! killed, a key not yet tried is not tried, what it opened is closed), a removal
//! policy of `stop` keeps its exports but does not start the VM.
use crate::audit::{AuditLog, Record};
use crate::config::{Disk, KeySource, PromptConfig, StoreConfig, Vm};
use crate::export::Exporter;
use crate::keyfile::KeyFilePolicy;
use crate::keys::{self, KeyContext};
use crate::media::Present;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::ErrorKind;

/// What the agent does with an unlock's result when it ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum After {
    /// Start the VM (or record why the unlock failed).
    #[default]
    Start,
    /// Keep the exports, do not start the VM (its key medium left: `stop` policy).
    Keep(String),
    /// Cancelled: close whatever was opened, the VM stays stopped for this reason.
    Lock(String),
}

#[derive(Default)]
struct Shared {
    after: After,
    /// The prompt program the unlock waits for, killed on cancel.
    prompt: Option<u32>,
    done: bool,
    /// Why the VM did not run, as the unlock ended.
    failure: Option<String>,
}

/// The state an unlock in progress shares with the agent.
#[derive(Default)]
pub struct Progress {
    shared: Mutex<Shared>,
    ended: Condvar,
}

impl Progress {
    fn get(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to do when the unlock ends.
    pub fn after(&self) -> After {
        self.get().after.clone()
    }

    /// Ask for `after`. `Lock` cancels: a prompt being waited for is killed now (the
    /// unlock then ends without trying another key); a KDF running is left to finish.
    pub fn set_after(&self, after: After) {
        let mut s = self.get();
        if s.after == After::Start || matches!(after, After::Lock(_)) {
            s.after = after;
        }
        if let (After::Lock(_), Some(pid)) = (&s.after, s.prompt)
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            // Still our unreaped child (the prompt is taken off before it is waited
            // for), so the pid names no other process.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Whether the unlock was cancelled.
    pub fn cancelled(&self) -> bool {
        matches!(self.get().after, After::Lock(_))
    }

    /// Wait for the prompt program `pid` (killed if the unlock is cancelled); false if
    /// the unlock is cancelled already (the caller kills it).
    pub fn watch_prompt(&self, pid: u32) -> bool {
        let mut s = self.get();
        s.prompt = Some(pid);
        !matches!(s.after, After::Lock(_))
    }

    /// The prompt program has answered (or ended): it is about to be reaped.
    pub fn prompt_done(&self) {
        self.get().prompt = None;
    }

    /// Mark the unlock as ended (its outcome applied by the agent), with why the VM
    /// does not run if it does not.
    pub fn end(&self, failure: Option<String>) {
        let mut s = self.get();
        s.done = true;
        s.failure = failure;
        self.ended.notify_all();
    }

    /// Wait until the agent has applied the unlock's outcome; why the VM did not run
    /// then, if it did not (what happened since, e.g. a `lock`, does not change it).
    pub fn wait(&self) -> Option<String> {
        let mut s = self.get();
        while !s.done {
            s = self.ended.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.failure.clone()
    }
}

/// What key sources may need, as of when the unlock began.
pub struct KeyEnv {
    pub store: StoreConfig,
    pub prompt: PromptConfig,
    pub policy: KeyFilePolicy,
    pub media: Present,
}

/// An unlock to run: the disks of `vm` not served when it began.
pub struct UnlockJob {
    pub vm: Vm,
    pub disks: Vec<Disk>,
    /// The key sources that opened the VM's disks already served.
    pub sources: BTreeMap<String, String>,
    pub interactive: bool,
    pub env: KeyEnv,
    pub exporter: Arc<dyn Exporter>,
    pub audit: Arc<AuditLog>,
    pub progress: Arc<Progress>,
}

/// How an unlock ended.
pub struct Unlocked {
    pub vm: Vm,
    /// Every disk's key source, when all disks opened; else why one did not.
    pub result: Result<BTreeMap<String, String>, String>,
    pub progress: Arc<Progress>,
}

impl UnlockJob {
    /// Open every disk in turn; stop at the first that does not open, or when cancelled.
    pub fn run(self) -> Unlocked {
        let mut sources = self.sources.clone();
        let mut result = Ok(());
        for d in &self.disks {
            match self.open_disk(d) {
                Ok(src) => {
                    sources.insert(d.name.clone(), src);
                }
                Err(why) => {
                    result = Err(format!("disk {}: {why}", d.name));
                    break;
                }
            }
        }
        Unlocked {
            result: result.map(|()| sources),
            vm: self.vm,
            progress: self.progress,
        }
    }

    /// Try `d`'s key sources in order (for a disk with backing layers, every
    /// combination of one source per layer, the last layer's sources varying fastest);
    /// the name of the one that opened it, or why none did. A key is fetched at most once
    /// per unlock and dropped (zeroized) on return.
    fn open_disk(&self, d: &Disk) -> Result<String, String> {
        let layers = d.layer_keys();
        let mut fetched: Vec<Vec<Option<Result<SecretBytes, String>>>> = layers
            .iter()
            .map(|l| l.iter().map(|_| None).collect())
            .collect();
        let mut pick = vec![0usize; layers.len()];
        let mut why = Vec::new();
        loop {
            for (i, src) in layers.iter().enumerate() {
                if fetched[i][pick[i]].is_none() {
                    let k = self.fetch_key(d, &src[pick[i]]);
                    fetched[i][pick[i]] = Some(k);
                }
            }
            if let After::Lock(reason) = self.progress.after() {
                return Err(format!("unlock cancelled: {reason}"));
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
                Some(keys) => match self.try_keys(d, &name, &keys) {
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
    fn fetch_key(&self, d: &Disk, src: &KeySource) -> Result<SecretBytes, String> {
        if self.progress.cancelled() {
            return Err("unlock cancelled".into());
        }
        if !self.interactive && !keys::available(src, &self.env.media) {
            return Err("not available".into());
        }
        let cx = KeyContext {
            store: &self.env.store,
            prompt: &self.env.prompt,
            policy: &self.env.policy,
            media: &self.env.media,
            interactive: self.interactive,
            prompt_id: format!("vmcrypt:{}:{}", self.vm.name, d.name),
            progress: Some(&self.progress),
        };
        keys::fetch(src, &cx).map_err(|e| {
            let why = e.display_chain();
            self.audit.write(
                &Record::new("disk-open", false)
                    .vm(&self.vm.name)
                    .disk(&d.name)
                    .source(src.describe())
                    .reason(why.clone()),
            );
            why
        })
    }

    /// Open `d` with `keys` (named `name` in the log).
    fn try_keys(&self, d: &Disk, name: &str, keys: &[&[u8]]) -> Result<(), String> {
        let rec = Record::new("disk-open", false)
            .vm(&self.vm.name)
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
