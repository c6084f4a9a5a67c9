//! The control channel of online reencryption: a Unix socket the serving process
//! (`vmcrypt serve --control PATH`) listens on, one JSON request and one JSON reply
//! per connection. Requests: `{"cmd":"start"|"pause"|"status","export":NAME,
//! "hotzone":BYTES?}`; replies: `{"ok":true,"state":..,"done":..,"total":..,
//! "hotzones":..,"hotzone_max_us":..,"request_max_us":..}` or `{"ok":false,
//! "error":MESSAGE}`. The socket is created mode 0600 (the caller's own processes
//! only): whoever reaches it can start and pause the run, not read keys or data.
use crate::driver::BlockDriver;
use crate::drivers::luks::v2::reencrypt::online::{Online, OnlineStatus, RunState};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vmcrypt_error::{Error, ErrorKind, Result, bail};

/// The reencryption a node (or one of its children) serves through.
pub fn find(node: &Arc<dyn BlockDriver>) -> Option<Arc<Online>> {
    node.as_reencryption()
        .or_else(|| node.children().iter().find_map(|c| find(&c.node)))
}

/// Exports (by name) whose image is in reencryption state.
pub struct Control {
    exports: Vec<(String, Arc<Online>)>,
}

impl Control {
    /// From `(export name, node)` pairs; nodes without a reencryption are left out.
    pub fn new(nodes: &[(String, Arc<dyn BlockDriver>)]) -> Self {
        Control {
            exports: nodes
                .iter()
                .filter_map(|(n, node)| find(node).map(|o| (n.clone(), o)))
                .collect(),
        }
    }

    /// Whether any export has a reencryption.
    pub fn active(&self) -> bool {
        !self.exports.is_empty()
    }

    /// Pause every run and wait for it to stop between hotzones (shutdown).
    pub fn pause_all(&self) {
        for (_, o) in &self.exports {
            o.pause();
        }
        for (_, o) in &self.exports {
            o.wait_stopped();
        }
    }

    /// Answer one request.
    pub fn handle(&self, request: &str) -> Value {
        match self.try_handle(request) {
            Ok(st) => status_json(&st),
            Err(e) => json!({"ok": false, "error": e.display_chain()}),
        }
    }

    fn try_handle(&self, request: &str) -> Result<OnlineStatus> {
        let req: Value = serde_json::from_str(request)
            .map_err(|e| Error::usage(format!("control request is not JSON: {e}")))?;
        let name = req["export"].as_str().unwrap_or("");
        let Some((_, o)) = self.exports.iter().find(|(n, _)| n == name) else {
            bail!(
                NotFound,
                "export \"{name}\" has no LUKS2 reencryption in progress"
            );
        };
        match req["cmd"].as_str() {
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
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            return;
        }
        let reply = self.handle(line.trim());
        let _ = writeln!(&conn, "{reply}");
    }
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
    });
    if let RunState::Failed(why) = &st.state {
        v["error"] = json!(why);
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
}

/// Send `cmd` for `export` to the control socket at `path`.
pub fn request(path: &Path, cmd: &str, export: &str, hotzone: Option<u64>) -> Result<RemoteStatus> {
    let conn = UnixStream::connect(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "control socket {} (is vmcrypt serve running with --control?): {e}",
                path.display()
            ),
        )
    })?;
    let mut req = json!({"cmd": cmd, "export": export});
    if let Some(h) = hotzone {
        req["hotzone"] = json!(h);
    }
    writeln!(&conn, "{req}").map_err(|e| Error::new(ErrorKind::Io, format!("control: {e}")))?;
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
    })
}
