//! Starting and stopping VMs: a libvirt domain through `virsh -c URI start|destroy|domstate`,
//! or the configured commands. Each call has a deadline.
use crate::config::{Starter, Vm};
use crate::proc;
use std::time::Duration;
use vmcrypt_error::Result;

const LIMIT: Duration = Duration::from_secs(120);

/// How the agent drives VMs (a trait so the agent can be tested without a hypervisor).
pub trait VmControl: Send {
    fn start(&mut self, vm: &Vm) -> Result<()>;
    fn stop(&mut self, vm: &Vm) -> Result<()>;
    /// `Some(running)` when it can tell.
    fn is_running(&mut self, vm: &Vm) -> Option<bool>;
}

/// The real thing: virsh or the commands of the configuration.
#[derive(Default)]
pub struct Programs;

fn virsh(l: &crate::config::LibvirtVm, verb: &str) -> Vec<String> {
    vec![
        l.virsh.display().to_string(),
        "-c".into(),
        l.uri.clone(),
        verb.into(),
        l.domain.clone(),
    ]
}

impl VmControl for Programs {
    fn start(&mut self, vm: &Vm) -> Result<()> {
        if self.is_running(vm) == Some(true) {
            return Ok(());
        }
        let argv = match &vm.starter {
            Starter::Libvirt(l) => virsh(l, "start"),
            Starter::Command(c) => c.start.clone(),
        };
        proc::run_ok(&argv, LIMIT).map(drop)
    }

    fn stop(&mut self, vm: &Vm) -> Result<()> {
        if self.is_running(vm) == Some(false) {
            return Ok(());
        }
        let argv = match &vm.starter {
            Starter::Libvirt(l) => virsh(l, "destroy"),
            Starter::Command(c) => c.stop.clone(),
        };
        proc::run_ok(&argv, LIMIT).map(drop)
    }

    fn is_running(&mut self, vm: &Vm) -> Option<bool> {
        match &vm.starter {
            Starter::Libvirt(l) => {
                let out = proc::run_ok(&virsh(l, "domstate"), LIMIT).ok()?;
                Some(out.stdout.trim() == "running")
            }
            Starter::Command(c) => {
                let argv = c.status.as_ref()?;
                Some(proc::run(argv, LIMIT).ok()?.status.success())
            }
        }
    }
}
