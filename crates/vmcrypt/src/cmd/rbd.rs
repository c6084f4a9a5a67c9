//! `vmcrypt rbd ...`: the rbd CLI's image encryption commands, done by vmcrypt in
//! librbd's layout (`vmcrypt_block::jobs::rbd`).
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vmcrypt_block::drivers::luks::Version;
use vmcrypt_block::jobs::luks::slots::NewKeyslot;
use vmcrypt_block::jobs::rbd::{
    CloneRequest, EncryptionFormatRequest, clone, encryption_format, flatten, image_spec,
    read_passfile,
};
use vmcrypt_block::spec::{NodeSpec, RbdSpec};
use vmcrypt_error::{Result, bail};

#[derive(Subcommand, Debug)]
pub enum RbdCommand {
    /// Image encryption (rbd encryption ...)
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// Clone PARENT@SNAP (snapshot created and protected if needed) and give the clone
    /// its own passphrase and volume key (Ceph Reef's layered layout, on any Ceph)
    Clone(CloneArgs),
    /// Flatten a clone with its own key: data still in the parent is re-encrypted under
    /// the clone's key (give the clone and its parents' keys in --image-opts)
    Flatten(FlattenArgs),
}

/// The new key slot and cipher.
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// aes-128 or aes-256
    #[arg(long = "cipher-alg", default_value = "aes-256")]
    pub cipher_alg: String,
    /// vmcrypt extension: milliseconds of KDF per unlock (default 2000)
    #[arg(long = "iter-time", value_name = "MS")]
    pub iter_time: Option<u32>,
    /// vmcrypt extension: LUKS2 Argon2 memory in KiB
    #[arg(long = "pbkdf-memory", value_name = "KIB")]
    pub pbkdf_memory: Option<u32>,
}

impl KeyArgs {
    fn parse(&self, format: &str) -> Result<(Version, u32, NewKeyslot)> {
        let version = match format {
            "luks1" => Version::V1,
            "luks2" => Version::V2,
            other => bail!(
                Usage,
                "encryption format must be luks1 or luks2, not '{other}'"
            ),
        };
        let aes_bits = match self.cipher_alg.as_str() {
            "aes-128" => 128,
            "aes-256" => 256,
            other => bail!(
                Usage,
                "--cipher-alg must be aes-128 or aes-256, not '{other}'"
            ),
        };
        let slot = NewKeyslot {
            iter_time_ms: self.iter_time,
            memory_kib: self.pbkdf_memory,
            ..NewKeyslot::default()
        };
        Ok((version, aes_bits, slot))
    }
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub key: KeyArgs,
    /// POOL[/NAMESPACE]/IMAGE@SNAP
    pub parent: String,
    /// POOL[/NAMESPACE]/CLONE
    pub clone: String,
    /// luks1 or luks2
    pub format: String,
    /// File holding the clone's passphrase (one trailing newline is dropped)
    pub passphrase_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct FlattenArgs {
    /// Define a secret: secret,id=ID,file=PATH
    #[arg(long = "object", value_name = "OBJECTDEF")]
    pub objects: Vec<String>,
    /// driver=rbd,pool=,image=,encrypt.format=,encrypt.key-secret=,encrypt.parent.format=,...
    pub image_opts: String,
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
    #[command(flatten)]
    pub key: KeyArgs,
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
        RbdCommand::Clone(a) => clone_cmd(a),
        RbdCommand::Flatten(a) => flatten_cmd(a),
    }
}

fn clone_cmd(a: CloneArgs) -> Result<u8> {
    let (version, aes_bits, keyslot) = a.key.parse(&a.format)?;
    let (conf, id) = (a.cluster.conf.as_deref(), a.cluster.id.as_deref());
    let req = CloneRequest {
        parent: image_spec(&a.parent, conf, id)?,
        child: image_spec(&a.clone, conf, id)?,
        version,
        aes_bits,
        keyslot,
    };
    let pass = read_passfile(&a.passphrase_file)?;
    clone(&req, pass.as_bytes())?;
    Ok(0)
}

fn flatten_cmd(a: FlattenArgs) -> Result<u8> {
    let m = vmcrypt_block::opts::parse_keyval(&a.image_opts, None)?;
    let NodeSpec::Rbd(spec) = NodeSpec::from_options(&m)? else {
        bail!(
            Usage,
            "rbd flatten takes an rbd node: driver=rbd,pool=...,image=..."
        );
    };
    let spec: RbdSpec = spec;
    let env = vmcrypt_block::jobs::Env::new(a.objects, Default::default());
    flatten(&spec, &env)?;
    Ok(0)
}

fn format(a: FormatArgs) -> Result<u8> {
    let (version, aes_bits, keyslot) = a.key.parse(&a.format)?;
    let req = EncryptionFormatRequest {
        image: image_spec(&a.image, a.cluster.conf.as_deref(), a.cluster.id.as_deref())?,
        version,
        aes_bits,
        keyslot,
    };
    let pass = read_passfile(&a.passphrase_file)?;
    encryption_format(&req, pass.as_bytes())?;
    Ok(0)
}
