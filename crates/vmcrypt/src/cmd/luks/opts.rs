//! Options shared by the `vmcrypt luks` commands (where the passphrase and header come
//! from, how a new key slot is made) and their translation into the job layer's
//! [`Target`], [`NewKeyslot`] and [`KeySource`].
use crate::cmd::common::LimitOpts;
use crate::passphrase::{existing, prompt_new, read_key_file};
use clap::Args;
use vmcrypt_block::jobs::luks::slots::NewKeyslot;
use vmcrypt_block::jobs::luks::{KeySource, Target};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Result, bail, ensure};

/// Where the passphrase and header come from, shared by the luks commands.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyOpts {
    /// Read the passphrase from FILE (exact bytes; - = all of stdin)
    #[arg(long = "key-file", short = 'd', value_name = "FILE")]
    pub key_file: Option<String>,
    /// Key slot to use
    #[arg(long = "key-slot", short = 'S', value_name = "N")]
    pub key_slot: Option<u32>,
    /// Detached LUKS header file
    #[arg(long = "header", value_name = "FILE")]
    pub header: Option<String>,
    /// Batch mode: no confirmation questions
    #[arg(long = "batch-mode", short = 'q')]
    pub batch: bool,
    #[command(flatten)]
    pub limits: LimitOpts,
}

impl KeyOpts {
    /// The job target for `device`.
    pub fn target(&self, device: &str) -> Target {
        Target {
            device: device.to_string(),
            header: self.header.clone(),
            limits: self.limits.limits(),
        }
    }

    /// Secrets for `device`: the existing passphrase from `key_file` (a positional key
    /// file, else `--key-file`) or a prompt.
    pub fn keys<'a>(&'a self, device: &'a str, key_file: Option<&'a str>) -> CliKeys<'a> {
        CliKeys {
            device,
            key_file: key_file.or(self.key_file.as_deref()),
            stdin_key: self.key_file.as_deref() == Some("-"),
            new_files: (None, None),
            volume_key_file: None,
        }
    }
}

/// A command that takes only the device and the key options.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    pub device: String,
    #[command(flatten)]
    pub key: KeyOpts,
}

/// How new key slots are made.
#[derive(Args, Debug, Clone, Default)]
pub struct NewKeyOpts {
    /// Read the new passphrase from FILE (exact bytes)
    #[arg(long = "new-key-file", value_name = "FILE")]
    pub new_key_file: Option<String>,
    #[command(flatten)]
    pub kdf: KdfOpts,
    /// PBKDF2 / AF hash for the new slot (default sha256)
    #[arg(long = "hash", value_name = "HASH")]
    pub hash: Option<String>,
}

impl NewKeyOpts {
    /// The new key slot's KDF choice.
    pub fn keyslot(&self) -> NewKeyslot {
        self.kdf.keyslot(self.hash.clone())
    }
}

/// cryptsetup's key-derivation options for a new key slot (`--pbkdf*`, `--iter-time`).
#[derive(Args, Debug, Clone, Default)]
pub struct KdfOpts {
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
}

impl KdfOpts {
    /// The new key slot's KDF choice with the PBKDF2 / AF hash `hash`.
    pub fn keyslot(&self, hash: Option<String>) -> NewKeyslot {
        NewKeyslot {
            kdf: self.pbkdf.clone(),
            hash,
            iter_time_ms: self.iter_time,
            iterations: self.iterations,
            memory_kib: self.pbkdf_memory,
            parallel: self.pbkdf_parallel,
            in_place: false,
        }
    }
}

/// The command line's [`KeySource`]: key files, or prompts on the terminal.
pub struct CliKeys<'a> {
    device: &'a str,
    key_file: Option<&'a str>,
    /// The existing key is read from stdin (`--key-file -`).
    stdin_key: bool,
    /// The new passphrase's file as an argument and as `--new-key-file` (neither:
    /// prompt).
    new_files: (Option<&'a str>, Option<&'a str>),
    volume_key_file: Option<&'a str>,
}

impl<'a> CliKeys<'a> {
    /// Take the new passphrase from the positional file or `--new-key-file` (giving
    /// both is refused when it is asked for), else from a prompt.
    pub fn with_new(mut self, pos: Option<&'a str>, new: &'a NewKeyOpts) -> Self {
        self.new_files = (pos, new.new_key_file.as_deref());
        self
    }

    /// Use the volume key in `file` instead of an existing passphrase.
    pub fn with_volume_key(mut self, file: Option<&'a str>) -> Self {
        self.volume_key_file = file;
        self
    }
}

impl KeySource for CliKeys<'_> {
    fn existing(&mut self) -> Result<SecretBytes> {
        existing(self.key_file, self.device)
    }

    fn new_passphrase(&mut self) -> Result<SecretBytes> {
        let file = match self.new_files {
            (Some(_), Some(_)) => bail!(
                Usage,
                "give the new key file either as an argument or with --new-key-file"
            ),
            (p, n) => p.or(n),
        };
        if file == Some("-") && self.stdin_key {
            bail!(
                Usage,
                "only one of the existing and the new key can come from stdin"
            );
        }
        match file {
            Some(f) => read_key_file(f),
            None => {
                ensure!(
                    !self.stdin_key,
                    Usage,
                    "the existing key is read from stdin, so the new key needs --new-key-file"
                );
                prompt_new("key slot")
            }
        }
    }

    fn volume_key(&mut self) -> Result<Option<SecretBytes>> {
        self.volume_key_file.map(read_key_file).transpose()
    }
}
