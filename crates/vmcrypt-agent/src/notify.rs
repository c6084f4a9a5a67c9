//! systemd's readiness protocol without libsystemd: one datagram such as `READY=1` to
//! the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! Without the variable (not started by systemd as `Type=notify`) it does nothing.
use std::os::unix::net::{SocketAddr, UnixDatagram};
use vmcrypt_error::{Error, Result};

/// Send `state` (e.g. "READY=1\nSTATUS=...") if systemd asked for it.
pub fn notify(state: &str) -> Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state),
        None => Ok(()),
    }
}

/// Send `state` to the notification socket `path`.
pub fn notify_to(path: &str, state: &str) -> Result<()> {
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    }
    .map_err(|e| Error::io(e, format!("NOTIFY_SOCKET '{path}'")))?;
    let sock = UnixDatagram::unbound().map_err(|e| Error::io(e, "creating a datagram socket"))?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(|e| Error::io(e, format!("notifying systemd at '{path}'")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_a_datagram_to_the_socket() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
