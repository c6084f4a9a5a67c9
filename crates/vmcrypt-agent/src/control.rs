//! The control socket: a Unix stream socket (mode 0600) where each connection sends one
//! JSON request line (`{"cmd":"status"}`, `{"cmd":"unlock","vm":"web"}`, `lock`,
//! `reload`, `rescan`) and reads one JSON reply line (`{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`). [`serve`] runs the listener on a thread and hands each
//! request to the agent's loop, except `status`, which the connection's thread answers
//! itself (so it never waits behind an unlock); [`request`] is the client `vmcrypt
//! agent` uses.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;
use vmcrypt_error::{Error, Result, bail};

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Unlock { vm: String },
    Lock { vm: String },
    Reload,
    Rescan,
}

/// A request with the way back to its connection.
pub type Call = (Request, Sender<Value>);

/// How a connection's thread answers `status` by itself.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Bind `path` (replacing a socket nobody listens on) and pass requests to `tx` from a
/// thread; `status` is answered by `status`.
pub fn serve(path: &Path, tx: Sender<crate::run::Event>, status: StatusFn) -> Result<()> {
    if UnixStream::connect(path).is_ok() {
        bail!(Busy, "another agent listens on '{}'", path.display());
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(e, format!("creating '{}'", dir.display())))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(e, format!("binding '{}'", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(e, format!("protecting '{}'", path.display())))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            let status = status.clone();
            std::thread::spawn(move || handle(conn, &tx, &status));
        }
    });
    Ok(())
}

fn handle(conn: UnixStream, tx: &Sender<crate::run::Event>, status: &StatusFn) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    let reply = match reader.read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status) => status(),
            Ok(req) => {
                let (rtx, rrx) = channel();
                if tx.send(crate::run::Event::Call((req, rtx))).is_err() {
                    error_reply("the agent is shutting down")
                } else {
                    rrx.recv()
                        .unwrap_or_else(|_| error_reply("the agent dropped the request"))
                }
            }
            Err(e) => error_reply(&format!("bad request: {e}")),
        },
        Err(e) => error_reply(&format!("reading the request: {e}")),
    };
    let mut w = &conn;
    let _ = writeln!(w, "{reply}");
}

/// `{"ok":false,"error":MSG}`.
pub fn error_reply(msg: &str) -> Value {
    serde_json::json!({ "ok": false, "error": msg })
}

/// Send `req` to the agent at `path` and return its reply (an error reply becomes an
/// error with the agent's message).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Value> {
    let conn = UnixStream::connect(path).map_err(|e| {
        Error::io(
            e,
            format!("connecting to the agent at '{}'", path.display()),
        )
    })?;
    let _ = conn.set_read_timeout(Some(timeout));
    let mut w = &conn;
    let text = serde_json::to_string(req).map_err(|e| Error::internal(e.to_string()))?;
    writeln!(w, "{text}").map_err(|e| Error::io(e, "sending the request"))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| Error::io(e, "reading the agent's reply"))?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Error::corrupt(format!("the agent's reply is not JSON: {e}")))?;
    if v["ok"] != Value::Bool(true) {
        let msg = v["error"]
            .as_str()
            .unwrap_or("the agent refused the request");
        let kind = match v["kind"].as_str() {
            Some("not-found") => vmcrypt_error::ErrorKind::NotFound,
            Some("wrong-key") => vmcrypt_error::ErrorKind::WrongKey,
            Some("usage") => vmcrypt_error::ErrorKind::Usage,
            Some("busy") => vmcrypt_error::ErrorKind::Busy,
            _ => vmcrypt_error::ErrorKind::Io,
        };
        return Err(Error::new(kind, msg.to_string()));
    }
    Ok(v)
}
