//! The control channel of online reencryption: a Unix socket the serving process
//! (`vmcrypt serve --control PATH`) listens on, one JSON request and one JSON reply
//! per connection. Requests: `{"cmd":"start"|"pause"|"status","export":NAME,
//! "hotzone":BYTES?}`, and `{"cmd":"init","export":NAME,"params":{..},
//! "passphrase_len":N}` followed by the N passphrase bytes, which puts an image that
//! is not in reencryption state into it while it is served; replies: `{"ok":true,"state":..,"done":..,"total":..,
//! "hotzones":..,"hotzone_max_us":..,"request_max_us":..,"old_key_held":..,"new":{..},
//! "header":{..},"header_error":MESSAGE?}` or `{"ok":false,"error":MESSAGE}`, where
//! `header` is the `info` block of the export's LUKS node as it serves it now (after a
//! finished run, the header the finish wrote) and `header_error` says why that view
//! could not follow the header on the device. The socket is created mode 0600 (the caller's own processes
//! only): whoever reaches it can start and pause the run, not read keys or data.
use super::reencrypt::{ReencryptRequest, init_params};
use super::slots::NewKeyslot;
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::reencrypt::init::NewEncryption;
use crate::drivers::luks::v2::reencrypt::online::{
    Online, OnlineStatus, RunState, TargetEncryption,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, ErrorKind, Result, bail, ensure};

/// Longest request line and passphrase a control connection may send.
const MAX_LINE: usize = 64 << 10;
const MAX_PASSPHRASE: usize = 8 << 20;

/// The reencryption a node (or one of its children) serves through.
pub fn find(node: &Arc<dyn BlockDriver>) -> Option<Arc<Online>> {
    node.as_reencryption()
        .or_else(|| node.children().iter().find_map(|c| find(&c.node)))
}

/// The LUKS node of an export's graph (the topmost one), which can start a reencryption.
fn find_luks(node: &Arc<dyn BlockDriver>) -> Option<Arc<dyn BlockDriver>> {
    if node.driver_name() == "luks" {
        return Some(node.clone());
    }
    node.children().iter().find_map(|c| find_luks(&c.node))
}

/// How an `init` request describes the new encryption (the options of `vmcrypt luks
/// reencrypt` that start a run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    pub cipher: Option<String>,
    pub key_size: Option<usize>,
    pub sector_size: Option<u32>,
    pub resilience: Option<String>,
    pub resilience_hash: Option<String>,
    pub key_slot: Option<u32>,
    pub kdf: Option<String>,
    pub hash: Option<String>,
    pub iter_time_ms: Option<u32>,
    pub iterations: Option<u32>,
    pub memory_kib: Option<u32>,
    pub parallel: Option<u32>,
}

impl InitRequest {
    fn to_request(&self) -> ReencryptRequest {
        ReencryptRequest {
            new: NewEncryption {
                cipher: self.cipher.clone(),
                key_size: self.key_size,
                sector_size: self.sector_size,
            },
            resilience: self.resilience.clone(),
            resilience_hash: self.resilience_hash.clone(),
            key_slot: self.key_slot,
            keyslot: NewKeyslot {
                kdf: self.kdf.clone(),
                hash: self.hash.clone(),
                iter_time_ms: self.iter_time_ms,
                iterations: self.iterations,
                memory_kib: self.memory_kib,
                parallel: self.parallel,
                in_place: false,
            },
            ..ReencryptRequest::default()
        }
    }
}

/// The exports (by name) of a serving process, whose reencryptions it drives.
pub struct Control {
    exports: Vec<(String, Arc<dyn BlockDriver>)>,
}

impl Control {
    /// From `(export name, node)` pairs.
    pub fn new(nodes: &[(String, Arc<dyn BlockDriver>)]) -> Self {
        Control {
            exports: nodes.to_vec(),
        }
    }

    /// Whether any export has a reencryption.
    pub fn active(&self) -> bool {
        self.exports.iter().any(|(_, n)| find(n).is_some())
    }

    /// Whether any export has a LUKS node (whose reencryption could be started).
    pub fn has_luks(&self) -> bool {
        self.exports.iter().any(|(_, n)| find_luks(n).is_some())
    }

    /// Pause every run and wait for it to stop between hotzones (shutdown).
    pub fn pause_all(&self) {
        let runs: Vec<_> = self.exports.iter().filter_map(|(_, n)| find(n)).collect();
        for o in &runs {
            o.pause();
        }
        for o in &runs {
            o.wait_stopped();
        }
    }

    /// Answer one request (`passphrase`: the bytes that followed an `init` line).
    pub fn handle(&self, request: &str, passphrase: Option<&SecretBytes>) -> Value {
        match self.try_handle(request, passphrase) {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": e.display_chain()}),
        }
    }

    fn node(&self, name: &str) -> Result<&Arc<dyn BlockDriver>> {
        match self.exports.iter().find(|(n, _)| n == name) {
            Some((_, node)) => Ok(node),
            None => bail!(NotFound, "no export \"{name}\""),
        }
    }

    /// The reply to `request`: the run's status and the header the export serves.
    fn try_handle(&self, request: &str, passphrase: Option<&SecretBytes>) -> Result<Value> {
        let req: Value = serde_json::from_str(request)
            .map_err(|e| Error::usage(format!("control request is not JSON: {e}")))?;
        let name = req["export"].as_str().unwrap_or("");
        let node = self.node(name)?;
        let mut reply = status_json(&self.act(name, node, &req, passphrase)?);
        if let Some(luks) = find_luks(node)
            && let Some(h) = luks.as_introspect().and_then(|i| i.format_specific())
        {
            reply["header"] = h;
        }
        Ok(reply)
    }

    /// Carry out the request's command on the export `node`.
    fn act(
        &self,
        name: &str,
        node: &Arc<dyn BlockDriver>,
        req: &Value,
        passphrase: Option<&SecretBytes>,
    ) -> Result<OnlineStatus> {
        let cmd = req["cmd"].as_str();
        if cmd == Some("init") {
            return self.init(name, node, req, passphrase);
        }
        let Some(o) = find(node) else {
            if cmd == Some("status") && find_luks(node).is_some() {
                return Ok(OnlineStatus::none(node.size()));
            }
            bail!(
                NotFound,
                "export \"{name}\" has no LUKS2 reencryption in progress"
            );
        };
        match cmd {
            Some("start") => o.start(req["hotzone"].as_u64())?,
            Some("pause") => {
                o.pause();
                o.wait_stopped();
            }
            Some("status") => {}
            other => bail!(Usage, "unknown control command {other:?}"),
        }
        Ok(o.status())
    }

    /// Put the export's image in reencryption state (the run is started by `start`).
    fn init(
        &self,
        name: &str,
        node: &Arc<dyn BlockDriver>,
        req: &Value,
        passphrase: Option<&SecretBytes>,
    ) -> Result<OnlineStatus> {
        let Some(pass) = passphrase else {
            bail!(Usage, "init: no passphrase was sent");
        };
        let wire: InitRequest = serde_json::from_value(req["params"].clone())
            .map_err(|e| Error::usage(format!("init: bad parameters: {e}")))?;
        let r = wire.to_request();
        let p = init_params(&r)?;
        let Some(luks) = find_luks(node) else {
            bail!(
                Unsupported,
                "export \"{name}\" has no LUKS image to reencrypt"
            );
        };
        let o = match luks.start_reencryption(pass.as_bytes(), r.key_slot, &p) {
            Some(r) => r?,
            None => bail!(Unsupported, "export \"{name}\": this node cannot reencrypt"),
        };
        Ok(o.status())
    }

    /// Listen on `path` (a stale socket there is replaced) and answer requests on a
    /// thread of its own.
    pub fn listen(self: Arc<Self>, path: &Path) -> Result<()> {
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("control socket {}: {e}", path.display()),
            )
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::new(ErrorKind::Io, format!("control socket mode: {e}")))?;
        std::thread::Builder::new()
            .name("luks-reencrypt-control".into())
            .spawn(move || {
                for conn in l.incoming().flatten() {
                    let me = self.clone();
                    // A pause waits for the hotzone: answer each client on its own.
                    let _ = std::thread::Builder::new().spawn(move || me.answer(conn));
                }
            })
            .map_err(|e| Error::new(ErrorKind::Io, format!("control thread: {e}")))?;
        Ok(())
    }

    fn answer(&self, conn: UnixStream) {
        let reply = match read_request(&conn) {
            Ok((line, pass)) => self.handle(&line, pass.as_ref()),
            Err(e) => json!({"ok": false, "error": e.display_chain()}),
        };
        let _ = writeln!(&conn, "{reply}");
    }
}

/// One request line, and the passphrase that follows it when the line says
/// `"passphrase_len":N`. Read byte by byte up to the newline, so no passphrase byte
/// lands in a buffer that is not wiped.
fn read_request(mut conn: &UnixStream) -> Result<(String, Option<SecretBytes>)> {
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("control: {e}"));
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if conn.read(&mut b).map_err(io)? == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        ensure!(
            line.len() <= MAX_LINE,
            Usage,
            "control request line too long"
        );
    }
    let line = String::from_utf8(line).map_err(|_| Error::usage("control request is not UTF-8"))?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Error::usage(format!("control request is not JSON: {e}")))?;
    let Some(n) = v["passphrase_len"].as_u64() else {
        return Ok((line, None));
    };
    ensure!(
        n as usize <= MAX_PASSPHRASE,
        LimitExceeded,
        "control: passphrase of {n} bytes is too long"
    );
    let mut pass = SecretBytes::zeroed(n as usize);
    conn.read_exact(pass.as_mut()).map_err(io)?;
    Ok((line, Some(pass)))
}

fn status_json(st: &OnlineStatus) -> Value {
    let mut v = json!({
        "ok": true,
        "state": st.state.name(),
        "done": st.done,
        "total": st.total,
        "hotzones": st.hotzones,
        "hotzone_max_us": st.hotzone_max.as_micros() as u64,
        "request_max_us": st.request_max.as_micros() as u64,
        "old_key_held": st.old_key_held,
    });
    if let RunState::Failed(why) = &st.state {
        v["error"] = json!(why);
    }
    if let Some(why) = &st.header_error {
        v["header_error"] = json!(why);
    }
    if let Some(t) = &st.target {
        v["new"] = json!({
            "cipher": t.cipher,
            "key_bits": t.key_bits,
            "sector_size": t.sector_size,
            "key_slot": t.key_slot,
        });
    }
    v
}

/// A status as the client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatus {
    pub state: String,
    pub done: u64,
    pub total: u64,
    pub hotzones: u64,
    pub hotzone_max: Duration,
    pub request_max: Duration,
    /// Why the run failed (state "failed").
    pub error: Option<String>,
    /// The encryption the run moves the data to (`None` without a run).
    pub target: Option<TargetEncryption>,
    /// Whether the server still holds the old volume key (false once a finished run
    /// has handed the node over to the new one).
    pub old_key_held: bool,
    /// The `info` block of the LUKS header the export serves now (`None` from a
    /// server that does not say).
    pub header: Option<Value>,
    /// Why the server's view of the header could not follow the device's.
    pub header_error: Option<String>,
}

impl RemoteStatus {
    /// One line describing the header the export serves, e.g. "Header: LUKS2, cipher
    /// aes-xts-plain64, sector size 4096, key slots 1, requirements none." (key slots
    /// that are not passphrase slots name their type: "2 (reencrypt)").
    pub fn header_line(&self) -> Option<String> {
        let h = self.header.as_ref()?;
        let slots: Vec<String> = h["keyslots"]
            .as_array()?
            .iter()
            .map(|k| match k["type"].as_str() {
                Some("luks2") | None => k["id"].to_string(),
                Some(t) => format!("{} ({t})", k["id"]),
            })
            .collect();
        let reqs: Vec<&str> = h["requirements"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let or_none = |v: Vec<String>| match v.is_empty() {
            true => "none".to_string(),
            false => v.join(", "),
        };
        Some(format!(
            "Header: LUKS{}, cipher {}, sector size {}, key slots {}, requirements {}.",
            h["version"],
            h["cipher"].as_str().unwrap_or("?"),
            h["sector-size"],
            or_none(slots),
            or_none(reqs.iter().map(|r| r.to_string()).collect())
        ))
    }
}

/// Send `cmd` ("start", "pause", "status") for `export` to the control socket at
/// `path`, with a hotzone size for "start". With a `timeout`, give up when the
/// server has not taken the request or answered by then (`luks status` must not hang
/// on a stuck daemon); without, wait (a pause waits for the hotzone in flight).
pub fn request(
    path: &Path,
    cmd: &str,
    export: &str,
    hotzone: Option<u64>,
    timeout: Option<Duration>,
) -> Result<RemoteStatus> {
    let mut req = json!({"cmd": cmd, "export": export});
    if let Some(h) = hotzone {
        req["hotzone"] = json!(h);
    }
    exchange(path, &req, None, timeout)
}

/// Ask the server at `path` to put `export`'s image in reencryption state: a new
/// volume key sealed under `passphrase` (which must open the current one), as `init`
/// describes. The passphrase travels on the socket after the request line, never in it.
pub fn init(
    path: &Path,
    export: &str,
    init: &InitRequest,
    passphrase: &SecretBytes,
) -> Result<RemoteStatus> {
    let req = json!({
        "cmd": "init",
        "export": export,
        "params": init,
        "passphrase_len": passphrase.len(),
    });
    exchange(path, &req, Some(passphrase), None)
}

fn exchange(
    path: &Path,
    req: &Value,
    passphrase: Option<&SecretBytes>,
    timeout: Option<Duration>,
) -> Result<RemoteStatus> {
    let conn = UnixStream::connect(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "control socket {} (is vmcrypt serve running with --control?): {e}",
                path.display()
            ),
        )
    })?;
    conn.set_read_timeout(timeout)
        .and_then(|()| conn.set_write_timeout(timeout))
        .map_err(|e| Error::new(ErrorKind::Io, format!("control: {e}")))?;
    writeln!(&conn, "{req}").map_err(|e| Error::new(ErrorKind::Io, format!("control: {e}")))?;
    if let Some(p) = passphrase {
        (&conn)
            .write_all(p.as_bytes())
            .map_err(|e| Error::new(ErrorKind::Io, format!("control: {e}")))?;
    }
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| Error::new(ErrorKind::Io, format!("control: {e}")))?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Error::corrupt(format!("control reply is not JSON ({e}): {line}")))?;
    if v["ok"] != json!(true) {
        bail!(
            Usage,
            "{}",
            v["error"].as_str().unwrap_or("control request refused")
        );
    }
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(RemoteStatus {
        state: v["state"].as_str().unwrap_or("").to_string(),
        done: n("done"),
        total: n("total"),
        hotzones: n("hotzones"),
        hotzone_max: Duration::from_micros(n("hotzone_max_us")),
        request_max: Duration::from_micros(n("request_max_us")),
        error: v["error"].as_str().map(str::to_string),
        target: target_of(&v["new"]),
        old_key_held: v["old_key_held"] == json!(true),
        header: v.get("header").filter(|h| h.is_object()).cloned(),
        header_error: v["header_error"].as_str().map(str::to_string),
    })
}

fn target_of(v: &Value) -> Option<TargetEncryption> {
    Some(TargetEncryption {
        cipher: v["cipher"].as_str()?.to_string(),
        key_bits: u32::try_from(v["key_bits"].as_u64()?).ok()?,
        sector_size: u32::try_from(v["sector_size"].as_u64()?).ok()?,
        key_slot: v["key_slot"].as_u64().and_then(|s| u32::try_from(s).ok()),
    })
}
