//! `vmcrypt luks ...`: cryptsetup's header and key-slot commands, for LUKS1 and LUKS2.
//! Each command opens the header, dispatches on its version and calls the library.
use super::common::pretty;
use crate::cli::{KeyOpts, LuksCommand, NewKeyOpts};
use crate::passphrase::{existing, prompt_new, read_key_file};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::convert::convert_to;
use vmcrypt_block::drivers::luks::dump::{luks_dump_json, luks_dump_text};
use vmcrypt_block::drivers::luks::dump2::{luks2_dump_json, luks2_dump_text};
use vmcrypt_block::drivers::luks::embedded::{self, Container, require_plain};
use vmcrypt_block::drivers::luks::v2::Luks2Volume;
use vmcrypt_block::drivers::luks::v2::keyslots::{KdfKind, KeyslotParams};
use vmcrypt_block::drivers::luks::volume::{KdfParams, restore_header};
use vmcrypt_block::drivers::luks::{Header, open_header};
use vmcrypt_crypto::{HashAlg, SecretBytes};
use vmcrypt_error::{Error, Reason, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks1::{self, Limits};

/// The device holding the header: `--header` if given, else the device itself, or the
/// LUKS header embedded in a LUKS-encrypted qcow2 image. Key-slot work takes only the
/// header lock (a VM using the image keeps running, as with cryptsetup on an active
/// device); `whole_image` takes the image lock for changes a running user must not see
/// (restoring a header, converting its format).
fn header_device_with(
    device: &str,
    key: &KeyOpts,
    read_only: bool,
    whole_image: bool,
) -> Result<(Arc<dyn BlockDriver>, bool, Container)> {
    let path = Path::new(key.header.as_deref().unwrap_or(device));
    let file = if whole_image {
        FileDriver::open(path, read_only)?
    } else {
        FileDriver::open_header(path, read_only)?
    };
    let dev: Arc<dyn BlockDriver> = Arc::new(file);
    let (dev, container) = embedded::header_device(dev)?;
    Ok((dev, key.header.is_some(), container))
}

fn header_device(
    device: &str,
    key: &KeyOpts,
    read_only: bool,
) -> Result<(Arc<dyn BlockDriver>, bool, Container)> {
    header_device_with(device, key, read_only, false)
}

/// Open the header of either version.
fn open_any(device: &str, key: &KeyOpts, read_only: bool) -> Result<Header> {
    let (dev, detached, _) = header_device(device, key, read_only)?;
    open_header(dev, detached, &key.limits.limits()).with_ctx(|| format!("device {device}"))
}

/// Open a header to change its key slots: a LUKS2 header with unmet requirements (or a
/// reencryption in progress) is refused before any passphrase is asked for or tried.
fn open_for_write(device: &str, key: &KeyOpts) -> Result<Header> {
    let hdr = open_any(device, key, false)?;
    if let Header::V2(v) = &hdr {
        v.requirements()
            .and_then(|r| r.check_writable())
            .with_ctx(|| format!("device {device}"))?;
    }
    Ok(hdr)
}

/// Open a LUKS2 header (for LUKS2-only commands).
pub fn open_v2(device: &str, key: &KeyOpts, read_only: bool) -> Result<Box<Luks2Volume>> {
    let (_, _, container) = header_device(device, key, true)?;
    require_plain(container, device, "this command")?;
    match open_any(device, key, read_only)? {
        Header::V2(v) => Ok(v),
        Header::V1(_) => bail!(Unsupported, "{device} is LUKS1; this command needs LUKS2"),
    }
}

/// Key-slot parameters of a new LUKS2 keyslot from the command line.
fn params2(new: &NewKeyOpts) -> Result<KeyslotParams> {
    Ok(KeyslotParams {
        kdf: KdfKind::from_name(new.pbkdf.as_deref().unwrap_or("argon2id"))?,
        hash: HashAlg::from_name(new.hash.as_deref().unwrap_or("sha256"))?,
        iter_time_ms: new.iter_time.unwrap_or(2000),
        iterations: new.iterations,
        memory_kib: new.pbkdf_memory,
        parallel: new.pbkdf_parallel,
        ..KeyslotParams::default()
    })
}

fn slot2(key: &KeyOpts) -> Option<u32> {
    key.key_slot.map(|s| s as u32)
}

/// LUKS1 key-slot iteration choice from the command line.
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
            let hdr = open_for_write(&device, &key)?;
            let volume_key = match &volume_key_file {
                Some(f) => read_key_file(f)?,
                None => {
                    let pass = existing(key.key_file.as_deref(), &device)?;
                    hdr.unlock(pass.as_bytes(), None)?.1
                }
            };
            let newpass = new_passphrase(new_key_file_pos.as_deref(), &new, &key)?;
            let slot = match hdr {
                Header::V1(mut v) => {
                    ensure!(
                        v.verify_volume_key(&volume_key),
                        WrongKey,
                        "the volume key does not match the header"
                    );
                    v.add_key(&volume_key, newpass.as_bytes(), key.key_slot, &kdf(&new))? as u32
                }
                Header::V2(mut v) => v.add_key(
                    &volume_key,
                    newpass.as_bytes(),
                    slot2(&key),
                    &params2(&new)?,
                )?,
            };
            eprintln!("Key slot {slot} created.");
            Ok(0)
        }
        LuksCommand::RemoveKey {
            device,
            key_file_pos,
            key,
        } => {
            let file = key_file_pos.as_deref().or(key.key_file.as_deref());
            let hdr = open_for_write(&device, &key)?;
            let pass = existing(file, &device)?;
            match hdr {
                Header::V1(mut v) => {
                    let slot = v.unlock(pass.as_bytes(), None)?.slot;
                    ensure!(key.batch || v.active_slots() > 1, Busy, "{LAST_SLOT}");
                    v.kill_slot(slot, true)?;
                    eprintln!("Key slot {slot} removed.");
                }
                Header::V2(mut v) => {
                    let (slot, r) = v
                        .remove_key(pass.as_bytes(), key.batch)
                        .map_err(last_slot_hint)?;
                    eprintln!("Key slot {slot} removed.");
                    report_tokens(&r.dropped_tokens);
                }
            }
            Ok(0)
        }
        LuksCommand::KillSlot {
            device,
            slot,
            key_file_pos,
            key,
        } => {
            let file = key_file_pos.as_deref().or(key.key_file.as_deref());
            let hdr = open_for_write(&device, &key)?;
            let pass = if file.is_some() || !key.batch {
                Some(existing(file, &device)?)
            } else {
                None
            };
            match hdr {
                Header::V1(mut v) => {
                    if let Some(p) = &pass {
                        v.unlock(p.as_bytes(), None)
                            .ctx("verifying a remaining passphrase")?;
                    }
                    ensure!(key.batch || v.active_slots() > 1, Busy, "{LAST_SLOT}");
                    v.kill_slot(slot, true)?;
                }
                Header::V2(mut v) => {
                    if let Some(p) = &pass {
                        v.unlock(p.as_bytes(), None)
                            .ctx("verifying a remaining passphrase")?;
                    }
                    let r = v
                        .kill_slot(slot as u32, key.batch)
                        .map_err(last_slot_hint)?;
                    report_tokens(&r.dropped_tokens);
                }
            }
            eprintln!("Key slot {slot} wiped.");
            Ok(0)
        }
        LuksCommand::ChangeKey {
            device,
            new_key_file_pos,
            key,
            new,
        } => {
            let hdr = open_for_write(&device, &key)?;
            let old = existing(key.key_file.as_deref(), &device)?;
            hdr.unlock(old.as_bytes(), slot2(&key))?;
            let newpass = new_passphrase(new_key_file_pos.as_deref(), &new, &key)?;
            match hdr {
                Header::V1(mut v) => {
                    let (from, to) =
                        v.change_key(old.as_bytes(), newpass.as_bytes(), key.key_slot, &kdf(&new))?;
                    eprintln!("Key slot {from} changed (now key slot {to}).");
                }
                Header::V2(mut v) => {
                    let s = v.change_key(
                        old.as_bytes(),
                        newpass.as_bytes(),
                        slot2(&key),
                        &params2(&new)?,
                    )?;
                    eprintln!("Key slot {s} changed.");
                }
            }
            Ok(0)
        }
        LuksCommand::HeaderBackup { device, file, key } => {
            ensure!(
                !Path::new(&file).exists(),
                Busy,
                "requested header backup file '{file}' already exists"
            );
            let bytes = match open_any(&device, &key, true)? {
                Header::V1(v) => v.backup()?,
                Header::V2(v) => v.backup()?,
            };
            write_new_file(&file, &bytes)?;
            Ok(0)
        }
        LuksCommand::HeaderRestore { device, file, key } => {
            let backup = std::fs::read(&file)
                .map_err(|e| Error::io(e, format!("reading backup '{file}'")))?;
            let (dev, _, container) = header_device_with(&device, &key, false, true)?;
            if luks1::version_of(&backup) == Some(1) {
                ensure!(
                    backup.len() as u64 <= dev.size(),
                    Usage,
                    "the backup ({} bytes) does not fit the LUKS header region of {device} ({} bytes)",
                    backup.len(),
                    dev.size()
                );
                restore_header(&dev, &backup, &Limits::default())
                    .with_ctx(|| format!("device {device}"))?;
            } else {
                require_plain(container, &device, "restoring a LUKS2 header backup")?;
                Luks2Volume::restore(&dev, &backup, &key.limits.limits())
                    .with_ctx(|| format!("device {device}"))?;
            }
            Ok(0)
        }
        LuksCommand::Uuid { device, uuid, key } => {
            match (open_any(&device, &key, uuid.is_none())?, uuid) {
                (Header::V1(v), None) => outln!("{}", v.header().uuid),
                (Header::V2(v), None) => outln!("{}", v.header().binary.uuid),
                (Header::V1(mut v), Some(u)) => v.set_uuid(&u)?,
                (Header::V2(mut v), Some(u)) => v.set_uuid(&u)?,
            }
            Ok(0)
        }
        LuksCommand::IsLuks {
            device,
            verbose,
            key,
        } => is_luks(&device, &key, verbose),
        LuksCommand::TestKey { device, key } => {
            let pass = existing(key.key_file.as_deref(), &device)?;
            let (slot, _) = open_any(&device, &key, true)?.unlock(pass.as_bytes(), slot2(&key))?;
            eprintln!("Key slot {slot} unlocked.");
            Ok(0)
        }
        LuksCommand::Token {
            action,
            device,
            token_id,
            json_file,
            key,
        } => super::luks2::token(&action, &device, token_id, json_file.as_deref(), &key),
        LuksCommand::Repair { device, key } => super::luks2::repair(&device, &key),
        LuksCommand::Convert { device, to, key } => {
            let version = match to.as_str() {
                "luks1" => 1,
                "luks2" => 2,
                other => bail!(Usage, "--type must be luks1 or luks2, not '{other}'"),
            };
            let (dev, detached, container) = header_device_with(&device, &key, false, true)?;
            require_plain(container, &device, "converting the header")?;
            let r = convert_to(dev, version, detached, &key.limits.limits())
                .with_ctx(|| format!("device {device}"))?;
            eprintln!(
                "Converted LUKS{} to LUKS{} ({} key slot(s) moved).",
                r.from_version,
                r.to_version,
                r.keyslots.iter().filter(|m| m.moved()).count()
            );
            Ok(0)
        }
        LuksCommand::Config {
            device,
            priority,
            label,
            subsystem,
            key,
        } => super::luks2::config(&device, priority.as_deref(), label, subsystem, &key),
    }
}

const LAST_SLOT: &str =
    "this is the last key slot; the device would become unusable (use -q to remove it anyway)";

fn last_slot_hint(e: Error) -> Error {
    if e.kind() == vmcrypt_error::ErrorKind::Busy && e.reason() == Some(Reason::LastKeySlot) {
        Error::busy(LAST_SLOT).with_reason(Reason::LastKeySlot)
    } else {
        e
    }
}

fn report_tokens(dropped: &[u32]) {
    for t in dropped {
        eprintln!("Token {t} was bound only to this key slot and was removed with it.");
    }
}

fn dump(device: &str, key: &KeyOpts, dump_volume_key: bool, json: bool) -> Result<u8> {
    let hdr = open_any(device, key, true)?;
    let vk = if dump_volume_key {
        let pass = existing(key.key_file.as_deref(), device)?;
        Some(hdr.unlock(pass.as_bytes(), slot2(key))?.1)
    } else {
        None
    };
    match (&hdr, json) {
        (Header::V1(v), true) => outln!("{}", pretty(&luks_dump_json(v, vk.as_ref()))),
        (Header::V1(v), false) => out!("{}", luks_dump_text(v, device, vk.as_ref())),
        (Header::V2(v), true) => outln!("{}", pretty(&luks2_dump_json(v))),
        (Header::V2(v), false) => out!("{}", luks2_dump_text(v, vk.as_ref())?),
    }
    Ok(0)
}

fn is_luks(device: &str, key: &KeyOpts, verbose: bool) -> Result<u8> {
    let (dev, _, _) = header_device(device, key, true)?;
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
