//! `vmcrypt luks reencrypt`: a new volume key for a LUKS device, offline, in
//! cryptsetup's LUKS2 reencryption format (cryptsetup reencrypt
//! --force-offline-reencrypt); LUKS1 goes through LUKS2 and back. `--online SOCKET`
//! drives the reencryption inside a `vmcrypt serve --control SOCKET` (or `luks open`)
//! process instead, starting it there if the image is not in reencryption state.
//! `--encrypt` encrypts a plain device in place (cryptsetup reencrypt --encrypt).
use super::opts::{KdfOpts, KeyOpts, NewKeyOpts};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmcrypt_block::drivers::luks::v2::reencrypt::init::NewEncryption;
use vmcrypt_block::jobs::Events;
use vmcrypt_block::jobs::luks::KeySource;
use vmcrypt_block::jobs::luks::active::{RunDir, check_name};
use vmcrypt_block::jobs::luks::encrypt::{EncryptRequest, encrypt};
use vmcrypt_block::jobs::luks::online;
use vmcrypt_block::jobs::luks::reencrypt::{ReencryptRequest, reencrypt};
use vmcrypt_block::opts::parse_size;
use vmcrypt_error::{Result, bail, ensure};

#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    #[command(flatten)]
    key: KeyOpts,
    #[command(flatten)]
    kdf: KdfOpts,
    /// New data cipher (default: the current one), e.g. aes-xts-plain64
    #[arg(long = "cipher", short = 'c', value_name = "CIPHER")]
    cipher: Option<String>,
    /// New volume key size in bits (default: the current one)
    #[arg(long = "key-size", short = 's', value_name = "BITS")]
    key_size: Option<usize>,
    /// New encryption sector size (default: the current one)
    #[arg(long = "sector-size", value_name = "BYTES")]
    sector_size: Option<u32>,
    /// Hotzone protection: checksum (default), journal or none
    #[arg(long = "resilience", value_name = "MODE")]
    resilience: Option<String>,
    /// Hash of the checksum resilience (default sha256)
    #[arg(long = "resilience-hash", value_name = "HASH")]
    resilience_hash: Option<String>,
    /// Largest hotzone (bytes, or with a K/M/G suffix; default 64M)
    #[arg(long = "hotzone-size", value_name = "SIZE")]
    hotzone_size: Option<String>,
    /// Encrypt a plain (unencrypted) device in place: with --reduce-device-size the
    /// header goes into the space freed at its start, else into --header FILE
    #[arg(long = "encrypt", conflicts_with = "online")]
    encrypt: bool,
    /// With --encrypt: shrink the data by SIZE; its first half holds the header
    #[arg(long = "reduce-device-size", value_name = "SIZE", requires = "encrypt")]
    reduce_device_size: Option<String>,
    /// With --encrypt: the header type (only luks2)
    #[arg(long = "type", value_name = "TYPE", requires = "encrypt")]
    kind: Option<String>,
    /// Decrypt the device in place (LUKS2): with a detached header (--header FILE), or
    /// with its header attached, which moves into the new file --header FILE while the
    /// data shifts over it; afterwards the device holds the plaintext
    #[arg(long = "decrypt", conflicts_with_all = ["cipher", "key_size", "sector_size", "online", "encrypt"])]
    decrypt: bool,
    /// Only continue a reencryption in progress
    #[arg(long = "resume-only")]
    resume_only: bool,
    /// Only write the reencryption metadata
    #[arg(long = "init-only")]
    init_only: bool,
    /// Accepted for cryptsetup compatibility: vmcrypt always reencrypts offline
    #[arg(long = "force-offline-reencrypt")]
    force_offline: bool,
    /// PBKDF2 / AF hash of the new key slot (default sha256)
    #[arg(long = "hash", value_name = "HASH")]
    hash: Option<String>,
    /// Stop (cleanly, resumable) after N hotzones
    #[arg(long = "max-hotzones", value_name = "N", hide = true)]
    max_hotzones: Option<u64>,
    /// Print no progress line
    #[arg(long = "no-progress")]
    no_progress: bool,
    /// DEVICE is the --control socket of a `vmcrypt serve` process, or the NAME of a
    /// `vmcrypt luks open` device: reencrypt the image while it is served (started
    /// there with the passphrase, or resumed if it is in reencryption state)
    #[arg(long = "online")]
    online: bool,
    /// With --online NAME: the run directory of `luks open`
    #[arg(long = "run-dir", value_name = "DIR", requires = "online")]
    run_dir: Option<String>,
    /// With --online: the export name (default: the default export "")
    #[arg(
        long = "export",
        value_name = "NAME",
        requires = "online",
        default_value = ""
    )]
    export: String,
    /// With --online: pause the run after its current hotzone
    #[arg(long = "pause", requires = "online")]
    pause: bool,
    /// With --online: print where the run stands and exit
    #[arg(long = "status", requires = "online", conflicts_with = "pause")]
    status: bool,
    /// With --online: start the run and exit without following it
    #[arg(long = "detach", requires = "online")]
    detach: bool,
}

pub fn run(a: &Args) -> Result<u8> {
    if a.online {
        return online(a);
    }
    ensure!(
        !(a.resume_only && a.init_only),
        Usage,
        "--resume-only and --init-only exclude each other"
    );
    let key_size = key_bytes(a.key_size)?;
    let req = ReencryptRequest {
        new: NewEncryption {
            cipher: a.cipher.clone(),
            key_size,
            sector_size: a.sector_size,
        },
        resilience: a.resilience.clone(),
        resilience_hash: a.resilience_hash.clone(),
        hotzone_size: a.hotzone_size.as_deref().map(parse_size).transpose()?,
        resume_only: a.resume_only,
        init_only: a.init_only,
        key_slot: a.key.key_slot,
        keyslot: a.kdf.keyslot(a.hash.clone()),
        max_hotzones: a.max_hotzones,
        decrypt: a.decrypt,
    };
    let t = a.key.target(&a.device);
    let mut status = Status::new(!a.no_progress && !a.key.batch);
    let r = if a.encrypt && !a.resume_only {
        let new = NewKeyOpts::default();
        let mut keys = a
            .key
            .keys(&a.device, None)
            .with_new(a.key.key_file.as_deref(), &new);
        let ereq = encrypt_request(a, &req)?;
        encrypt(&t, &ereq, &mut keys, &mut status)?
    } else {
        reencrypt(&t, &req, &mut a.key.keys(&a.device, None), &mut status)?
    };
    status.end();
    if r.finished {
        eprintln!(
            "Finished, time {:.3}s",
            status.start.elapsed().as_secs_f64()
        );
    } else if !a.init_only {
        eprintln!(
            "Reencryption paused at {} of {} bytes; continue with --resume-only.",
            r.position.done, r.position.total
        );
    }
    Ok(0)
}

/// The `--encrypt` options.
fn encrypt_request(a: &Args, req: &ReencryptRequest) -> Result<EncryptRequest> {
    ensure!(
        a.kind.as_deref().is_none_or(|t| t == "luks2"),
        Usage,
        "--encrypt writes LUKS2 headers only (--type luks2)"
    );
    Ok(EncryptRequest {
        cipher: req.new.cipher.clone(),
        key_size: req.new.key_size,
        sector_size: req.new.sector_size,
        reduce: a
            .reduce_device_size
            .as_deref()
            .map(parse_size)
            .transpose()?,
        resilience: req.resilience.clone(),
        resilience_hash: req.resilience_hash.clone(),
        hotzone_size: req.hotzone_size,
        init_only: req.init_only,
        keyslot: req.keyslot.clone(),
        max_hotzones: req.max_hotzones,
    })
}

/// `--online`: talk to the serving process's control socket. Starting on an image
/// that is not in reencryption state first puts it in that state in the server
/// (`init`, with the passphrase sent over the socket).
fn online(a: &Args) -> Result<u8> {
    ensure!(
        !(a.init_only && (a.resume_only || a.status || a.pause)),
        Usage,
        "--init-only starts a reencryption: not with --resume-only, --status or --pause"
    );
    let sock = control_socket(a)?;
    let sock = sock.as_path();
    let hotzone = a.hotzone_size.as_deref().map(parse_size).transpose()?;
    let mut status = Status::new(!a.no_progress && !a.key.batch);
    let cmd = if a.status {
        "status"
    } else if a.pause {
        "pause"
    } else {
        "start"
    };
    if cmd == "start" {
        let st = online::request(sock, "status", &a.export, None, None)?;
        if st.state == "none" {
            ensure!(
                !a.resume_only,
                NotFound,
                "{}: no LUKS2 reencryption is in progress (drop --resume-only to start one)",
                a.device
            );
            let pass = KeySource::existing(&mut a.key.keys(&a.device, None))?;
            let st = online::init(sock, &a.export, &init_request(a)?, &pass)?;
            drop(pass);
            if a.init_only {
                eprintln!("Reencryption initialised: 0 of {} bytes.", st.total);
                return Ok(0);
            }
        } else if a.init_only {
            bail!(
                Busy,
                "{}: a LUKS2 reencryption is already in progress",
                a.device
            );
        }
    }
    let mut st = online::request(sock, cmd, &a.export, hotzone, None)?;
    if cmd == "start" && !a.detach {
        while st.state == "running" {
            status.progress(st.done, st.total);
            std::thread::sleep(Duration::from_millis(200));
            st = online::request(sock, "status", &a.export, None, None)?;
        }
        status.progress(st.done, st.total);
        status.end();
    }
    if let Some(e) = &st.error {
        bail!(Io, "online reencryption failed: {e}");
    }
    // A finished run has handed the export over to the new key.
    let key = match (st.state.as_str(), st.old_key_held) {
        ("finished", false) => " The old key is dropped.",
        ("finished", true) => " The old key is still held.",
        _ => "",
    };
    eprintln!(
        "Reencryption {}: {} of {} bytes, {} hotzones; longest hotzone {:.1} ms, \
         longest request {:.1} ms.{key}",
        st.state,
        st.done,
        st.total,
        st.hotzones,
        st.hotzone_max.as_secs_f64() * 1e3,
        st.request_max.as_secs_f64() * 1e3
    );
    if let Some(line) = st.header_line() {
        eprintln!("{line}");
    }
    if let Some(e) = &st.header_error {
        eprintln!("Warning: {e}");
    }
    Ok(0)
}

/// The new encryption and key slot an online start asks the server for.
fn init_request(a: &Args) -> Result<online::InitRequest> {
    let k = a.kdf.keyslot(a.hash.clone());
    Ok(online::InitRequest {
        cipher: a.cipher.clone(),
        key_size: key_bytes(a.key_size)?,
        sector_size: a.sector_size,
        resilience: a.resilience.clone(),
        resilience_hash: a.resilience_hash.clone(),
        key_slot: a.key.key_slot,
        kdf: k.kdf,
        hash: k.hash,
        iter_time_ms: k.iter_time_ms,
        iterations: k.iterations,
        memory_kib: k.memory_kib,
        parallel: k.parallel,
    })
}

/// `--key-size` in bits, as bytes.
fn key_bytes(bits: Option<usize>) -> Result<Option<usize>> {
    match bits {
        Some(bits) => {
            ensure!(
                bits % 8 == 0,
                Usage,
                "--key-size {bits} is not a whole number of bytes"
            );
            Ok(Some(bits / 8))
        }
        None => Ok(None),
    }
}

/// The control socket: DEVICE if it is a path that exists, else the socket of the
/// `luks open` device named DEVICE.
fn control_socket(a: &Args) -> Result<PathBuf> {
    let p = Path::new(&a.device);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    check_name(&a.device)?;
    let sock = RunDir::new(a.run_dir.as_deref()).control(&a.device);
    ensure!(
        sock.exists(),
        NotFound,
        "{}: no such control socket, and no `luks open` device of that name in \
         LUKS2 ({})",
        a.device,
        sock.display()
    );
    Ok(sock)
}

/// cryptsetup's status line: "Progress: 42.1%, ETA 00:03, 512 MiB written, speed 1.2 GiB/s".
struct Status {
    show: bool,
    start: Instant,
    first: Option<u64>,
    drawn: bool,
}

impl Status {
    fn new(show: bool) -> Self {
        Status {
            show,
            start: Instant::now(),
            first: None,
            drawn: false,
        }
    }

    fn end(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}

impl Events for Status {
    fn warning(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn progress(&mut self, done: u64, total: u64) {
        let first = *self.first.get_or_insert(done);
        if !self.show {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        let written = done - first;
        let speed = written as f64 / secs;
        let eta = if speed > 0.0 {
            (total - done) as f64 / speed
        } else {
            0.0
        };
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        eprint!(
            "\rProgress: {pct:5.1}%, ETA {:02}:{:02}, {} MiB written, speed {:.1} MiB/s",
            eta as u64 / 60,
            eta as u64 % 60,
            written >> 20,
            speed / (1 << 20) as f64
        );
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }
}
