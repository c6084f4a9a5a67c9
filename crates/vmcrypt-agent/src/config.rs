//! The agent's declarative configuration (TOML): where it keeps its sockets and audit
//! log, which directories it watches for key media, and the VMs it unlocks, each with
//! its disks, the ordered key sources of every disk, how the VM is started and stopped,
//! and what happens when its key medium is removed. Parsing checks everything the agent
//! will rely on (names usable as file names, one way to start each VM, known sources),
//! so a bad file is refused at start or `reload` with the field named, and a running
//! agent keeps its old configuration.
use crate::media::MediumId;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// Default directory of the export sockets and state files.
pub const DEFAULT_RUN_DIR: &str = "/run/vmcrypt/agent";
/// Default control socket.
pub const DEFAULT_CONTROL: &str = "/run/vmcrypt/agent.sock";
/// Default audit log.
pub const DEFAULT_AUDIT: &str = "/var/log/vmcrypt/agent.jsonl";
/// Default cap on a key file's size (cryptsetup's default key file limit is 8 MiB; a
/// passphrase or a raw key never needs more than this).
pub const DEFAULT_MAX_KEY_SIZE: u64 = 64 * 1024;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the exports (`NAME.sock`, `NAME.state`, `NAME.log`).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    #[serde(default = "default_control")]
    pub control_socket: PathBuf,
    #[serde(default = "default_audit")]
    pub audit_log: PathBuf,
    /// Seconds between rescans of the media when no event arrives.
    #[serde(default = "default_rescan")]
    pub rescan_interval: u64,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub prompt: PromptConfig,
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmConfig>,
}

/// Where key media appear and how their key files are checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Directories whose subdirectories are media, named by filesystem label or UUID
    /// (e.g. `/run/media/root`, `/media`).
    #[serde(default)]
    pub watch: Vec<PathBuf>,
    /// Count a subdirectory of a watched directory only when a filesystem is mounted on
    /// it (udisks creates the directory before it mounts).
    #[serde(default)]
    pub require_mount: bool,
    /// Also find media among the mounted filesystems through `/dev/disk/by-label` and
    /// `/dev/disk/by-uuid`, wherever they are mounted.
    #[serde(default = "yes")]
    pub mounts: bool,
    /// udev's link tree with `by-label` and `by-uuid` (for tests and containers).
    #[serde(default = "default_dev_disk")]
    pub dev_disk: PathBuf,
    /// The mount table read for `mounts` (for tests and containers).
    #[serde(default = "default_mountinfo")]
    pub mountinfo: PathBuf,
    #[serde(default = "default_max_key_size")]
    pub max_key_size: u64,
    /// Owners a key file may have (default: root and the agent's own user).
    #[serde(default)]
    pub key_owners: Option<Vec<u32>>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            watch: Vec::new(),
            require_mount: false,
            mounts: true,
            dev_disk: default_dev_disk(),
            mountinfo: default_mountinfo(),
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            key_owners: None,
        }
    }
}

/// The secret store (defaults as `vmcrypt secret`: the store directory, the master key
/// from `$CREDENTIALS_DIRECTORY/vmcrypt-master-key` or the store's generated key).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub master_key_passphrase_file: Option<PathBuf>,
}

/// How a passphrase is asked for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// The program (systemd-ask-password's command line interface).
    #[serde(default = "default_ask")]
    pub command: PathBuf,
    /// Seconds to wait for an answer.
    #[serde(default = "default_ask_timeout")]
    pub timeout: u64,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            command: default_ask(),
            timeout: default_ask_timeout(),
        }
    }
}

/// One VM.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: String,
    /// Unlock and start it when the agent starts (or the config is reloaded) and its
    /// keys are present without a prompt.
    #[serde(default = "yes")]
    pub autostart: bool,
    #[serde(default)]
    pub on_media_removed: RemovalPolicy,
    pub libvirt: Option<LibvirtVm>,
    pub command: Option<CommandVm>,
    #[serde(rename = "disk")]
    pub disks: Vec<DiskConfig>,
}

/// A libvirt domain, started with `virsh -c URI start` and stopped with `destroy`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtVm {
    pub domain: String,
    #[serde(default = "default_uri")]
    pub uri: String,
    #[serde(default = "default_virsh")]
    pub virsh: PathBuf,
}

/// A VM started and stopped by commands (argv lists, no shell).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandVm {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Exit status 0 while the VM runs (asked when the agent re-adopts its exports).
    pub status: Option<Vec<String>>,
}

/// What removing a key medium does to the VMs that take a key from it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalPolicy {
    /// Nothing: the VM keeps running.
    #[default]
    Keep,
    /// Stop the VM; its exports stay open.
    Stop,
    /// Stop the VM and close its exports, so no key stays in memory.
    Lock,
}

/// One disk of a VM: a LUKS device (file or block device) or an encrypted qcow2 image,
/// exported over NBD.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub name: String,
    pub image: PathBuf,
    /// `luks` (default: LUKS1/LUKS2, optionally with a detached header) or `qcow2`
    /// (qcow2 with LUKS encryption, as `qemu-img create -o encrypt.format=luks` makes it).
    #[serde(default)]
    pub format: DiskFormat,
    /// A detached LUKS header.
    pub header: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    /// Export name (default `VM-DISK`).
    pub export: Option<String>,
    /// The export's socket (default `RUN_DIR/EXPORT.sock`), an absolute path, e.g. the
    /// one a libvirt domain's XML names.
    pub socket: Option<PathBuf>,
    pub keys: Vec<KeySourceConfig>,
    /// The encrypted backing layers of a qcow2 image, each with its own key sources,
    /// from the image's backing file down.
    #[serde(default)]
    pub backing: Vec<LayerConfig>,
}

/// One backing layer of a qcow2 disk (a qcow2 image with LUKS encryption).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    pub image: PathBuf,
    pub keys: Vec<KeySourceConfig>,
}

/// What a disk's image is.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Luks,
    Qcow2,
}

/// One key source as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySourceConfig {
    pub store_uuid: Option<String>,
    pub store_usage: Option<String>,
    /// A key file on a medium, by its path relative to the medium's root.
    pub file: Option<String>,
    pub label: Option<String>,
    pub fs_uuid: Option<String>,
    /// A prompt through systemd-ask-password with this text.
    pub ask: Option<String>,
}

/// A checked key source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    StoreUuid(String),
    StoreUsage(String),
    File { medium: MediumId, path: String },
    Ask(String),
}

impl KeySource {
    /// How the audit log and status name it (never its value).
    pub fn describe(&self) -> String {
        match self {
            KeySource::StoreUuid(u) => format!("store uuid {u}"),
            KeySource::StoreUsage(u) => format!("store usage {u}"),
            KeySource::File { medium, path } => format!("file {path} on {medium}"),
            KeySource::Ask(_) => "prompt".into(),
        }
    }

    /// The medium it needs, if any.
    pub fn medium(&self) -> Option<&MediumId> {
        match self {
            KeySource::File { medium, .. } => Some(medium),
            _ => None,
        }
    }
}

impl KeySourceConfig {
    fn check(&self) -> Result<KeySource> {
        let medium = match (&self.label, &self.fs_uuid) {
            (Some(l), None) => Some(MediumId::Label(l.clone())),
            (None, Some(u)) => Some(MediumId::Uuid(u.clone())),
            (None, None) => None,
            (Some(_), Some(_)) => bail!(
                Usage,
                "a key file names its medium by label or fs_uuid, not both"
            ),
        };
        let chosen = [
            self.store_uuid.is_some(),
            self.store_usage.is_some(),
            self.file.is_some(),
            self.ask.is_some(),
        ];
        ensure!(
            chosen.iter().filter(|c| **c).count() == 1,
            Usage,
            "a key source is exactly one of store_uuid, store_usage, file (with label or fs_uuid) or ask"
        );
        if let Some(u) = &self.store_uuid {
            u.parse::<vmcrypt_secrets::Uuid>()?;
            return Ok(KeySource::StoreUuid(u.clone()));
        }
        if let Some(u) = &self.store_usage {
            vmcrypt_secrets::Usage::parse_ref(u)?;
            return Ok(KeySource::StoreUsage(u.clone()));
        }
        if let Some(text) = &self.ask {
            ensure!(
                medium.is_none(),
                Usage,
                "label/fs_uuid belong to a key file, not to ask"
            );
            return Ok(KeySource::Ask(text.clone()));
        }
        let path = self.file.clone().unwrap_or_default();
        check_key_path(&path)?;
        let medium = medium.ok_or_else(|| {
            Error::usage(format!(
                "key file '{path}' needs the medium's label or fs_uuid"
            ))
        })?;
        Ok(KeySource::File { medium, path })
    }
}

/// A key file's path is relative, without `..`: it names a file on the medium.
fn check_key_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    ensure!(
        !path.is_empty()
            && p.is_relative()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
        Usage,
        "key file '{path}' must be a relative path on the medium, without '..'"
    );
    Ok(())
}

/// A checked disk: its export name and key sources.
#[derive(Clone, Debug)]
pub struct Disk {
    pub name: String,
    pub export: String,
    /// A socket path of its own (else `RUN_DIR/EXPORT.sock`).
    pub socket: Option<PathBuf>,
    pub image: PathBuf,
    pub format: DiskFormat,
    pub header: Option<PathBuf>,
    pub read_only: bool,
    pub keys: Vec<KeySource>,
    /// Encrypted backing layers (qcow2), top down, each with its key sources.
    pub backing: Vec<Layer>,
}

/// A checked backing layer.
#[derive(Clone, Debug)]
pub struct Layer {
    pub image: PathBuf,
    pub keys: Vec<KeySource>,
}

impl Disk {
    /// The key sources of each layer: the image's own, then its backing layers'.
    pub fn layer_keys(&self) -> Vec<&[KeySource]> {
        std::iter::once(&self.keys[..])
            .chain(self.backing.iter().map(|l| &l.keys[..]))
            .collect()
    }

    /// Every key source of every layer.
    pub fn all_keys(&self) -> impl Iterator<Item = &KeySource> {
        self.keys
            .iter()
            .chain(self.backing.iter().flat_map(|l| l.keys.iter()))
    }
}

/// How a VM is started.
#[derive(Clone, Debug)]
pub enum Starter {
    Libvirt(LibvirtVm),
    Command(CommandVm),
}

/// A checked VM.
#[derive(Clone, Debug)]
pub struct Vm {
    pub name: String,
    pub autostart: bool,
    pub on_media_removed: RemovalPolicy,
    pub starter: Starter,
    pub disks: Vec<Disk>,
}

impl Vm {
    /// Media any of its key files live on.
    pub fn media(&self) -> Vec<&MediumId> {
        let mut v: Vec<&MediumId> = self
            .disks
            .iter()
            .flat_map(|d| d.all_keys().filter_map(KeySource::medium))
            .collect();
        v.dedup();
        v
    }
}

/// The configuration after checking.
#[derive(Clone, Debug)]
pub struct Checked {
    pub raw: Config,
    pub vms: Vec<Vm>,
}

impl Config {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Checked> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(e, format!("reading the agent config '{}'", path.display())))?;
        Config::parse(&text).with_ctx(|| format!("agent config '{}'", path.display()))
    }

    /// Parse and check TOML text.
    pub fn parse(text: &str) -> Result<Checked> {
        let raw: Config = toml::from_str(text).map_err(|e| Error::usage(e.to_string()))?;
        let mut vms = Vec::with_capacity(raw.vms.len());
        for v in &raw.vms {
            let vm = check_vm(v).with_ctx(|| format!("vm '{}'", v.name))?;
            ensure!(
                !vms.iter().any(|o: &Vm| o.name == vm.name),
                Usage,
                "vm '{}' is defined twice",
                vm.name
            );
            vms.push(vm);
        }
        let mut exports: Vec<&str> = vms
            .iter()
            .flat_map(|v| v.disks.iter().map(|d| d.export.as_str()))
            .collect();
        exports.sort_unstable();
        if let Some(w) = exports.windows(2).find(|w| w[0] == w[1]) {
            bail!(Usage, "export name '{}' is used by two disks", w[0]);
        }
        let mut sockets: Vec<PathBuf> = vms
            .iter()
            .flat_map(|v| v.disks.iter())
            .map(|d| d.socket_in(&raw.run_dir))
            .collect();
        sockets.sort_unstable();
        if let Some(w) = sockets.windows(2).find(|w| w[0] == w[1]) {
            bail!(Usage, "socket '{}' is used by two disks", w[0].display());
        }
        ensure!(
            raw.rescan_interval > 0,
            Usage,
            "rescan_interval must be at least 1 second"
        );
        Ok(Checked { raw, vms })
    }
}

fn check_vm(v: &VmConfig) -> Result<Vm> {
    vmcrypt_block::jobs::luks::active::check_name(&v.name)?;
    let starter = match (&v.libvirt, &v.command) {
        (Some(l), None) => Starter::Libvirt(l.clone()),
        (None, Some(c)) => {
            ensure!(
                !c.start.is_empty() && !c.stop.is_empty(),
                Usage,
                "command.start and command.stop must name a program"
            );
            Starter::Command(c.clone())
        }
        _ => bail!(Usage, "give exactly one of [vm.libvirt] or [vm.command]"),
    };
    ensure!(
        !v.disks.is_empty(),
        Usage,
        "a vm needs at least one [[vm.disk]]"
    );
    let mut disks = Vec::with_capacity(v.disks.len());
    for d in &v.disks {
        disks.push(check_disk(&v.name, d).with_ctx(|| format!("disk '{}'", d.name))?);
    }
    Ok(Vm {
        name: v.name.clone(),
        autostart: v.autostart,
        on_media_removed: v.on_media_removed,
        starter,
        disks,
    })
}

fn check_disk(vm: &str, d: &DiskConfig) -> Result<Disk> {
    vmcrypt_block::jobs::luks::active::check_name(&d.name)?;
    let export = d
        .export
        .clone()
        .unwrap_or_else(|| format!("{vm}-{}", d.name));
    vmcrypt_block::jobs::luks::active::check_name(&export)?;
    ensure!(
        !d.keys.is_empty(),
        Usage,
        "a disk needs at least one key source"
    );
    let keys = check_sources(&d.keys)?;
    ensure!(
        d.header.is_none() || d.format == DiskFormat::Luks,
        Usage,
        "a detached header belongs to a luks disk"
    );
    ensure!(
        d.backing.is_empty() || d.format == DiskFormat::Qcow2,
        Usage,
        "backing layers belong to a qcow2 disk"
    );
    if let Some(s) = &d.socket {
        ensure!(
            s.is_absolute() && s.file_name().is_some(),
            Usage,
            "socket '{}' must be an absolute file path",
            s.display()
        );
    }
    let mut backing = Vec::with_capacity(d.backing.len());
    for (i, l) in d.backing.iter().enumerate() {
        let keys = check_sources(&l.keys).with_ctx(|| format!("backing layer {}", i + 1))?;
        backing.push(Layer {
            image: l.image.clone(),
            keys,
        });
    }
    Ok(Disk {
        name: d.name.clone(),
        export,
        socket: d.socket.clone(),
        backing,
        image: d.image.clone(),
        format: d.format,
        header: d.header.clone(),
        read_only: d.read_only,
        keys,
    })
}

fn check_sources(keys: &[KeySourceConfig]) -> Result<Vec<KeySource>> {
    ensure!(
        !keys.is_empty(),
        Usage,
        "a layer needs at least one key source"
    );
    keys.iter().map(KeySourceConfig::check).collect()
}

impl Disk {
    /// The socket the disk is served on, with `run_dir` the agent's.
    pub fn socket_in(&self, run_dir: &Path) -> PathBuf {
        match &self.socket {
            Some(s) => s.clone(),
            None => run_dir.join(format!("{}.sock", self.export)),
        }
    }
}

fn default_run_dir() -> PathBuf {
    DEFAULT_RUN_DIR.into()
}
fn default_control() -> PathBuf {
    DEFAULT_CONTROL.into()
}
fn default_audit() -> PathBuf {
    DEFAULT_AUDIT.into()
}
fn default_rescan() -> u64 {
    5
}
fn default_dev_disk() -> PathBuf {
    crate::media::DEFAULT_DEV_DISK.into()
}
fn default_mountinfo() -> PathBuf {
    crate::media::DEFAULT_MOUNTINFO.into()
}
fn default_max_key_size() -> u64 {
    DEFAULT_MAX_KEY_SIZE
}
fn default_ask() -> PathBuf {
    "systemd-ask-password".into()
}
fn default_ask_timeout() -> u64 {
    90
}
fn default_uri() -> String {
    "qemu:///system".into()
}
fn default_virsh() -> PathBuf {
    "virsh".into()
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [media]
        watch = ["/run/media/root"]
        [[vm]]
        name = "web"
        on_media_removed = "lock"
        command = { start = ["true"], stop = ["true"] }
        [[vm.disk]]
        name = "root"
        image = "/vms/web.luks"
        keys = [{ file = "keys/web.key", label = "VMKEYS" }, { store_uuid = "9c5f4ab4-4d5b-4d8e-9a4e-0a8f1c2b3d4e" }, { ask = "web" }]
    "#;

    #[test]
    fn parses_sources_in_order() {
        let c = Config::parse(GOOD).unwrap();
        let d = &c.vms[0].disks[0];
        assert_eq!(d.export, "web-root");
        assert_eq!(
            d.keys[0],
            KeySource::File {
                medium: MediumId::Label("VMKEYS".into()),
                path: "keys/web.key".into()
            }
        );
        assert!(matches!(d.keys[1], KeySource::StoreUuid(_)));
        assert_eq!(d.keys[2], KeySource::Ask("web".into()));
        assert_eq!(c.vms[0].on_media_removed, RemovalPolicy::Lock);
    }

    #[test]
    fn refuses_bad_fields_by_name() {
        let bad = [
            (GOOD.replace("keys/web.key", "../web.key"), "relative path"),
            (
                GOOD.replace("label = \"VMKEYS\"", "label = \"A\", fs_uuid = \"B\""),
                "not both",
            ),
            (GOOD.replace("9c5f4ab4", "zz"), "uuid"),
            (GOOD.replace("\"lock\"", "\"explode\""), "explode"),
            (GOOD.replace("name = \"web\"", "name = \"a/b\""), "a/b"),
            (GOOD.replace("image =", "imag ="), "imag"),
            (
                GOOD.replace("command = { start = [\"true\"], stop = [\"true\"] }", ""),
                "exactly one",
            ),
            (
                GOOD.replace("image =", "socket = \"rel.sock\"\nimage ="),
                "must be an absolute file path",
            ),
            (
                format!("{GOOD}[[vm.disk.backing]]\nimage = \"/b\"\nkeys = [{{ ask = \"b\" }}]\n"),
                "backing layers belong to a qcow2 disk",
            ),
            (
                GOOD.replace("image =", "format = \"qcow2\"\nimage =")
                    + "[[vm.disk.backing]]\nimage = \"/b\"\nkeys = []\n",
                "backing layer 1",
            ),
            (
                GOOD.replace("[media]", "run_dir = \"/r\"\n[media]")
                    .replace(
                        "image =",
                        "socket = \"/r/web-root.sock\"\nexport = \"other\"\nimage =",
                    )
                    + "[[vm]]\nname = \"x\"\ncommand = { start = [\"true\"], stop = [\"true\"] }\n\
                     [[vm.disk]]\nname = \"root\"\nexport = \"web-root\"\nimage = \"/x\"\nkeys = [{ ask = \"x\" }]\n",
                "socket '/r/web-root.sock' is used by two disks",
            ),
        ];
        for (text, want) in bad {
            let Err(e) = Config::parse(&text) else {
                panic!("accepted: {want}")
            };
            let e = e.display_chain();
            assert!(
                e.to_lowercase().contains(&want.to_lowercase()),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn socket_and_backing_layers() {
        let text = GOOD.replace(
            "image =",
            "format = \"qcow2\"\nsocket = \"/vms/web.sock\"\nimage =",
        ) + "[[vm.disk.backing]]\nimage = \"/vms/base.qcow2\"\nkeys = [{ file = \"base.key\", fs_uuid = \"AB-CD\" }]\n";
        let c = Config::parse(&text).unwrap();
        let d = &c.vms[0].disks[0];
        assert_eq!(
            d.socket_in(Path::new("/run/x")),
            PathBuf::from("/vms/web.sock")
        );
        assert_eq!(d.layer_keys().len(), 2);
        assert_eq!(d.backing[0].image, PathBuf::from("/vms/base.qcow2"));
        let media = c.vms[0].media();
        assert!(
            media.contains(&&MediumId::Uuid("AB-CD".into())),
            "{media:?}"
        );
        let plain = Config::parse(GOOD).unwrap();
        assert_eq!(
            plain.vms[0].disks[0].socket_in(Path::new("/run/x")),
            PathBuf::from("/run/x/web-root.sock")
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::parse(include_str!("../../../contrib/agent.toml.example")).unwrap();
        assert_eq!(c.vms.len(), 2);
        assert_eq!(c.vms[0].disks[0].keys.len(), 3);
        assert!(matches!(c.vms[0].starter, Starter::Libvirt(_)));
        assert_eq!(c.vms[1].on_media_removed, RemovalPolicy::Keep);
        let web = &c.vms[0].disks[0];
        assert_eq!(
            web.socket.as_deref(),
            Some(Path::new("/run/vmcrypt/web-root.sock"))
        );
        // The commented chain example parses too.
        let chain: String = include_str!("../../../contrib/agent.toml.example")
            .split("# A qcow2 overlay")
            .nth(1)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!(
            "[[vm]]\nname = \"c\"\ncommand = {{ start = [\"a\"], stop = [\"b\"] }}\n{chain}"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.vms[0].disks[0].backing.len(), 1);
    }
}
