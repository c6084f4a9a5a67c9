//! `vmcrypt serve`: export images over NBD, like qemu-nbd. Images are opened with the
//! same syntax as the other commands (`--object`, `--image-opts`, `-f`, `json:`); the
//! server itself lives in the `vmcrypt-nbd` crate. `--tls-creds DIR` demands TLS with
//! the certificate files qemu's `tls-creds-x509` object uses. SIGTERM or SIGINT stops
//! the server cleanly: no new clients, in-flight requests finish (for up to 5 s), every
//! export is flushed, exit status 0. Limits: `--shared N` clients at once (more wait
//! in the listen backlog until one leaves, as with qemu-nbd), `--max-inflight SIZE` bytes held by in-flight requests
//! server-wide, `--handshake-timeout` and `--idle-timeout` for stalled clients. The
//! server's threads run under SCHED_BATCH unless `--sched normal` (see
//! `vmcrypt_nbd::server::sched`). A LUKS2 image in reencryption state is served
//! through both encryptions; `--control PATH` lets `vmcrypt luks reencrypt --online
//! PATH` start, pause and follow the reencryption inside this process
//! (docs/luks-reencrypt.md).
use super::common::{Common, Ui};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_block::jobs::image_arg::Access;
use vmcrypt_block::jobs::luks::online::Control;
use vmcrypt_block::opts::parse_size;
use vmcrypt_error::{Error, ErrorKind, Result, bail, ensure};
use vmcrypt_nbd::server::{Listener, SchedPolicy};
use vmcrypt_nbd::{Export, Server, TlsCreds};

/// Flags of `vmcrypt serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Image format (probed when omitted)
    #[arg(short = 'f')]
    pub format: Option<String>,
    /// Serve IMAGE under export NAME (repeatable; instead of the positional image)
    #[arg(long = "export", value_name = "NAME=IMAGE")]
    pub exports: Vec<String>,
    /// Listen on this Unix socket
    #[arg(long = "socket", short = 'k', value_name = "PATH")]
    pub socket: Option<String>,
    /// Listen on this TCP address (default 127.0.0.1:10809)
    #[arg(long = "bind", value_name = "ADDR:PORT", conflicts_with = "socket")]
    pub bind: Option<String>,
    /// Open the images read-only and refuse writes
    #[arg(long = "read-only", short = 'r')]
    pub read_only: bool,
    /// Keep serving after the last client disconnects
    #[arg(long = "persistent", short = 't')]
    pub persistent: bool,
    /// Serve at most N clients at once; more wait to be accepted until one leaves, as
    /// with qemu-nbd (0: no limit)
    #[arg(long = "shared", short = 'e', value_name = "N", default_value_t = 0)]
    pub shared: usize,
    /// Require TLS with the x509 files in DIR (ca-cert.pem, server-cert.pem, server-key.pem)
    #[arg(long = "tls-creds", value_name = "DIR")]
    pub tls_creds: Option<String>,
    /// With --tls-creds: clients must present a certificate signed by DIR/ca-cert.pem
    #[arg(long = "tls-verify-peer", requires = "tls_creds")]
    pub tls_verify_peer: bool,
    /// Most bytes all in-flight requests hold together (payloads and unsent replies);
    /// past it the server stops reading requests until replies are sent
    #[arg(long = "max-inflight", value_name = "SIZE", default_value = "64M")]
    pub max_inflight: String,
    /// Seconds a client has to finish the handshake
    #[arg(long = "handshake-timeout", value_name = "SECS", default_value_t = 60)]
    pub handshake_timeout: u64,
    /// Disconnect a client that sends no request for SECS seconds (default: never)
    #[arg(long = "idle-timeout", value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// CPU scheduling policy of the server's threads: batch (SCHED_BATCH: a thread woken
    /// by a request does not preempt its client, so requests are answered in batches
    /// when the CPU is busy) or normal
    #[arg(long = "sched", value_name = "POLICY", default_value = "batch")]
    pub sched: String,
    /// Listen for online reencryption commands (`vmcrypt luks reencrypt --online PATH`)
    /// on this Unix socket
    #[arg(long = "control", value_name = "PATH")]
    pub control: Option<String>,
    /// Write the server's process id to PATH once it listens
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<String>,
    /// The image served as the default export ""
    pub image: Option<String>,
}

/// Default TCP address, NBD's registered port on the loopback interface.
const DEFAULT_BIND: &str = "127.0.0.1:10809";

pub fn run(args: Args) -> Result<u8> {
    let args = &args;
    init_logging();
    if let Some(h) = crate::hardening::STATE.get() {
        tracing::info!(
            memory_locked = h.memory_locked,
            not_dumpable = h.not_dumpable,
            "process hardening (keys kept out of swap and core dumps)"
        );
    }
    let pairs = export_args(args)?;
    let max_inflight = max_inflight(&args.max_inflight)?;
    let sched = SchedPolicy::parse(&args.sched)?;
    // Bad TLS files are reported before any keyslot is unlocked.
    let tls = match &args.tls_creds {
        Some(dir) => Some(TlsCreds::from_x509_dir(
            Path::new(dir),
            args.tls_verify_peer,
        )?),
        None => None,
    };
    let env = args.common.env();
    let access = Access {
        read_only: args.read_only,
        metadata_only: false,
    };
    let mut exports = Vec::with_capacity(pairs.len());
    for (name, image) in pairs {
        let arg = args.common.image(args.format.as_deref(), &image);
        let node = arg.open(&env, access, &mut Ui::new(&args.common))?;
        exports.push(Export {
            name,
            node,
            read_only: args.read_only,
            description: image,
        });
    }
    drop(env);
    let nodes: Vec<_> = exports
        .iter()
        .map(|e| (e.name.clone(), e.node.clone()))
        .collect();
    let control = Arc::new(Control::new(&nodes));
    drop(nodes);
    if let Some(path) = &args.control {
        control.clone().listen(Path::new(path))?;
    }
    let server = Server::new(exports)?
        .persistent(args.persistent)
        .shared(args.shared)
        .max_inflight(max_inflight)
        .handshake_timeout(Duration::from_secs(args.handshake_timeout))
        .idle_timeout(args.idle_timeout.map(Duration::from_secs))
        .tls(tls);
    // Before the runtime starts, so that its threads inherit the policy.
    if let Err(e) = sched.apply_to_current_thread() {
        tracing::warn!("{}", e.display_chain());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("starting the async runtime: {e}")))?;
    let served = runtime.block_on(serve(args, &server));
    // A reencryption in progress stops between hotzones; --resume-only continues it.
    control.pause_all();
    if let Some(path) = &args.control {
        let _ = std::fs::remove_file(path);
    }
    served?;
    Ok(0)
}

/// `(export name, image)` pairs from `--export` or the positional image.
fn export_args(args: &Args) -> Result<Vec<(String, String)>> {
    match (&args.image, args.exports.is_empty()) {
        (Some(_), false) => bail!(
            Usage,
            "give either an image or --export NAME=IMAGE, not both"
        ),
        (None, true) => bail!(
            Usage,
            "expecting an image to serve (or --export NAME=IMAGE)"
        ),
        (Some(image), true) => Ok(vec![(String::new(), image.clone())]),
        (None, false) => args
            .exports
            .iter()
            .map(|e| {
                let (name, image) = e.split_once('=').ok_or_else(|| {
                    Error::usage(format!("--export '{e}' must have the form NAME=IMAGE"))
                })?;
                ensure!(!image.is_empty(), Usage, "--export '{e}' names no image");
                Ok((name.to_string(), image.to_string()))
            })
            .collect(),
    }
}

/// `--max-inflight SIZE`: at least 1 byte and below 4 GiB.
fn max_inflight(spec: &str) -> Result<u32> {
    let n = parse_size(spec)?;
    ensure!(n > 0, Usage, "--max-inflight must be at least 1 byte");
    u32::try_from(n).map_err(|_| Error::usage(format!("--max-inflight '{spec}' is 4 GiB or more")))
}

fn bind_addr(spec: &str) -> Result<SocketAddr> {
    spec.to_socket_addrs()
        .map_err(|e| Error::usage(format!("--bind '{spec}' is not an ADDR:PORT: {e}")))?
        .next()
        .ok_or_else(|| Error::usage(format!("--bind '{spec}' resolves to no address")))
}

async fn serve(args: &Args, server: &Server) -> Result<()> {
    let listener = match &args.socket {
        Some(path) => Listener::unix(Path::new(path))?,
        None => Listener::tcp(bind_addr(args.bind.as_deref().unwrap_or(DEFAULT_BIND))?).await?,
    };
    if let Some(pid) = &args.pid_file {
        std::fs::write(pid, format!("{}\n", std::process::id()))
            .map_err(|e| Error::new(ErrorKind::Io, format!("writing pid file '{pid}': {e}")))?;
    }
    let result = server.serve(listener, shutdown_signal()).await;
    if let Some(pid) = &args.pid_file {
        let _ = std::fs::remove_file(pid);
    }
    result
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// Logs to stderr; `VMCRYPT_LOG` (or `RUST_LOG`) filters them, default `info`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("VMCRYPT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
