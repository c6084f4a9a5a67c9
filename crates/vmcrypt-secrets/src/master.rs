//! Where the master key comes from, in this order: a systemd credential
//! (`$CREDENTIALS_DIRECTORY/vmcrypt-master-key`, so `systemd-creds` and TPM2 sealing work
//! unchanged), a key file, a passphrase file (Argon2id with a salt kept in the store), or,
//! with none of them, `master.key` in the store, generated on first use (32 random
//! bytes, 0600), as libvirt does for its own secrets.
//!
//! Key files and credentials hold at least 32 bytes; the key is SHA-256 over a domain
//! label and the file's bytes, so any such file (binary or text) gives a full key.
use crate::files;
use crate::seal::MasterKey;
use std::path::{Path, PathBuf};
use vmcrypt_crypto::HashAlg;
use vmcrypt_crypto::argon::{Argon2Cost, Argon2Type, argon2};
use vmcrypt_error::{Result, ResultExt, bail, ensure};
use zeroize::Zeroizing;

/// The credential's name under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "vmcrypt-master-key";
/// The generated key's file name in the store.
pub const GENERATED_NAME: &str = "master.key";
/// The passphrase salt's file name in the store.
pub const SALT_NAME: &str = "master.salt";
const MIN_KEY_FILE: usize = 32;
const DOMAIN: &[u8] = b"vmcrypt-secrets master key v1\0";
/// Argon2id cost for a passphrase: 3 passes over 64 MiB on 4 lanes (a fraction of a
/// second per command; the passphrase file is meant for a strong passphrase).
const PASSPHRASE_COST: Argon2Cost = Argon2Cost {
    time: 3,
    memory_kib: 64 * 1024,
    lanes: 4,
};

/// How the user configured the master key (the credential is looked up regardless).
#[derive(Clone, Debug, Default)]
pub struct MasterKeyConfig {
    /// `--master-key-file`.
    pub key_file: Option<PathBuf>,
    /// `--master-key-passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY`, read from the environment by [`MasterKeyConfig::from_env`].
    pub credentials_dir: Option<PathBuf>,
}

impl MasterKeyConfig {
    /// The configuration with `$CREDENTIALS_DIRECTORY` taken from the environment.
    pub fn from_env(key_file: Option<PathBuf>, passphrase_file: Option<PathBuf>) -> Self {
        MasterKeyConfig {
            key_file,
            passphrase_file,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }

    /// Load (or, with nothing configured, create) the master key for the store `dir`.
    /// Only a writer may create; a reader without a key gets a `NotFound` error.
    pub(crate) fn load(&self, dir: &Path, may_create: bool) -> Result<MasterKey> {
        ensure!(
            self.key_file.is_none() || self.passphrase_file.is_none(),
            Usage,
            "--master-key-file and --master-key-passphrase-file are mutually exclusive"
        );
        if let Some(cred) = self
            .credentials_dir
            .as_ref()
            .map(|d| d.join(CREDENTIAL_NAME))
            && cred.exists()
        {
            return from_key_file(&cred);
        }
        if let Some(f) = &self.key_file {
            return from_key_file(f);
        }
        if let Some(f) = &self.passphrase_file {
            return from_passphrase(f, dir, may_create);
        }
        generated(dir, may_create)
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        vmcrypt_error::Error::io(e, format!("cannot read {what} '{}'", path.display()))
    })
}

fn derive(material: &[u8]) -> MasterKey {
    let d = Zeroizing::new(HashAlg::Sha256.digest_parts(&[DOMAIN, material]));
    let mut k = [0u8; 32];
    k.copy_from_slice(&d);
    let key = MasterKey::from_bytes(k);
    zeroize::Zeroize::zeroize(&mut k);
    key
}

fn from_key_file(path: &Path) -> Result<MasterKey> {
    let bytes = read_secret_file(path, "master key file")?;
    ensure!(
        bytes.len() >= MIN_KEY_FILE,
        Usage,
        "master key file '{}' holds {} bytes; it needs at least {MIN_KEY_FILE} (e.g. \
         head -c 32 /dev/urandom)",
        path.display(),
        bytes.len()
    );
    Ok(derive(&bytes))
}

fn from_passphrase(path: &Path, dir: &Path, may_create: bool) -> Result<MasterKey> {
    let pass = read_secret_file(path, "master key passphrase file")?;
    let pass = strip_newline(&pass);
    ensure!(
        !pass.is_empty(),
        Usage,
        "master key passphrase file '{}' is empty",
        path.display()
    );
    let salt = match files::read_opt(&dir.join(SALT_NAME))? {
        Some(s) => s,
        None if may_create => {
            let mut s = vec![0u8; 16];
            vmcrypt_crypto::random::fill(&mut s)?;
            files::write_atomic(dir, SALT_NAME, &s)?;
            s
        }
        None => bail!(
            NotFound,
            "secret store '{}' has no {SALT_NAME} (no value was ever stored)",
            dir.display()
        ),
    };
    let mut out = Zeroizing::new([0u8; 32]);
    argon2(
        Argon2Type::Argon2id,
        pass,
        &salt,
        PASSPHRASE_COST,
        out.as_mut(),
    )
    .ctx("deriving the master key from the passphrase")?;
    Ok(derive(out.as_ref()))
}

/// A passphrase file's content without one trailing newline (what `echo` adds).
fn strip_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

fn generated(dir: &Path, may_create: bool) -> Result<MasterKey> {
    let path = dir.join(GENERATED_NAME);
    if let Some(bytes) = files::read_opt(&path)? {
        let bytes = Zeroizing::new(bytes);
        ensure!(
            bytes.len() == 32,
            Corrupt,
            "generated master key '{}' holds {} bytes, not 32",
            path.display(),
            bytes.len()
        );
        return Ok(derive(&bytes));
    }
    ensure!(
        may_create,
        NotFound,
        "secret store '{}' has no master key (no value was ever stored; configure \
         --master-key-file, a passphrase or the {CREDENTIAL_NAME} credential)",
        dir.display()
    );
    let mut k = Zeroizing::new([0u8; 32]);
    vmcrypt_crypto::random::fill(k.as_mut())?;
    files::write_atomic(dir, GENERATED_NAME, k.as_ref())?;
    Ok(derive(k.as_ref()))
}
