//! `vmcrypt agent`: the unlock daemon (`agent run --config FILE`) and its control
//! commands (`status [--json]`, `unlock VM`, `lock VM`, `reload`, `rescan`), which talk
//! to the daemon's control socket. Everything the daemon decides lives in the
//! `vmcrypt-agent` crate; this file parses flags, wires the real exporter (`luks
//! open-daemon` processes of this binary) and prints replies.
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use vmcrypt_agent::config::{Config, DEFAULT_CONTROL};
use vmcrypt_agent::control::{Request, request};
use vmcrypt_agent::export::LuksDaemons;
use vmcrypt_agent::{Daemon, vm::Programs};
use vmcrypt_error::{Error, Result};

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Run the agent (under systemd: Type=notify)
    Run(RunArgs),
    /// Show the VMs, their state and exports
    Status(StatusArgs),
    /// Unlock a VM's disks (prompting if a key source asks) and start it
    Unlock(VmArgs),
    /// Stop a VM and close its exports
    Lock(VmArgs),
    /// Re-read the configuration
    Reload(SocketArgs),
    /// Look for key media now (for udev rules)
    Rescan(SocketArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The configuration (TOML)
    #[arg(
        long = "config",
        short = 'c',
        default_value = "/etc/vmcrypt/agent.toml"
    )]
    config: PathBuf,
}

#[derive(Args, Debug)]
pub struct SocketArgs {
    /// The agent's control socket (default: the one in --config, else /run/vmcrypt/agent.sock)
    #[arg(long = "socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read the control socket's path from this configuration
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    sock: SocketArgs,
    /// Print the agent's JSON
    #[arg(long = "json")]
    json: bool,
}

#[derive(Args, Debug)]
pub struct VmArgs {
    #[command(flatten)]
    sock: SocketArgs,
    /// The VM's name in the configuration
    vm: String,
}

pub fn run(c: AgentCommand) -> Result<u8> {
    match c {
        AgentCommand::Run(a) => daemon(&a),
        AgentCommand::Status(a) => status(&a),
        AgentCommand::Unlock(a) => vm_request(&a, Request::Unlock { vm: a.vm.clone() }),
        AgentCommand::Lock(a) => vm_request(&a, Request::Lock { vm: a.vm.clone() }),
        AgentCommand::Reload(a) => call(&a, Request::Reload).map(|_| 0),
        AgentCommand::Rescan(a) => call(&a, Request::Rescan).map(|_| 0),
    }
}

fn daemon(a: &RunArgs) -> Result<u8> {
    let exe = std::env::current_exe().map_err(|e| Error::io(e, "finding the vmcrypt binary"))?;
    let cfg = Config::load(&a.config)?;
    Daemon {
        config_path: a.config.clone(),
        exporter: Box::new(LuksDaemons::new(exe, &cfg.raw.run_dir)),
        vms: Box::new(Programs),
    }
    .run()
    .map(|()| 0)
}

impl SocketArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            Some(c) => Ok(Config::load(c)?.raw.control_socket),
            None => Ok(DEFAULT_CONTROL.into()),
        }
    }
}

/// Unlocking may wait for a prompt or a slow KDF.
const TIMEOUT: Duration = Duration::from_secs(600);

fn call(a: &SocketArgs, req: Request) -> Result<Value> {
    request(&a.path()?, &req, TIMEOUT)
}

fn vm_request(a: &VmArgs, req: Request) -> Result<u8> {
    let v = call(&a.sock, req)?;
    print_vm(&v["vm"]);
    Ok(0)
}

fn status(a: &StatusArgs) -> Result<u8> {
    let v = call(&a.sock, Request::Status)?;
    let st = &v["status"];
    if a.json {
        println!("{}", serde_json::to_string_pretty(st).unwrap_or_default());
        return Ok(0);
    }
    let media: Vec<&str> = st["media"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "media: {}",
        if media.is_empty() {
            "none".to_string()
        } else {
            media.join(", ")
        }
    );
    for vm in st["vms"].as_array().into_iter().flatten() {
        print_vm(vm);
    }
    Ok(0)
}

fn print_vm(vm: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    print!("{}: {}", s(&vm["name"]), s(&vm["state"]));
    match vm["reason"].as_str() {
        Some(r) => println!(" ({r})"),
        None => println!(),
    }
    for d in vm["disks"].as_array().into_iter().flatten() {
        let serving = &d["serving"];
        let how = if serving.is_object() {
            format!(
                "serving on {} (slot {}, pid {})",
                s(&serving["socket"]),
                serving["slot"],
                serving["pid"]
            )
        } else {
            "closed".to_string()
        };
        print!("  disk {}: {how}", s(&d["name"]));
        match d["key_source"].as_str() {
            Some(k) => println!(", key from {k}"),
            None => println!(),
        }
    }
}
