//! `vmcrypt rbd ...`: the rbd CLI's image encryption commands, done by vmcrypt in
//! librbd's layout (`vmcrypt_block::jobs::rbd`).
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vmcrypt_block::drivers::luks::Version;
use vmcrypt_block::jobs::luks::slots::NewKeyslot;
use vmcrypt_block::jobs::rbd::{
    EncryptionFormatRequest, encryption_format, image_spec, read_passfile,
};
use vmcrypt_error::{Result, bail};

#[derive(Subcommand, Debug)]
pub enum RbdCommand {
    /// Image encryption (rbd encryption ...)
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum EncryptionCommand {
    /// Format an image's encryption as `rbd encryption format` does (its data is lost)
    Format(FormatArgs),
}

/// Where the cluster is.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterOpts {
    /// ceph.conf (default: $CEPH_CONF, /etc/ceph/ceph.conf)
    #[arg(short = 'c', long = "conf", value_name = "PATH")]
    pub conf: Option<String>,
    /// cephx user without "client." (default admin)
    #[arg(long = "id", value_name = "USER")]
    pub id: Option<String>,
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    #[command(flatten)]
    pub cluster: ClusterOpts,
    /// aes-128 or aes-256
    #[arg(long = "cipher-alg", default_value = "aes-256")]
    pub cipher_alg: String,
    /// vmcrypt extension: milliseconds of KDF per unlock (default 2000)
    #[arg(long = "iter-time", value_name = "MS")]
    pub iter_time: Option<u32>,
    /// vmcrypt extension: LUKS2 Argon2 memory in KiB
    #[arg(long = "pbkdf-memory", value_name = "KIB")]
    pub pbkdf_memory: Option<u32>,
    /// POOL[/NAMESPACE]/IMAGE
    pub image: String,
    /// luks1 or luks2
    pub format: String,
    /// File holding the passphrase (one trailing newline is dropped, as rbd does)
    pub passphrase_file: PathBuf,
}

pub fn run(c: RbdCommand) -> Result<u8> {
    match c {
        RbdCommand::Encryption {
            command: EncryptionCommand::Format(a),
        } => format(a),
    }
}

fn format(a: FormatArgs) -> Result<u8> {
    let version = match a.format.as_str() {
        "luks1" => Version::V1,
        "luks2" => Version::V2,
        other => bail!(
            Usage,
            "encryption format must be luks1 or luks2, not '{other}'"
        ),
    };
    let aes_bits = match a.cipher_alg.as_str() {
        "aes-128" => 128,
        "aes-256" => 256,
        other => bail!(
            Usage,
            "--cipher-alg must be aes-128 or aes-256, not '{other}'"
        ),
    };
    let req = EncryptionFormatRequest {
        image: image_spec(&a.image, a.cluster.conf.as_deref(), a.cluster.id.as_deref())?,
        version,
        aes_bits,
        keyslot: NewKeyslot {
            iter_time_ms: a.iter_time,
            memory_kib: a.pbkdf_memory,
            ..NewKeyslot::default()
        },
    };
    let pass = read_passfile(&a.passphrase_file)?;
    encryption_format(&req, pass.as_bytes())?;
    Ok(0)
}
