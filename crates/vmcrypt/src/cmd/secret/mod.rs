//! `vmcrypt secret ...`: libvirt's secret commands (virsh secret-*) over vmcrypt's
//! encrypted store (`vmcrypt_secrets::Store`). One file per command: parse, call the
//! store, print. The store's options are shared through [`StoreOpts`].
mod define;
mod list;
mod push;
mod value;
mod xml;

use clap::{Args, Subcommand};
use std::path::PathBuf;
use vmcrypt_error::Result;
use vmcrypt_secrets::{Store, Uuid};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Define or redefine a secret from libvirt secret XML (secret-define)
    Define(define::Args),
    /// Set a secret's value from a file or stdin, base64 unless --plain (secret-set-value)
    SetValue(value::SetArgs),
    /// Print a secret's value in base64, raw with --plain (secret-get-value)
    GetValue(value::GetArgs),
    /// List secrets: UUID and usage (secret-list)
    List(list::Args),
    /// Print a secret's XML (secret-dumpxml)
    Dumpxml(xml::Args),
    /// Remove a secret and its value (secret-undefine)
    Undefine(xml::Args),
    /// Define a stored secret and its value in a running libvirt
    Push(push::Args),
}

/// Where the store is and how its master key is found.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreOpts {
    /// Store directory (default $VMCRYPT_SECRET_STORE, else /var/lib/vmcrypt/secrets)
    #[arg(long = "store", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Master key file, at least 32 bytes (default $VMCRYPT_MASTER_KEY_FILE)
    #[arg(long = "master-key-file", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Derive the master key from the passphrase in FILE with Argon2id
    /// (default $VMCRYPT_MASTER_KEY_PASSPHRASE_FILE)
    #[arg(long = "master-key-passphrase-file", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl StoreOpts {
    /// The store these options name.
    pub fn store(&self) -> Store {
        crate::stored::store(
            self.store.clone(),
            self.master_key_file.clone(),
            self.passphrase_file.clone(),
        )
    }
}

/// A secret's UUID argument.
fn parse_uuid(s: &str) -> Result<Uuid> {
    s.parse()
}

pub fn run(cmd: SecretCommand) -> Result<u8> {
    match cmd {
        SecretCommand::Define(a) => define::run(&a),
        SecretCommand::SetValue(a) => value::set(&a),
        SecretCommand::GetValue(a) => value::get(&a),
        SecretCommand::List(a) => list::run(&a),
        SecretCommand::Dumpxml(a) => xml::dumpxml(&a),
        SecretCommand::Undefine(a) => xml::undefine(&a),
        SecretCommand::Push(a) => push::run(&a),
    }?;
    Ok(0)
}
