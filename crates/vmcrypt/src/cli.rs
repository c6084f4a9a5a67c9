//! Command-line syntax: flags parsed to plain data (validated later, in the commands).
//! Image commands follow qemu-img (each command's flags live in its own `cmd/*.rs`);
//! `vmcrypt luks ...` follows cryptsetup.
use crate::cmd;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vmcrypt",
    version,
    about = "Encrypted VM disks: LUKS images with a qemu-img-compatible command line"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an image (qemu-img create)
    Create(cmd::create::Args),
    /// Change the backing file of a qcow2 image (qemu-img rebase): copies what differs
    /// between the old and new backing files into the image first, unless -u
    Rebase(cmd::rebase::Args),
    /// Show image information (qemu-img info)
    Info(cmd::info::Args),
    /// Convert or copy an image (qemu-img convert)
    Convert(cmd::convert::Args),
    /// Copy an image under a new volume key (full clone), or make an encrypted overlay
    /// over it with a key of its own (--linked); --flatten drops a linked clone's backing
    Clone(cmd::clone::Args),
    /// Give a qcow2+LUKS image a new volume key in place, crash-safe (a LUKS1 image: by
    /// copy and rename)
    Rekey(cmd::rekey::Args),
    /// Check an image for consistency (qemu-img check)
    Check(cmd::check::Args),
    /// Change the virtual size of an image (qemu-img resize)
    Resize(cmd::resize::Args),
    /// Copy an image's data into its backing file (qemu-img commit)
    Commit(cmd::commit::Args),
    /// Show how an image's data is allocated and where it lies (qemu-img map)
    Map(cmd::map::Args),
    /// Check whether two images have the same contents (qemu-img compare)
    Compare(cmd::compare::Args),
    /// LUKS header and key-slot management (cryptsetup's luks* commands)
    Luks {
        #[command(subcommand)]
        command: cmd::luks::LuksCommand,
    },
    /// Ceph RBD image encryption in librbd's layout (rbd encryption ...)
    Rbd {
        #[command(subcommand)]
        command: cmd::rbd::RbdCommand,
    },
    /// libvirt's secrets (virsh secret-*), kept encrypted in vmcrypt's store
    Secret {
        #[command(subcommand)]
        command: cmd::secret::SecretCommand,
    },
    /// The unlock agent: opens and exports VM disks when their keys appear, starts the VMs
    Agent {
        #[command(subcommand)]
        command: cmd::agent::AgentCommand,
    },
    /// Serve images over NBD (like qemu-nbd)
    Serve(cmd::serve::Args),
    /// libvirt glue: print domain XML for an export of `vmcrypt serve`
    Libvirt {
        #[command(subcommand)]
        command: cmd::libvirt::LibvirtCommand,
    },
    /// Print the -object/-blockdev arguments with which QEMU opens an image natively
    QemuArgs(cmd::qemu_args::QemuArgsArgs),
    /// Measure cipher and PBKDF2 speed (like cryptsetup benchmark)
    Bench(cmd::bench::Args),
}
