//! Command implementations, one file per command: each defines its flags (a
//! `#[derive(clap::Args)]` struct named `Args`) and a `run` that turns them into a job
//! request, calls the job in `vmcrypt_block::jobs` (or the luks/glue code) and prints
//! the report. `common` holds what several commands share and imports no command.
pub mod agent;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod clone;
pub(crate) mod commit;
pub(crate) mod common;
pub(crate) mod compare;
pub(crate) mod convert;
pub(crate) mod create;
pub(crate) mod info;
pub mod libvirt;
pub mod luks;
pub(crate) mod map;
pub mod qemu_args;
pub mod rbd;
pub(crate) mod rebase;
pub(crate) mod rekey;
pub(crate) mod resize;
pub mod secret;
pub mod serve;

use crate::cli::{Cli, Command};
use vmcrypt_error::Result;

/// Run a parsed command; returns the exit status on success paths (check may return 2/3).
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Create(a) => create::run(a),
        Command::Rebase(a) => rebase::run(a),
        Command::Info(a) => info::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Check(a) => check::run(a),
        Command::Clone(a) => clone::run(a),
        Command::Rekey(a) => rekey::run(a),
        Command::Resize(a) => resize::run(a),
        Command::Commit(a) => commit::run(a),
        Command::Map(a) => map::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Luks { command } => luks::run(command),
        Command::Rbd { command } => rbd::run(command),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Libvirt { command } => libvirt::run(&command),
        Command::QemuArgs(args) => qemu_args::run(&args),
        Command::Secret { command } => secret::run(command),
        Command::Agent { command } => agent::run(command),
    }
}
