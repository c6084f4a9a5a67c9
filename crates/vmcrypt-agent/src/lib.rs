//! `vmcrypt agent`, the unlock daemon: from a declarative configuration of VMs, their
//! disks and where each disk's key comes from (the secret store, a key file on a
//! removable medium, a prompt), it opens and exports the disks of every VM whose keys
//! are present, starts the VM, and stops or locks it again when its key medium leaves.
//!
//! * [`config`]: the TOML file, checked.
//! * [`media`] and [`watch`]: which key media are present, and when to look again.
//! * [`keyfile`] and [`keys`]: reading a key from a source, safely, into zeroized memory.
//! * [`export`]: exports as `luks open` daemons, processes of their own that outlive the
//!   agent and are adopted by the next one.
//! * [`vm`]: starting and stopping VMs (libvirt through virsh, or commands).
//! * [`agent`]: the decisions; [`unlock`]: one VM's unlock in progress, run without
//!   the agent's lock; [`run`]: the daemon's loop; [`control`]: its socket.
//! * [`audit`]: the JSON-lines audit log; [`notify`]: systemd's READY=1.
#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod config;
pub mod control;
pub mod export;
pub mod keyfile;
pub mod keys;
pub mod media;
pub mod notify;
pub mod proc;
pub mod run;
pub mod time;
pub mod unlock;
pub mod vm;
pub mod watch;

pub use agent::{Agent, AgentStatus, VmState, VmStatus};
pub use config::Config;
pub use run::Daemon;
