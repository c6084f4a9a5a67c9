//! `vmcrypt luks format`: cryptsetup's luksFormat on an existing file or block device,
//! which keeps its size. Flags -> [`FormatRequest`] -> plan (bad options and a device
//! too small are refused here) -> confirmation (unless -q) -> passphrase -> write.
use super::opts::KdfOpts;
use crate::passphrase::{prompt_new, read_key_file};
use std::io::{BufRead, IsTerminal, Write};
use vmcrypt_block::drivers::luks::Version;
use vmcrypt_block::jobs::luks::format::{FormatRequest, plan};
use vmcrypt_block::jobs::rbd::{encryption_format, from_luks_format, is_rbd_target};
use vmcrypt_block::opts::parse_size;
use vmcrypt_error::{Error, Result, bail, ensure};

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// The file or block device to format (it keeps its size)
    device: String,
    /// File with the passphrase (same as --key-file)
    key_file_pos: Option<String>,
    /// LUKS version: luks2 (default; also "luks") or luks1
    #[arg(
        long = "type",
        short = 'M',
        value_name = "TYPE",
        default_value = "luks2"
    )]
    luks_type: String,
    /// Cipher, cryptsetup style (default aes-xts-plain64)
    #[arg(long = "cipher", short = 'c', value_name = "CIPHER")]
    cipher: Option<String>,
    /// Volume key size in bits (default 512 for XTS, else 256)
    #[arg(long = "key-size", short = 's', value_name = "BITS")]
    key_size: Option<u32>,
    /// PBKDF2 / AF hash (LUKS1: the header's hash; default sha256)
    #[arg(long = "hash", short = 'h', value_name = "HASH")]
    hash: Option<String>,
    #[command(flatten)]
    kdf: KdfOpts,
    /// Read the passphrase from FILE (exact bytes; - = all of stdin)
    #[arg(long = "key-file", short = 'd', value_name = "FILE")]
    key_file: Option<String>,
    /// Key slot for the passphrase (default 0)
    #[arg(long = "key-slot", short = 'S', value_name = "N")]
    key_slot: Option<u32>,
    /// Put the header into FILE (created owner-only if missing); the device holds data only
    #[arg(long = "header", value_name = "FILE")]
    header: Option<String>,
    /// Use the volume key in FILE instead of a random one
    #[arg(
        long = "volume-key-file",
        alias = "master-key-file",
        value_name = "FILE"
    )]
    volume_key_file: Option<String>,
    /// LUKS2 data sector size: 512, 1024, 2048 or 4096
    #[arg(long = "sector-size", value_name = "BYTES")]
    sector_size: Option<u32>,
    /// LUKS2 label
    #[arg(long = "label", value_name = "LABEL")]
    label: Option<String>,
    /// LUKS2 subsystem
    #[arg(long = "subsystem", value_name = "SUBSYSTEM")]
    subsystem: Option<String>,
    /// UUID to write instead of a random one
    #[arg(long = "uuid", value_name = "UUID")]
    uuid: Option<String>,
    /// Data offset in 512-byte sectors
    #[arg(long = "offset", short = 'o', value_name = "SECTORS")]
    offset: Option<u64>,
    /// Align the data to SECTORS 512-byte sectors (detached header: the data offset)
    #[arg(long = "align-payload", value_name = "SECTORS")]
    align_payload: Option<u64>,
    /// Size of one LUKS2 metadata copy (16k .. 4m)
    #[arg(long = "luks2-metadata-size", value_name = "SIZE")]
    metadata_size: Option<String>,
    /// Size of the LUKS2 keyslots area
    #[arg(long = "luks2-keyslots-size", value_name = "SIZE")]
    keyslots_size: Option<String>,
    /// Batch mode: do not ask for confirmation
    #[arg(long = "batch-mode", short = 'q')]
    batch: bool,
    /// Print help
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(a: &Args) -> Result<u8> {
    let req = request(a)?;
    if is_rbd_target(&a.device) {
        return run_rbd(a, &req);
    }
    let plan = plan(&req)?;
    let key_file = key_file(a)?;
    if let Some(v) = plan.existing {
        eprintln!(
            "WARNING: Device {} already contains a LUKS{v} header.",
            plan.header.as_deref().unwrap_or(&plan.device)
        );
    }
    for w in &plan.warnings {
        eprintln!("WARNING: {w}");
    }
    if !a.batch {
        confirm(&plan.device, key_file == Some("-"))?;
    }
    let pass = match key_file {
        Some(f) => read_key_file(f)?,
        None => prompt_new(&a.device)?,
    };
    let volume_key = a
        .volume_key_file
        .as_deref()
        .map(read_key_file)
        .transpose()?;
    plan.run(pass.as_bytes(), volume_key)?;
    Ok(0)
}

/// An rbd image: librbd's layout, as `vmcrypt rbd encryption format` writes it.
fn run_rbd(a: &Args, req: &FormatRequest) -> Result<u8> {
    ensure!(
        a.volume_key_file.is_none(),
        Usage,
        "--volume-key-file cannot be used with rbd image {}",
        a.device
    );
    let rbd_req = from_luks_format(req)?;
    let key_file = key_file(a)?;
    if !a.batch {
        confirm(&a.device, key_file == Some("-"))?;
    }
    let pass = match key_file {
        Some(f) => read_key_file(f)?,
        None => prompt_new(&a.device)?,
    };
    encryption_format(&rbd_req, pass.as_bytes())?;
    Ok(0)
}

fn request(a: &Args) -> Result<FormatRequest> {
    let version = match a.luks_type.as_str() {
        "luks1" => Version::V1,
        "luks" | "luks2" => Version::V2,
        t => bail!(Usage, "--type '{t}' is not supported here (luks1 or luks2)"),
    };
    let size = |s: &Option<String>| s.as_deref().map(parse_size).transpose();
    Ok(FormatRequest {
        header: a.header.clone(),
        cipher: a.cipher.clone(),
        key_bits: a.key_size,
        hash: a.hash.clone(),
        keyslot: a.kdf.keyslot(None),
        key_slot: a.key_slot,
        sector_size: a.sector_size,
        label: a.label.clone(),
        subsystem: a.subsystem.clone(),
        uuid: a.uuid.clone(),
        offset_sectors: a.offset,
        align_sectors: a.align_payload,
        metadata_size: size(&a.metadata_size)?,
        keyslots_size: size(&a.keyslots_size)?,
        ..FormatRequest::new(&a.device, version)
    })
}

/// The passphrase file: the positional one or `--key-file` (not both).
fn key_file(a: &Args) -> Result<Option<&str>> {
    ensure!(
        a.key_file_pos.is_none() || a.key_file.is_none(),
        Usage,
        "give the key file either as an argument or with --key-file"
    );
    Ok(a.key_file_pos.as_deref().or(a.key_file.as_deref()))
}

/// cryptsetup's question: the user must type YES (on the terminal, or as the first line
/// of stdin when it is not one).
fn confirm(device: &str, key_on_stdin: bool) -> Result<()> {
    let tty = std::io::stdin().is_terminal();
    ensure!(
        tty || !key_on_stdin,
        Usage,
        "the key is read from stdin (--key-file -), so there is no way to confirm: use -q \
         (--batch-mode)"
    );
    eprint!(
        "\nWARNING!\n========\nThis will overwrite data on {device} irrevocably.\n\n\
         Are you sure? (Type 'yes' in capital letters): "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io(e, "reading the confirmation"))?;
    if !tty {
        eprintln!();
    }
    if line.trim_end_matches(['\n', '\r']) != "YES" {
        let hint = if tty {
            ""
        } else {
            " (stdin is not a terminal: its first line must be YES, or use -q)"
        };
        bail!(
            Usage,
            "Operation aborted: not confirmed{hint}; nothing was written"
        );
    }
    Ok(())
}
