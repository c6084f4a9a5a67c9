//! One client connection: the handshake, then the transmission phase (see
//! [`super::transmit`]), then a flush of the export.
//!
//! A client that does not finish the handshake within the handshake timeout is
//! disconnected. A protocol violation or a socket error ends only this connection;
//! in-flight requests finish and the export is flushed before the socket closes. When
//! the server stops (the `stopping` watch turns true) no further request is read:
//! requests already read finish and are answered, then the connection closes the same
//! way.
//!
//! With TLS credentials the handshake demands NBD_OPT_STARTTLS; after its ACK the
//! socket is wrapped in a rustls server session and everything else (the remaining
//! options and the whole transmission phase) goes over it.
use super::budget::Inflight;
use super::transmit::transmit;
use super::{Export, TlsCreds};
use crate::proto::handshake::{ExportInfo, Handshake, Negotiated, Step, greeting};
use crate::proto::{MAX_OPTION_LEN, handshake};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// The limits every connection of a server runs under.
#[derive(Clone)]
pub(crate) struct Limits {
    /// Time a client has to finish the handshake.
    pub(crate) handshake: Duration,
    /// Disconnect a client that sends no request for this long.
    pub(crate) idle: Option<Duration>,
    /// The server-wide in-flight budget.
    pub(crate) inflight: Inflight,
}

/// The connection after the handshake: clear text or TLS.
enum Conn<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

/// Completes once the server is stopping (or gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve one connection until the client disconnects or misbehaves, or the server stops.
pub(crate) async fn serve<S>(
    stream: S,
    exports: Arc<[Export]>,
    tls: Option<TlsCreds>,
    peer: String,
    mut stopping: watch::Receiver<bool>,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let infos = exports.iter().map(Export::info).collect();
    let handshake = negotiate(stream, infos, tls.as_ref());
    let timed = async {
        tokio::time::timeout(limits.handshake, handshake)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            })
    };
    let outcome = tokio::select! {
        r = timed => r,
        () = stopped(&mut stopping) => {
            tracing::info!(%peer, "server stopping: handshake abandoned");
            return;
        }
    };
    let (conn, negotiated) = match outcome {
        Ok(Some(n)) => n,
        Ok(None) => {
            tracing::info!(%peer, "client left during the handshake");
            return;
        }
        Err(e) => {
            tracing::info!(%peer, "handshake ended: {e}");
            return;
        }
    };
    let export = &exports[negotiated.export];
    tracing::info!(
        %peer,
        export = %export.name,
        structured = negotiated.structured,
        tls = matches!(conn, Conn::Tls(_)),
        block_status = negotiated.base_allocation,
        "client connected"
    );
    let node = export.node.clone();
    let result = match conn {
        Conn::Plain(s) => transmit(s, export, negotiated, stopping, &limits).await,
        Conn::Tls(s) => transmit(s, export, negotiated, stopping, &limits).await,
    };
    if let Err(e) = result {
        tracing::info!(%peer, "connection closed: {e}");
    }
    match tokio::task::spawn_blocking(move || node.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%peer, "flush after disconnect failed: {}", e.display_chain()),
        Err(e) => tracing::warn!(%peer, "flush task failed: {e}"),
    }
    tracing::info!(%peer, export = %export.name, "client disconnected");
}

pub(crate) fn violation(e: crate::proto::ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How an option loop ended.
enum Outcome {
    /// The client aborted or chose no export.
    Closed,
    Transmit(Negotiated),
    /// STARTTLS was acknowledged: upgrade the socket.
    StartTls,
}

/// Run the handshake (with the TLS upgrade when `tls` is set); `None` when the client
/// aborted or chose no export.
async fn negotiate<S>(
    mut s: S,
    infos: Vec<ExportInfo>,
    tls: Option<&TlsCreds>,
) -> io::Result<Option<(Conn<S>, Negotiated)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Handshake::new(infos).require_tls(tls.is_some());
    s.write_all(&greeting()).await?;
    s.flush().await?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await?;
    hs.client_flags(&flags).map_err(violation)?;
    match options(&mut s, &mut hs).await? {
        Outcome::Closed => Ok(None),
        Outcome::Transmit(n) => Ok(Some((Conn::Plain(s), n))),
        Outcome::StartTls => {
            let Some(creds) = tls else {
                return Err(io::Error::other("STARTTLS acknowledged without TLS"));
            };
            let mut t = creds.acceptor().accept(s).await?;
            hs.tls_started();
            tracing::debug!("TLS session established");
            match options(&mut t, &mut hs).await? {
                Outcome::Closed => Ok(None),
                Outcome::Transmit(n) => Ok(Some((Conn::Tls(Box::new(t)), n))),
                Outcome::StartTls => Err(io::Error::other("STARTTLS acknowledged twice")),
            }
        }
    }
}

/// Read options and answer them until the handshake leaves the option phase.
async fn options<S>(s: &mut S, hs: &mut Handshake) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut header = [0u8; 16];
        s.read_exact(&mut header).await?;
        let (opt, len) = handshake::parse_option_header(&header).map_err(violation)?;
        tracing::debug!(opt, len, "option");
        let step = if len > MAX_OPTION_LEN {
            let drained =
                tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink())
                    .await?;
            if drained < u64::from(len) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            hs.oversized_option(opt)
        } else {
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).await?;
            hs.handle_option(opt, &data)
        };
        match step {
            Step::Continue(bytes) => s.write_all(&bytes).await?,
            Step::Close(bytes) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::Closed);
            }
            Step::Transmit(bytes, n) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::Transmit(n));
            }
            Step::StartTls(bytes) => {
                s.write_all(&bytes).await?;
                s.flush().await?;
                return Ok(Outcome::StartTls);
            }
        }
        s.flush().await?;
    }
}
