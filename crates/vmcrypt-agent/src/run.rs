//! The daemon's loop: load the configuration, open the audit log, bind the control
//! socket, start the media watch, adopt and unlock ([`Agent::start`]), tell systemd
//! READY=1, then handle one event at a time: a control request, or a rescan (from the
//! watch, or every `rescan_interval` seconds). Requests that change things are served
//! one after another, each holding the agent's lock; `status` is answered on the
//! control connection's own thread: live when the agent is idle, else the snapshot the
//! agent published when it began its current work (so an unlock waiting for a prompt
//! shows as `unlocking` instead of blocking `status`). SIGTERM ends the process;
//! exports and VMs keep running, and the next agent adopts them.
use crate::agent::Agent;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::control::{self, Call, Request};
use crate::export::Exporter;
use crate::notify::notify;
use crate::vm::VmControl;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, channel};
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
        held.start();
        drop(held);
        let _ = notify("READY=1\nSTATUS=serving");
        let tick = Duration::from_secs(raw.rescan_interval);
        loop {
            let event = rx.recv_timeout(tick);
            let mut held = lock(&agent);
            match event {
                Ok(Event::Call((req, reply))) => {
                    let _ = reply.send(answer(&mut held, &self.config_path, req));
                }
                Ok(Event::Rescan) | Err(RecvTimeoutError::Timeout) => held.rescan(),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
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

fn answer(agent: &mut Agent, config: &Path, req: Request) -> Value {
    let r = match req {
        Request::Status => Ok(json!({ "status": agent.status() })),
        Request::Unlock { vm } => agent.unlock(&vm).map(|v| json!({ "vm": v })),
        Request::Lock { vm } => agent.lock(&vm).map(|v| json!({ "vm": v })),
        Request::Reload => Config::load(config).map(|c| {
            agent.reload(c);
            json!({})
        }),
        Request::Rescan => {
            agent.rescan();
            Ok(json!({}))
        }
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
        _ => "other",
    };
    json!({ "ok": false, "error": e.display_chain(), "kind": kind })
}
