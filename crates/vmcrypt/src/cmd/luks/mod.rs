//! `vmcrypt luks ...`: cryptsetup's header and key-slot commands, for LUKS1 and LUKS2.
//! One file per command, each with its own `Args` and `run`: parse, call one job in
//! `vmcrypt_block::jobs::luks`, print. Shared options live in [`opts`].
mod add_key;
mod change_key;
mod close;
mod config;
mod convert;
mod daemon;
mod dump;
mod format;
mod header_file;
mod is_luks;
mod kill_slot;
mod open;
pub mod opts;
mod reencrypt;
mod remove_key;
mod repair;
mod status;
mod test_key;
mod token;
mod uuid;

use clap::Subcommand;
use vmcrypt_error::Result;

#[derive(Subcommand, Debug)]
pub enum LuksCommand {
    /// Write a new LUKS header onto an existing file or block device, keeping its size
    /// (luksFormat)
    Format(format::Args),
    /// Unlock a device and serve it decrypted over NBD as RUN_DIR/NAME.sock (open)
    Open(open::Args),
    /// Stop serving an opened device (close)
    Close(close::Args),
    /// Show an opened device (status): exit 0 active, 4 inactive
    Status(status::NameArgs),
    #[command(hide = true)]
    OpenDaemon(daemon::Args),
    /// Print the header (luksDump)
    Dump(dump::Args),
    /// Add a passphrase (luksAddKey)
    AddKey(add_key::Args),
    /// Remove the key slot a passphrase opens (luksRemoveKey)
    RemoveKey(remove_key::Args),
    /// Wipe a key slot (luksKillSlot)
    KillSlot(kill_slot::Args),
    /// Change a passphrase (luksChangeKey)
    ChangeKey(change_key::Args),
    /// Save the header and key slots to a file (luksHeaderBackup)
    HeaderBackup(header_file::Args),
    /// Restore the header and key slots from a backup (luksHeaderRestore)
    HeaderRestore(header_file::Args),
    /// Print or set the UUID (luksUUID)
    Uuid(uuid::Args),
    /// Exit 0 if the device has a LUKS header (isLuks)
    IsLuks(is_luks::Args),
    /// Check a passphrase without changing anything (open --test-passphrase)
    TestKey(opts::DeviceArgs),
    /// LUKS2 tokens: import, export or remove (cryptsetup token)
    Token(token::Args),
    /// Convert a header in place between LUKS1 and LUKS2 (cryptsetup convert)
    Convert(convert::Args),
    /// Rewrite a damaged or outdated LUKS2 header copy from the valid one (cryptsetup repair)
    Repair(opts::DeviceArgs),
    /// Set LUKS2 keyslot priority, label or subsystem (cryptsetup config)
    Config(config::Args),
    /// Reencrypt a LUKS device under a new volume key, offline, resumable by either
    /// vmcrypt or cryptsetup (cryptsetup reencrypt; LUKS1 goes through LUKS2 and back)
    Reencrypt(reencrypt::Args),
}

/// Run one `vmcrypt luks` command; returns its exit status.
pub fn run(cmd: LuksCommand) -> Result<u8> {
    match cmd {
        LuksCommand::Format(a) => format::run(&a),
        LuksCommand::Open(a) => open::run(&a),
        LuksCommand::Close(a) => close::run(&a),
        LuksCommand::Status(a) => status::run(&a),
        LuksCommand::OpenDaemon(a) => daemon::run(&a),
        LuksCommand::Dump(a) => dump::run(&a),
        LuksCommand::AddKey(a) => add_key::run(&a),
        LuksCommand::RemoveKey(a) => remove_key::run(&a),
        LuksCommand::KillSlot(a) => kill_slot::run(&a),
        LuksCommand::ChangeKey(a) => change_key::run(&a),
        LuksCommand::HeaderBackup(a) => header_file::run_backup(&a),
        LuksCommand::HeaderRestore(a) => header_file::run_restore(&a),
        LuksCommand::Uuid(a) => uuid::run(&a),
        LuksCommand::IsLuks(a) => is_luks::run(&a),
        LuksCommand::TestKey(a) => test_key::run(&a),
        LuksCommand::Token(a) => token::run(&a),
        LuksCommand::Convert(a) => convert::run(&a),
        LuksCommand::Repair(a) => repair::run(&a),
        LuksCommand::Config(a) => config::run(&a),
        LuksCommand::Reencrypt(a) => reencrypt::run(&a),
    }
}

/// Say which tokens a kill removed with the slot.
fn report_tokens(dropped: &[u32]) {
    for t in dropped {
        eprintln!("Token {t} was bound only to this key slot and was removed with it.");
    }
}
