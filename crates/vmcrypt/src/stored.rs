//! The bridge from `--object secret,...,store-uuid=UUID` (or `store-usage=TYPE:ID`) to
//! vmcrypt's secret store: which store and master key (the `secret` commands' defaults,
//! from `$VMCRYPT_SECRET_STORE`, `$VMCRYPT_MASTER_KEY_FILE`,
//! `$VMCRYPT_MASTER_KEY_PASSPHRASE_FILE`, `$CREDENTIALS_DIRECTORY`), and the loader that
//! `vmcrypt-block` calls.
use std::path::PathBuf;
use vmcrypt_block::secrets::{StoredRef, StoredSecrets};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::Result;
use vmcrypt_secrets::{MasterKeyConfig, Store, Usage, Uuid};

/// The store in `dir` (or the default), with the master key from the files given or the
/// environment's.
pub fn store(dir: Option<PathBuf>, key_file: Option<PathBuf>, pass_file: Option<PathBuf>) -> Store {
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let (key_file, pass_file) = if key_file.is_some() || pass_file.is_some() {
        (key_file, pass_file)
    } else {
        (
            env("VMCRYPT_MASTER_KEY_FILE"),
            env("VMCRYPT_MASTER_KEY_PASSPHRASE_FILE"),
        )
    };
    Store::new(dir, MasterKeyConfig::from_env(key_file, pass_file))
}

/// Loads `--object` store references from the default store.
pub struct CliStoredSecrets;

impl StoredSecrets for CliStoredSecrets {
    fn load(&self, r: &StoredRef) -> Result<SecretBytes> {
        let s = store(None, None, None);
        match r {
            StoredRef::Uuid(u) => s.value_for_use(&u.parse::<Uuid>()?),
            StoredRef::Usage(u) => s.value_for_usage(&Usage::parse_ref(u)?),
        }
    }
}
