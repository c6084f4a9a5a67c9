//! The daemon's loop: load the configuration, open the audit log, bind the control
//! socket, start the media watch, adopt and unlock ([`Agent::start`]), tell systemd
//! READY=1, then handle one event at a time: a control request, or a rescan (from the
//! watch, or every `rescan_interval` seconds), each holding the agent's lock. Unlocks
//! are the exception: their slow part (a prompt, the KDF) runs on a thread of its own
//! without the lock ([`crate::unlock`]), so `lock`, `reload` and `rescan` are served
//! meanwhile, and an `unlock` request is answered from that thread when it ends. `lock`
//! of a VM being unlocked cancels the unlock (killing a prompt it waits for) and is
//! answered once what the unlock opened is closed. `status` is answered on the control
//! connection's own thread: live when the agent is free, else the snapshot the agent
//! published when it began its current work. SIGTERM ends the process; exports and VMs
//! keep running, and the next agent adopts them.
use crate::agent::{Agent, LOCKED, VmStatus};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::control::{self, Call, Request};
use crate::export::Exporter;
use crate::notify::notify;
use crate::unlock::{Progress, UnlockJob, Unlocked};
use crate::vm::VmControl;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vmcrypt_error::{Error, ErrorKind, Result};

/// What wakes the loop.
pub enum Event {
    Call(Call),
    Rescan,
}

/// How the daemon is put together (the CLI gives the real exporter and VM control).
pub struct Daemon {
    pub config_path: PathBuf,
    pub exporter: Box<dyn Exporter>,
    pub vms: Box<dyn VmControl>,
}

impl Daemon {
    /// Run until the process is killed.
    pub fn run(self) -> Result<()> {
        let cfg = Config::load(&self.config_path)?;
        let raw = cfg.raw.clone();
        let audit = AuditLog::open(&raw.audit_log)?;
        let (tx, rx) = channel();
        let agent = Arc::new(Mutex::new(Agent::new(cfg, self.exporter, self.vms, audit)));
        let status = status_fn(&agent);
        // Held until start-up is done: `status` meanwhile says the agent is starting.
        let mut held = lock(&agent);
        control::serve(&raw.control_socket, tx.clone(), status)?;
        crate::watch::spawn(raw.media.watch.clone(), tx);
        // Start-up unlocks run inline: READY=1 means they are done.
        held.start();
        held.defer_unlocks();
        drop(held);
        let _ = notify("READY=1\nSTATUS=serving");
        let tick = Duration::from_secs(raw.rescan_interval);
        loop {
            let event = rx.recv_timeout(tick);
            let mut held = lock(&agent);
            match event {
                Ok(Event::Call((req, reply))) => {
                    call(&agent, &mut held, &self.config_path, req, reply)
                }
                Ok(Event::Rescan) | Err(RecvTimeoutError::Timeout) => held.rescan(),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            for job in held.take_unlocks() {
                spawn_unlock(&agent, job);
            }
        }
    }
}

/// Serve one request; `unlock`, and `lock` of a VM being unlocked, are answered from a
/// thread once the unlock has ended.
fn call(
    agent: &Arc<Mutex<Agent>>,
    held: &mut Agent,
    config: &Path,
    req: Request,
    reply: Sender<Value>,
) {
    match req {
        Request::Unlock { vm } => match held.request_unlock(&vm) {
            Ok(progress) => after(agent, progress, reply, move |a, failure| match failure {
                Some(why) => Err(Error::new(ErrorKind::NotFound, why)),
                None => a.unlock_result(&vm),
            }),
            Err(e) => {
                let _ = reply.send(error_value(&e));
            }
        },
        Request::Lock { vm } => match held.cancel_unlock(&vm, LOCKED) {
            Some(progress) => after(agent, progress, reply, move |a, _| a.lock(&vm)),
            None => {
                let _ = reply.send(answer(held, config, Request::Lock { vm }));
            }
        },
        req => {
            let _ = reply.send(answer(held, config, req));
        }
    }
}

/// Run `job` on a thread of its own, then apply its outcome under the agent's lock (a
/// panic is an outcome too, so the VM does not stay `unlocking` and its waiters wait).
fn spawn_unlock(agent: &Arc<Mutex<Agent>>, job: UnlockJob) {
    let agent = agent.clone();
    std::thread::spawn(move || {
        let (vm, progress) = (job.vm.clone(), job.progress.clone());
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
            .unwrap_or_else(|_| Unlocked {
                vm,
                result: Err("internal error: the unlock panicked".into()),
                progress,
            });
        lock(&agent).finish_unlock(out);
    });
}

/// Once `progress` has ended, reply with what `then` says about the VM (given why the
/// unlock did not run it, if it did not).
fn after(
    agent: &Arc<Mutex<Agent>>,
    progress: Arc<Progress>,
    reply: Sender<Value>,
    then: impl FnOnce(&mut Agent, Option<String>) -> Result<VmStatus> + Send + 'static,
) {
    let agent = agent.clone();
    std::thread::spawn(move || {
        let failure = progress.wait();
        let r = then(&mut lock(&agent), failure);
        let _ = reply.send(vm_reply(r));
    });
}

fn vm_reply(r: Result<VmStatus>) -> Value {
    match r {
        Ok(v) => json!({ "ok": true, "vm": v }),
        Err(e) => error_value(&e),
    }
}

fn lock(agent: &Mutex<Agent>) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|e| e.into_inner())
}

/// `status` from a connection's thread: live if the agent is free, else its snapshot.
fn status_fn(agent: &Arc<Mutex<Agent>>) -> control::StatusFn {
    let agent = agent.clone();
    let snapshot = lock(&agent).snapshot();
    Arc::new(move || {
        let st = match agent.try_lock() {
            Ok(mut a) => Some(a.status()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().status()),
            Err(std::sync::TryLockError::WouldBlock) => {
                snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        };
        match st {
            Some(st) => json!({ "ok": true, "status": st }),
            None => control::error_reply("the agent is starting"),
        }
    })
}

/// The reply to a request answered on the spot.
fn answer(agent: &mut Agent, config: &Path, req: Request) -> Value {
    let r = match req {
        Request::Status => Ok(json!({ "status": agent.status() })),
        Request::Reload => Config::load(config).map(|c| {
            agent.reload(c);
            json!({})
        }),
        Request::Rescan => {
            agent.rescan();
            Ok(json!({}))
        }
        Request::Lock { vm } => agent.lock(&vm).map(|v| json!({ "vm": v })),
        Request::Unlock { vm } => agent.unlock(&vm).map(|v| json!({ "vm": v })),
    };
    match r {
        Ok(mut v) => {
            v["ok"] = Value::Bool(true);
            v
        }
        Err(e) => error_value(&e),
    }
}

fn error_value(e: &Error) -> Value {
    let kind = match e.kind() {
        ErrorKind::NotFound => "not-found",
        ErrorKind::WrongKey => "wrong-key",
        ErrorKind::Usage => "usage",
        ErrorKind::Busy => "busy",
        _ => "other",
    };
    json!({ "ok": false, "error": e.display_chain(), "kind": kind })
}
