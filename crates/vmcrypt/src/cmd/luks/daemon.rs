//! The daemon behind `vmcrypt luks open`: a hidden `luks open-daemon` command that the
//! open command starts with the passphrase on its stdin (a pipe) and a status pipe on
//! its stdout. It leaves the terminal's session, claims NAME in the run directory,
//! unlocks the device, listens on NAME.sock, publishes its state, says "ok" and serves
//! until SIGTERM (`luks close`). An image in LUKS2 reencryption state also gets
//! NAME.ctl, the control socket of `vmcrypt luks reencrypt --online NAME`; any failure before that is reported as "err MESSAGE"
//! and its exit status, which the open command passes on.
use crate::cmd::common::LimitOpts;
use crate::cmd::serve::shutdown_signal;
use crate::passphrase::read_key_file;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use vmcrypt_block::jobs::NoEvents;
use vmcrypt_block::jobs::image_arg::{Access, Env, ImageArg};
use vmcrypt_block::jobs::luks::Target;
use vmcrypt_block::jobs::luks::active::{self, ActiveInfo, Claim, RunDir};
use vmcrypt_block::jobs::luks::online::Control;
use vmcrypt_block::jobs::luks::open::{DeviceInfo, OpenRequest, Opened, open};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, ErrorKind, Result};
use vmcrypt_nbd::server::Listener;
use vmcrypt_nbd::{Export, Server};

/// Flags of the hidden `luks open-daemon` (set by `luks open`, never by users).
#[derive(clap::Args, Debug)]
pub struct Args {
    device: String,
    name: String,
    #[arg(long = "run-dir")]
    run_dir: String,
    #[arg(long = "header")]
    header: Option<String>,
    #[arg(long = "key-slot")]
    key_slot: Option<u32>,
    #[arg(long = "readonly")]
    readonly: bool,
    /// DEVICE is an image spec (keyval or `json:`) whose key is the secret `key`: any
    /// image the other commands open (e.g. qcow2 with LUKS encryption), for the agent.
    #[arg(long = "image-opts")]
    image_opts: bool,
    /// With --image-opts: stdin holds this many keys (framed), the secrets `key`,
    /// `key1`, `key2`, ... (one per encrypted layer of a backing chain).
    #[arg(long = "keys", default_value_t = 1, requires = "image_opts")]
    keys: usize,
    /// Serve on this socket path instead of RUN_DIR/NAME.sock (recorded in the state).
    #[arg(long = "socket", value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    #[command(flatten)]
    limits: LimitOpts,
}

/// Start the daemon with `args`, give it `pass`, and wait until it serves or fails;
/// returns the exit status for `luks open`.
pub fn spawn(args: &[String], pass: &SecretBytes) -> Result<u8> {
    let exe = std::env::current_exe().map_err(|e| Error::io(e, "finding the vmcrypt binary"))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(e, "starting the vmcrypt daemon"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A daemon that failed early has closed its end; its status line says why.
        let _ = stdin.write_all(pass.as_bytes());
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line == "ok\n" {
        return Ok(0);
    }
    let status = child
        .wait()
        .map_err(|e| Error::io(e, "waiting for the vmcrypt daemon"))?;
    let msg = line
        .strip_prefix("err\t")
        .map(str::trim_end)
        .unwrap_or("the daemon exited without saying why");
    eprintln!("vmcrypt: {msg}");
    Ok(match status.code() {
        Some(c) if c != 0 => c as u8,
        _ => 6,
    })
}

/// The daemon itself.
pub fn run(a: &Args) -> Result<u8> {
    // Out of the terminal's session: no SIGHUP or SIGINT from it.
    let _ = rustix::process::setsid();
    let _ = std::env::set_current_dir("/");
    let mut status = std::io::stdout();
    let dir = RunDir::new(Some(&a.run_dir));
    let result = active::claim_at(&dir, &a.name, a.socket.as_deref()).and_then(|mut claim| {
        let served = serve(a, &mut claim, &mut status);
        let released = claim.release();
        served.and(released)
    });
    if let Err(e) = &result {
        let msg = e.display_chain().replace('\n', " ");
        let _ = writeln!(status, "err\t{msg}");
    }
    result.map(|()| 0)
}

/// The secret id the key has in an `--image-opts` spec (`key1`, `key2`, ... for the
/// keys after it).
pub const IMAGE_KEY_ID: &str = "key";

/// The secret id of key number `i` of an `--image-opts` daemon.
pub fn image_key_id(i: usize) -> String {
    match i {
        0 => IMAGE_KEY_ID.to_string(),
        _ => format!("{IMAGE_KEY_ID}{i}"),
    }
}

fn serve(a: &Args, claim: &mut Claim, status: &mut std::io::Stdout) -> Result<()> {
    // The passphrase lives only while the device is opened.
    let pass = read_key_file("-")?;
    let opened = if a.image_opts {
        open_image(a, pass)?
    } else {
        let req = OpenRequest {
            target: Target {
                device: a.device.clone(),
                header: a.header.clone(),
                limits: a.limits.limits(),
            },
            read_only: a.readonly,
            key_slot: a.key_slot,
        };
        let opened = open(&req, pass.as_bytes())?;
        drop(pass);
        opened
    };
    init_logging(claim.log_file()?);
    let info = opened.info;
    let control = Arc::new(Control::new(&[(String::new(), opened.node.clone())]));
    if control.has_luks() {
        control.clone().listen(&claim.control())?;
    }
    let server = Server::new(vec![Export {
        name: String::new(),
        node: opened.node,
        read_only: info.read_only,
        description: info.device.clone(),
    }])?
    .persistent(true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let sock = claim.socket();
        let listener = Listener::unix(&sock)?;
        active::protect_socket(&sock)?;
        claim.publish(&ActiveInfo {
            name: a.name.clone(),
            pid: std::process::id(),
            socket: sock.display().to_string(),
            key_location: key_location(),
            device: info,
        })?;
        writeln!(status, "ok")
            .and_then(|()| status.flush())
            .map_err(|e| Error::io(e, "telling `luks open` the device is ready"))?;
        tracing::info!(name = %a.name, socket = %sock.display(), "serving");
        server.serve(listener, shutdown_signal()).await
    })?;
    // A reencryption in progress stops between hotzones; --online NAME resumes it.
    control.pause_all();
    Ok(())
}

/// Open the image spec `a.device` with the key as secret [`IMAGE_KEY_ID`]; its status
/// names the format, the size, and the key slot of the top image's LUKS header.
fn open_image(a: &Args, pass: SecretBytes) -> Result<Opened> {
    let keys = match a.keys {
        1 => vec![pass],
        n => active::unframe_keys(pass.as_bytes(), n)?,
    };
    let mut env = Env::new(Vec::new(), a.limits.limits());
    for (i, k) in keys.into_iter().enumerate() {
        env = env.with_secret(&image_key_id(i), k)?;
    }
    let arg = ImageArg {
        name: a.device.clone(),
        format: None,
        // A `json:` spec is a filename to the image argument, keyval strings are options.
        image_opts: !a.device.starts_with("json:"),
        force_share: false,
    };
    let access = Access {
        read_only: a.readonly,
        metadata_only: false,
    };
    let node = arg.open(&env, access, &mut NoEvents)?;
    let slot = node.as_introspect().and_then(|i| i.key_slot());
    let driver = node.driver_name();
    let info = DeviceInfo {
        // "qcow2+luks" when the image's own LUKS header reported the slot.
        luks_type: match slot {
            Some(_) => format!("{driver}+luks"),
            None => driver.to_string(),
        },
        key_slot: slot.unwrap_or(0),
        device: a.device.clone(),
        sector_size: 512,
        size_sectors: node.size() / 512,
        read_only: a.readonly,
        ..DeviceInfo::default()
    };
    Ok(Opened { node, info })
}

/// Where the volume key lives, for `status`.
fn key_location() -> String {
    let locked = crate::hardening::STATE
        .get()
        .is_some_and(|h| h.memory_locked);
    let how = if locked { "locked" } else { "not locked" };
    format!("daemon memory ({how})")
}

/// Logs go to the name's log file in the run directory.
fn init_logging(file: std::fs::File) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("VMCRYPT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}
