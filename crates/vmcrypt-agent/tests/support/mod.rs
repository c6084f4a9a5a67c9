//! What the agent's tests share: exports opened in this process, LUKS1 disks formatted
//! by cryptsetup, and VMs whose start/stop commands log to a file.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use vmcrypt_agent::config::Disk;
use vmcrypt_agent::export::{ExportInfo, Exporter};
use vmcrypt_block::jobs::luks::Target;
use vmcrypt_block::jobs::luks::open::{OpenRequest, open};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::Result;

/// Exports as open `luks` nodes in this process; clones share them, as two agents share
/// the export daemons of a run directory.
#[derive(Clone, Default)]
pub struct InProcess(Arc<Mutex<BTreeMap<String, u32>>>);

impl Exporter for InProcess {
    fn open(&self, disk: &Disk, keys: &[&[u8]]) -> Result<ExportInfo> {
        let key = keys[0];
        let req = OpenRequest {
            target: Target {
                device: disk.image.display().to_string(),
                header: None,
                limits: KdfLimits::default(),
            },
            read_only: disk.read_only,
            key_slot: None,
        };
        let opened = open(&req, key)?;
        self.0
            .lock()
            .unwrap()
            .insert(disk.export.clone(), opened.info.key_slot);
        Ok(self.status(disk)?.unwrap())
    }
    fn status(&self, disk: &Disk) -> Result<Option<ExportInfo>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&disk.export)
            .map(|slot| ExportInfo {
                name: disk.export.clone(),
                socket: format!("{}.sock", disk.export),
                pid: std::process::id(),
                slot: Some(*slot),
            }))
    }
    fn close(&self, disk: &Disk) -> Result<()> {
        self.0.lock().unwrap().remove(&disk.export);
        Ok(())
    }
}

/// A 4 MiB LUKS1 disk at `dev` opened by `key` (cryptsetup luksFormat, PBKDF2 1000).
pub fn luks_image(dev: &Path, key: &[u8]) {
    std::fs::File::create(dev)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let k = dev.with_extension("formatkey");
    std::fs::write(&k, key).unwrap();
    let st = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks1",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
        ])
        .arg(&k)
        .arg(dev)
        .status()
        .expect("cryptsetup is installed (cryptsetup-bin)");
    std::fs::remove_file(&k).unwrap();
    assert!(st.success());
}

/// A VM's configuration: `[[vm]]` NAME with EXTRA lines, start/stop commands that append
/// to `DIR/NAME.events` (running after a `start`), one disk `root` = `DIR/NAME.img` with
/// the key sources KEYS.
pub fn vm_toml(dir: &Path, name: &str, extra: &str, keys: &str) -> String {
    let ev = dir.join(format!("{name}.events")).display().to_string();
    format!(
        "[[vm]]\nname = \"{name}\"\n{extra}\
         command = {{ start = [\"/bin/sh\", \"-c\", \"echo start >> {ev}\"], stop = [\"/bin/sh\", \"-c\", \"echo stop >> {ev}\"], \
         status = [\"/bin/sh\", \"-c\", \"tail -n 1 {ev} | grep -qx start\"] }}\n\
         [[vm.disk]]\nname = \"root\"\nimage = \"{}\"\nkeys = [{keys}]\n",
        dir.join(format!("{name}.img")).display()
    )
}

/// What VM `name`'s commands logged ("start\n", "stop\n", ...).
pub fn events(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.events"))).unwrap_or_default()
}
