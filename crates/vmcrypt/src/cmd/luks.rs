//! `vmcrypt luks ...`: cryptsetup's LUKS1 header and key-slot commands.
use super::image::pretty;
use crate::cli::{KeyOpts, LuksCommand, NewKeyOpts};
use crate::passphrase::{existing, prompt_new, read_key_file};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::file::FileDriver;
use vmcrypt_block::luks::dump::{luks_dump_json, luks_dump_text};
use vmcrypt_block::luks::volume::{KdfParams, Luks1Volume, restore_header};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{self, Limits};

/// The device holding the header: `--header` if given, else the device itself.
fn header_device(
    device: &str,
    key: &KeyOpts,
    read_only: bool,
) -> Result<(Arc<dyn BlockDriver>, bool)> {
    let path = key.header.as_deref().unwrap_or(device);
    let dev = FileDriver::open(Path::new(path), read_only)?;
    Ok((Arc::new(dev), key.header.is_some()))
}

fn open_volume(device: &str, key: &KeyOpts, read_only: bool) -> Result<Luks1Volume> {
    let (dev, detached) = header_device(device, key, read_only)?;
    Luks1Volume::open(dev, detached, &Limits::default()).with_ctx(|| format!("device {device}"))
}

fn kdf(new: &NewKeyOpts) -> KdfParams {
    KdfParams {
        iter_time_ms: new.iter_time.unwrap_or(2000),
        iterations: new.iterations,
    }
}

/// The new passphrase: positional file, --new-key-file, or a prompt.
fn new_passphrase(pos: Option<&str>, new: &NewKeyOpts, key: &KeyOpts) -> Result<SecretBytes> {
    let file = match (pos, new.new_key_file.as_deref()) {
        (Some(_), Some(_)) => bail!(
            Usage,
            "give the new key file either as an argument or with --new-key-file"
        ),
        (p, n) => p.or(n),
    };
    if file == Some("-") && key.key_file.as_deref() == Some("-") {
        bail!(
            Usage,
            "only one of the existing and the new key can come from stdin"
        );
    }
    match file {
        Some(f) => read_key_file(f),
        None => {
            ensure!(
                key.key_file.as_deref() != Some("-"),
                Usage,
                "the existing key is read from stdin, so the new key needs --new-key-file"
            );
            prompt_new("key slot")
        }
    }
}

pub fn run(cmd: LuksCommand) -> Result<u8> {
    match cmd {
        LuksCommand::Dump {
            device,
            key,
            dump_volume_key,
            json,
        } => dump(&device, &key, dump_volume_key, json),
        LuksCommand::AddKey {
            device,
            new_key_file_pos,
            key,
            new,
            volume_key_file,
        } => {
            let mut vol = open_volume(&device, &key, false)?;
            let volume_key = match volume_key_file {
                Some(f) => {
                    let k = read_key_file(&f)?;
                    ensure!(
                        vol.verify_volume_key(&k),
                        WrongKey,
                        "volume key in '{f}' does not match the header"
                    );
                    k
                }
                None => {
                    let pass = existing(key.key_file.as_deref(), &device)?;
                    vol.unlock(pass.as_bytes(), None)?.volume_key
                }
            };
            let newpass = new_passphrase(new_key_file_pos.as_deref(), &new, &key)?;
            let slot = vol.add_key(&volume_key, newpass.as_bytes(), key.key_slot, &kdf(&new))?;
            eprintln!("Key slot {slot} created.");
            Ok(0)
        }
        LuksCommand::RemoveKey {
            device,
            key_file_pos,
            key,
        } => {
            let mut vol = open_volume(&device, &key, false)?;
            let file = key_file_pos.as_deref().or(key.key_file.as_deref());
            let pass = existing(file, &device)?;
            let slot = vol.unlock(pass.as_bytes(), None)?.slot;
            ensure!(
                key.batch || vol.active_slots() > 1,
                Busy,
                "this is the last key slot; the device would become unusable (use -q to remove it anyway)"
            );
            vol.kill_slot(slot, true)?;
            eprintln!("Key slot {slot} removed.");
            Ok(0)
        }
        LuksCommand::KillSlot {
            device,
            slot,
            key_file_pos,
            key,
        } => {
            let mut vol = open_volume(&device, &key, false)?;
            let file = key_file_pos.as_deref().or(key.key_file.as_deref());
            if file.is_some() || !key.batch {
                let pass = existing(file, &device)?;
                vol.unlock(pass.as_bytes(), None)
                    .ctx("verifying a remaining passphrase")?;
            }
            ensure!(
                key.batch || vol.active_slots() > 1,
                Busy,
                "key slot {slot} is the last key slot; the device would become unusable (use -q to kill it anyway)"
            );
            vol.kill_slot(slot, true)?;
            eprintln!("Key slot {slot} wiped.");
            Ok(0)
        }
        LuksCommand::ChangeKey {
            device,
            new_key_file_pos,
            key,
            new,
        } => {
            let mut vol = open_volume(&device, &key, false)?;
            let old = existing(key.key_file.as_deref(), &device)?;
            vol.unlock(old.as_bytes(), key.key_slot)?;
            let newpass = new_passphrase(new_key_file_pos.as_deref(), &new, &key)?;
            let (from, to) =
                vol.change_key(old.as_bytes(), newpass.as_bytes(), key.key_slot, &kdf(&new))?;
            eprintln!("Key slot {from} changed (now key slot {to}).");
            Ok(0)
        }
        LuksCommand::HeaderBackup { device, file, key } => {
            let vol = open_volume(&device, &key, true)?;
            ensure!(
                !Path::new(&file).exists(),
                Busy,
                "requested header backup file '{file}' already exists"
            );
            let bytes = vol.backup()?;
            write_new_file(&file, &bytes)?;
            Ok(0)
        }
        LuksCommand::HeaderRestore { device, file, key } => {
            let backup = std::fs::read(&file)
                .map_err(|e| Error::io(e, format!("reading backup '{file}'")))?;
            let (dev, _) = header_device(&device, &key, false)?;
            restore_header(&dev, &backup, &Limits::default())
                .with_ctx(|| format!("device {device}"))?;
            Ok(0)
        }
        LuksCommand::Uuid { device, uuid, key } => {
            let mut vol = open_volume(&device, &key, uuid.is_none())?;
            match uuid {
                Some(u) => vol.set_uuid(&u)?,
                None => outln!("{}", vol.header().uuid),
            }
            Ok(0)
        }
        LuksCommand::IsLuks {
            device,
            verbose,
            key,
        } => is_luks(&device, &key, verbose),
        LuksCommand::TestKey { device, key } => {
            let vol = open_volume(&device, &key, true)?;
            let pass = existing(key.key_file.as_deref(), &device)?;
            let u = vol.unlock(pass.as_bytes(), key.key_slot)?;
            eprintln!("Key slot {} unlocked.", u.slot);
            Ok(0)
        }
    }
}

fn dump(device: &str, key: &KeyOpts, dump_volume_key: bool, json: bool) -> Result<u8> {
    let vol = open_volume(device, key, true)?;
    let vk = if dump_volume_key {
        let pass = existing(key.key_file.as_deref(), device)?;
        Some(vol.unlock(pass.as_bytes(), key.key_slot)?.volume_key)
    } else {
        None
    };
    if json {
        outln!("{}", pretty(&luks_dump_json(&vol, vk.as_ref())));
    } else {
        out!("{}", luks_dump_text(&vol, device, vk.as_ref()));
    }
    Ok(0)
}

fn is_luks(device: &str, key: &KeyOpts, verbose: bool) -> Result<u8> {
    let (dev, _) = header_device(device, key, true)?;
    let mut head = [0u8; 8];
    let ok = dev.size() >= 8 && dev.read_at(&mut head, 0).is_ok() && luks1::has_magic(&head);
    if !ok && verbose {
        eprintln!("Device {device} is not a valid LUKS device.");
    }
    Ok(if ok { 0 } else { 4 })
}

fn write_new_file(path: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(e, format!("creating '{path}'")))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(e, format!("writing '{path}'")))
}
