//! Turning away a client when the server already serves `--shared` clients.
//!
//! Rather than leaving it in the listen backlog with no word (where it waits for a slot
//! that idle clients may never free), the server greets it and answers each of its
//! options with `NBD_REP_ERR_SHUTDOWN` ("unwilling to continue negotiation") and a
//! message naming the limit, which clients such as qemu-nbd and nbdinfo print. It then
//! closes: at once for NBD_OPT_EXPORT_NAME (which has no error reply) and after the
//! ACK for NBD_OPT_ABORT. The whole exchange is bounded by the handshake timeout.
use crate::proto::handshake::{greeting, option_reply, parse_option_header};
use crate::proto::{MAX_OPTION_LEN, OPT_ABORT, OPT_EXPORT_NAME, REP_ACK, REP_ERR_SHUTDOWN};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most options answered before the connection is closed anyway.
const MAX_OPTIONS: usize = 16;

/// The error message a refused client gets.
pub(crate) fn message(clients: usize, shared: usize) -> String {
    format!("server busy: {clients} clients connected (--shared {shared})")
}

/// Refuse the client on `s` with `msg`, within `timeout`.
pub(crate) async fn refuse<S>(mut s: S, msg: String, timeout: Duration, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let r = tokio::time::timeout(timeout, exchange(&mut s, &msg)).await;
    match r {
        Ok(Ok(())) => tracing::info!(%peer, "{msg}: client refused"),
        Ok(Err(e)) => tracing::info!(%peer, "{msg}: refusing the client: {e}"),
        Err(_) => tracing::info!(%peer, "{msg}: refused client timed out"),
    }
    let _ = s.shutdown().await;
}

async fn exchange<S>(s: &mut S, msg: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&greeting()).await?;
    s.flush().await?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await?;
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; 16];
        s.read_exact(&mut header).await?;
        let (opt, len) = parse_option_header(&header)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let take = u64::from(len.min(MAX_OPTION_LEN));
        let drained = tokio::io::copy(&mut (&mut *s).take(take), &mut tokio::io::sink()).await?;
        if drained < take || len > MAX_OPTION_LEN || opt == OPT_EXPORT_NAME {
            return Ok(());
        }
        let reply = if opt == OPT_ABORT {
            option_reply(opt, REP_ACK, &[])
        } else {
            option_reply(opt, REP_ERR_SHUTDOWN, msg.as_bytes())
        };
        s.write_all(&reply).await?;
        s.flush().await?;
        if opt == OPT_ABORT {
            return Ok(());
        }
    }
    Ok(())
}
