//! The store directory: per secret `UUID.xml` (its definition as `dumpxml` prints it) and
//! `UUID.value` (the sealed value), files 0600 in a 0700 directory. Writers hold the
//! store's lock; every file is replaced atomically (see [`crate::files`]).
//!
//! Ephemeral secrets are refused at `define`: a store on disk cannot keep a secret
//! "only in memory", and vmcrypt has no daemon that would.
use crate::files;
use crate::master::MasterKeyConfig;
use crate::seal;
use crate::uuid::Uuid;
use crate::xml::{SecretDef, Usage};
use std::path::{Path, PathBuf};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// The store directory when none is given.
pub const DEFAULT_STORE: &str = "/var/lib/vmcrypt/secrets";
/// The environment variable that overrides [`DEFAULT_STORE`].
pub const STORE_ENV: &str = "VMCRYPT_SECRET_STORE";

/// A secret store directory and how its master key is found.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    master: MasterKeyConfig,
}

/// Whether `define` created a secret or replaced an existing definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defined {
    Created,
    Updated,
}

/// One row of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub def: SecretDef,
    pub has_value: bool,
}

impl Store {
    /// The store at `dir` (or `$VMCRYPT_SECRET_STORE`, or [`DEFAULT_STORE`]).
    pub fn new(dir: Option<PathBuf>, master: MasterKeyConfig) -> Store {
        let dir = dir
            .or_else(|| std::env::var_os(STORE_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
        Store { dir, master }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn xml_name(uuid: &Uuid) -> String {
        format!("{uuid}.xml")
    }

    fn value_name(uuid: &Uuid) -> String {
        format!("{uuid}.value")
    }

    /// Define (or redefine) a secret, as `virsh secret-define`: the same usage may not
    /// belong to two secrets, and a private secret stays private.
    pub fn define(&self, def: &SecretDef) -> Result<Defined> {
        ensure!(
            !def.ephemeral,
            Unsupported,
            "secret {}: ephemeral secrets are kept only in memory, and vmcrypt secret has no \
             running daemon to keep them; define it with ephemeral='no'",
            def.uuid
        );
        files::ensure_dir(&self.dir)?;
        let _lock = files::lock(&self.dir)?;
        let existing = self.load_def(&def.uuid)?;
        if let Some(old) = &existing {
            ensure!(
                !old.private || def.private,
                Usage,
                "secret {}: cannot change private flag on existing secret",
                def.uuid
            );
        }
        if let Some(usage) = &def.usage
            && let Some(other) = self.find_usage(usage)?
            && other.uuid != def.uuid
        {
            bail!(
                Usage,
                "a secret with UUID {} already defined for use with {}",
                other.uuid,
                usage.id()
            );
        }
        files::write_atomic(
            &self.dir,
            &Self::xml_name(&def.uuid),
            def.to_xml().as_bytes(),
        )?;
        Ok(if existing.is_some() {
            Defined::Updated
        } else {
            Defined::Created
        })
    }

    /// Seal and store `value` as secret `uuid`'s value.
    pub fn set_value(&self, uuid: &Uuid, value: &[u8]) -> Result<()> {
        files::ensure_dir(&self.dir)?;
        let _lock = files::lock(&self.dir)?;
        self.require(uuid)?;
        let key = self.master.load(&self.dir, true)?;
        let sealed = seal::seal(&key, uuid, value)?;
        files::write_atomic(&self.dir, &Self::value_name(uuid), &sealed)
    }

    /// The value, as `virsh secret-get-value` gives it: refused for private secrets.
    pub fn get_value(&self, uuid: &Uuid) -> Result<SecretBytes> {
        let def = self.require(uuid)?;
        ensure!(
            !def.private,
            Usage,
            "secret {uuid}: operation forbidden: secret is private"
        );
        self.value_of(&def)
    }

    /// The value for opening an image (the store's own use, so private secrets too,
    /// as libvirt hands private secrets to QEMU).
    pub fn value_for_use(&self, uuid: &Uuid) -> Result<SecretBytes> {
        let def = self.require(uuid)?;
        self.value_of(&def)
    }

    /// The value of the secret defined for `usage`, for opening an image.
    pub fn value_for_usage(&self, usage: &Usage) -> Result<SecretBytes> {
        let def = self.find_usage(usage)?.ok_or_else(|| {
            Error::not_found(format!(
                "no secret in '{}' with usage {}",
                self.dir.display(),
                usage.display()
            ))
        })?;
        self.value_of(&def)
    }

    fn value_of(&self, def: &SecretDef) -> Result<SecretBytes> {
        let path = self.dir.join(Self::value_name(&def.uuid));
        let sealed = files::read_opt(&path)?.ok_or_else(|| {
            Error::not_found(format!("secret {}: secret does not have a value", def.uuid))
        })?;
        let key = self.master.load(&self.dir, false)?;
        seal::open(&key, &def.uuid, &sealed)
    }

    /// The definition of `uuid`.
    pub fn definition(&self, uuid: &Uuid) -> Result<SecretDef> {
        self.require(uuid)
    }

    /// The definition of `uuid`, as libvirt's XML.
    pub fn dumpxml(&self, uuid: &Uuid) -> Result<String> {
        Ok(self.require(uuid)?.to_xml())
    }

    /// Remove a secret (its definition and value).
    pub fn undefine(&self, uuid: &Uuid) -> Result<()> {
        ensure!(
            self.dir.is_dir(),
            NotFound,
            "secret not found: no secret with matching uuid '{uuid}'"
        );
        let _lock = files::lock(&self.dir)?;
        self.require(uuid)?;
        files::remove(&self.dir, &Self::value_name(uuid))?;
        files::remove(&self.dir, &Self::xml_name(uuid))
    }

    /// Every defined secret, by UUID.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for uuid in self.uuids()? {
            if let Some(def) = self.load_def(&uuid)? {
                let has_value = self.dir.join(Self::value_name(&uuid)).exists();
                out.push(Listed { def, has_value });
            }
        }
        Ok(out)
    }

    /// UUIDs with a definition file, sorted; temp files and other names are ignored.
    fn uuids(&self) -> Result<Vec<Uuid>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::io(
                    e,
                    format!("cannot list '{}'", self.dir.display()),
                ));
            }
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent =
                ent.map_err(|e| Error::io(e, format!("cannot list '{}'", self.dir.display())))?;
            let name = ent.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".xml")) else {
                continue;
            };
            if stem.len() == 36
                && let Ok(u) = stem.parse::<Uuid>()
            {
                out.push(u);
            }
        }
        out.sort();
        Ok(out)
    }

    fn find_usage(&self, usage: &Usage) -> Result<Option<SecretDef>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|l| l.def)
            .find(|d| d.usage.as_ref() == Some(usage)))
    }

    fn require(&self, uuid: &Uuid) -> Result<SecretDef> {
        self.load_def(uuid)?.ok_or_else(|| {
            Error::not_found(format!(
                "secret not found: no secret with matching uuid '{uuid}'"
            ))
        })
    }

    fn load_def(&self, uuid: &Uuid) -> Result<Option<SecretDef>> {
        let path = self.dir.join(Self::xml_name(uuid));
        let Some(bytes) = files::read_opt(&path)? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::corrupt(format!("'{}' is not UTF-8", path.display())))?;
        let def = SecretDef::parse(&text).with_ctx(|| format!("'{}'", path.display()))?;
        ensure!(
            def.uuid == *uuid,
            Corrupt,
            "'{}' defines secret {}, not {uuid}",
            path.display(),
            def.uuid
        );
        Ok(Some(def))
    }
}
