//! Command-line syntax: flags parsed to plain data (validated later, in the commands).
//! Image commands follow qemu-img (each command's flags live in its own `cmd/*.rs`);
//! `vmcrypt luks ...` follows cryptsetup.
use crate::cmd;
pub use crate::cmd::common::{Common, LimitOpts};
use clap::{Args, Parser, Subcommand};

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
        command: LuksCommand,
    },
    /// Serve images over NBD (like qemu-nbd)
    Serve(cmd::serve::Args),
    /// libvirt glue: print domain XML for an export of `vmcrypt serve`
    Libvirt {
        #[command(subcommand)]
        command: crate::cmd::libvirt::LibvirtCommand,
    },
    /// Print the -object/-blockdev arguments with which QEMU opens an image natively
    QemuArgs(crate::cmd::qemu_args::QemuArgsArgs),
    /// Measure cipher and PBKDF2 speed (like cryptsetup benchmark)
    Bench(cmd::bench::Args),
}

/// Where the passphrase and header come from, shared by the luks commands.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyOpts {
    /// Read the passphrase from FILE (exact bytes; - = all of stdin)
    #[arg(long = "key-file", short = 'd', value_name = "FILE")]
    pub key_file: Option<String>,
    /// Key slot to use
    #[arg(long = "key-slot", short = 'S', value_name = "N")]
    pub key_slot: Option<usize>,
    /// Detached LUKS header file
    #[arg(long = "header", value_name = "FILE")]
    pub header: Option<String>,
    /// Batch mode: no confirmation questions
    #[arg(long = "batch-mode", short = 'q')]
    pub batch: bool,
    #[command(flatten)]
    pub limits: LimitOpts,
}

/// How new key slots are made.
#[derive(Args, Debug, Clone, Default)]
pub struct NewKeyOpts {
    /// Read the new passphrase from FILE (exact bytes)
    #[arg(long = "new-key-file", value_name = "FILE")]
    pub new_key_file: Option<String>,
    /// PBKDF2 time per unlock in milliseconds
    #[arg(long = "iter-time", short = 'i', value_name = "MS")]
    pub iter_time: Option<u32>,
    /// Fixed PBKDF2 iteration count (or Argon2 time cost)
    #[arg(long = "pbkdf-force-iterations", value_name = "N")]
    pub iterations: Option<u32>,
    /// LUKS2 key slot KDF: argon2id (default), argon2i or pbkdf2
    #[arg(long = "pbkdf", value_name = "KDF")]
    pub pbkdf: Option<String>,
    /// Argon2 memory cost in KiB
    #[arg(long = "pbkdf-memory", value_name = "KIB")]
    pub pbkdf_memory: Option<u32>,
    /// Argon2 threads
    #[arg(long = "pbkdf-parallel", value_name = "N")]
    pub pbkdf_parallel: Option<u32>,
    /// PBKDF2 / AF hash for the new slot (default sha256)
    #[arg(long = "hash", value_name = "HASH")]
    pub hash: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LuksCommand {
    /// Print the header (luksDump)
    Dump {
        device: String,
        #[command(flatten)]
        key: KeyOpts,
        /// Print the volume key too (asks for a passphrase)
        #[arg(long = "dump-volume-key", alias = "dump-master-key")]
        dump_volume_key: bool,
        /// JSON instead of cryptsetup's text
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase (luksAddKey)
    AddKey {
        device: String,
        /// File with the new passphrase
        new_key_file_pos: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
        #[command(flatten)]
        new: NewKeyOpts,
        /// Use the volume key from FILE instead of an existing passphrase
        #[arg(
            long = "volume-key-file",
            alias = "master-key-file",
            value_name = "FILE"
        )]
        volume_key_file: Option<String>,
    },
    /// Remove the key slot a passphrase opens (luksRemoveKey)
    RemoveKey {
        device: String,
        key_file_pos: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Wipe a key slot (luksKillSlot)
    KillSlot {
        device: String,
        slot: usize,
        key_file_pos: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Change a passphrase (luksChangeKey)
    ChangeKey {
        device: String,
        new_key_file_pos: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
        #[command(flatten)]
        new: NewKeyOpts,
    },
    /// Save the header and key slots to a file (luksHeaderBackup)
    HeaderBackup {
        device: String,
        #[arg(long = "header-backup-file", value_name = "FILE")]
        file: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Restore the header and key slots from a backup (luksHeaderRestore)
    HeaderRestore {
        device: String,
        #[arg(long = "header-backup-file", value_name = "FILE")]
        file: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Print or set the UUID (luksUUID)
    Uuid {
        device: String,
        /// Set this UUID
        #[arg(long = "uuid")]
        uuid: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Exit 0 if the device has a LUKS header (isLuks)
    IsLuks {
        device: String,
        #[arg(short = 'v', long)]
        verbose: bool,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Check a passphrase without changing anything (open --test-passphrase)
    TestKey {
        device: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// LUKS2 tokens: import, export or remove (cryptsetup token)
    Token {
        /// import, export or remove
        action: String,
        device: String,
        /// Token id (import: default the lowest free one)
        #[arg(long = "token-id", value_name = "N")]
        token_id: Option<u32>,
        /// JSON file to import (default: stdin) or to export to (default: stdout)
        #[arg(long = "json-file", value_name = "FILE")]
        json_file: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Convert a header in place between LUKS1 and LUKS2 (cryptsetup convert)
    Convert {
        device: String,
        /// Target type: luks1 or luks2
        #[arg(long = "type", value_name = "TYPE")]
        to: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Rewrite a damaged or outdated LUKS2 header copy from the valid one (cryptsetup repair)
    Repair {
        device: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Set LUKS2 keyslot priority, label or subsystem (cryptsetup config)
    Config {
        device: String,
        /// Keyslot priority: ignore, normal or prefer (needs --key-slot)
        #[arg(long)]
        priority: Option<String>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        subsystem: Option<String>,
        #[command(flatten)]
        key: KeyOpts,
    },
}
