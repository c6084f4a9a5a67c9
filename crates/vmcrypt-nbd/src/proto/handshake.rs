//! The fixed-newstyle handshake as a server state machine, free of I/O.
//!
//! The caller sends [`greeting`], feeds the client's 4 flag bytes to
//! [`Handshake::client_flags`], then loops: read a 16-byte option header
//! ([`parse_option_header`]), read its payload (or drain it when it is longer than
//! [`MAX_OPTION_LEN`] and call [`Handshake::oversized_option`]), pass it to
//! [`Handshake::handle_option`] and act on the returned [`Step`]: send the bytes and go
//! on, close, or enter the transmission phase with the [`Negotiated`] settings.
//!
//! Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO (with INFO_EXPORT, NAME,
//! DESCRIPTION and BLOCK_SIZE), STRUCTURED_REPLY, LIST_META_CONTEXT and
//! SET_META_CONTEXT for `base:allocation`, and STARTTLS when the server has TLS
//! ([`Handshake::require_tls`]). Everything else (EXTENDED_HEADERS, unknown numbers) is
//! answered with `NBD_REP_ERR_UNSUP`.
//!
//! TLS follows the spec's FORCEDTLS mode: until STARTTLS every option but ABORT gets
//! `NBD_REP_ERR_TLS_REQD` and EXPORT_NAME closes the connection. After the ACK the I/O
//! layer runs the TLS handshake, calls [`Handshake::tls_started`] and goes on with the
//! options over TLS; a second STARTTLS gets `NBD_REP_ERR_INVALID`. Without TLS the
//! server is in NOTLS mode and STARTTLS gets `NBD_REP_ERR_UNSUP`.
use super::*;

/// What the handshake needs to know about one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
}

/// Settings agreed on for the transmission phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the chosen export in the list given to [`Handshake::new`].
    pub export: usize,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export (BLOCK_STATUS allowed).
    pub base_allocation: bool,
    /// The transmission flags sent to the client.
    pub flags: u16,
}

/// What the I/O layer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the bytes, then read the next option.
    Continue(Vec<u8>),
    /// Send the bytes (possibly none), then close the connection.
    Close(Vec<u8>),
    /// Send the bytes, then serve requests with these settings.
    Transmit(Vec<u8>, Negotiated),
    /// Send the bytes (the STARTTLS ACK), then run the TLS handshake as the server,
    /// call [`Handshake::tls_started`] and read the next option over TLS.
    StartTls(Vec<u8>),
}

/// The 18 bytes the server sends first: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Parse an option header: IHAVEOPT, option number, payload length.
pub fn parse_option_header(buf: &[u8; 16]) -> Result<(u32, u32), ProtocolError> {
    let mut r = Reader::new(buf);
    let magic = r.u64().unwrap_or_default();
    if magic != IHAVEOPT {
        return violation(format!(
            "option magic is {magic:#018x}, expected IHAVEOPT ({IHAVEOPT:#018x})"
        ));
    }
    Ok((r.u32().unwrap_or_default(), r.u32().unwrap_or_default()))
}

/// Encode one option reply.
pub fn option_reply(opt: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&reply_type.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Transmission flags for an export.
pub fn transmission_flags(export: &ExportInfo, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
    // Every connection shares the one Send+Sync node and FLUSH flushes the whole node,
    // so flushes are visible across connections.
    f |= FLAG_CAN_MULTI_CONN;
    if export.read_only {
        f |= FLAG_READ_ONLY;
    } else {
        // A fast zero the node cannot do cheaply fails with ENOTSUP (see server::ops).
        f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured {
        // We never fragment a read, so DF is always honoured.
        f |= FLAG_SEND_DF;
    }
    f
}

/// The server side of one connection's handshake.
pub struct Handshake {
    exports: Vec<ExportInfo>,
    fixed: bool,
    no_zeroes: bool,
    structured: bool,
    /// Export name for which `base:allocation` was selected by SET_META_CONTEXT.
    meta_for: Option<String>,
    /// TLS must be started before anything else (FORCEDTLS).
    tls_required: bool,
    /// STARTTLS was acknowledged.
    tls_active: bool,
}

/// The meta context queries of LIST/SET_META_CONTEXT: export name and query strings.
struct MetaRequest<'a> {
    export: &'a [u8],
    queries: Vec<&'a [u8]>,
}

impl Handshake {
    pub fn new(exports: Vec<ExportInfo>) -> Self {
        Handshake {
            exports,
            fixed: false,
            no_zeroes: false,
            structured: false,
            meta_for: None,
            tls_required: false,
            tls_active: false,
        }
    }

    /// Demand TLS (the server has credentials): FORCEDTLS mode, see the module doc.
    pub fn require_tls(mut self, yes: bool) -> Self {
        self.tls_required = yes;
        self
    }

    /// The TLS handshake after STARTTLS succeeded. Nothing negotiated in clear text is
    /// kept (in FORCEDTLS mode nothing could have been, but say so explicitly).
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.meta_for = None;
    }

    /// Whether options may be served now (TLS is not required or is running).
    fn tls_ok(&self) -> bool {
        !self.tls_required || self.tls_active
    }

    /// Check the client's 32-bit flags; unknown bits are a violation (the spec says the
    /// server MUST drop the connection).
    pub fn client_flags(&mut self, buf: &[u8; 4]) -> Result<(), ProtocolError> {
        let flags = u32::from_be_bytes(*buf);
        let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
        if flags & !known != 0 {
            return violation(format!("client sent unknown flags {flags:#010x}"));
        }
        self.fixed = flags & FLAG_C_FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// An option whose payload was longer than [`MAX_OPTION_LEN`] (already drained).
    pub fn oversized_option(&mut self, opt: u32) -> Step {
        if opt == OPT_EXPORT_NAME || !self.fixed {
            return Step::Close(Vec::new());
        }
        if !self.tls_ok() && opt != OPT_ABORT {
            return Step::Continue(option_reply(opt, REP_ERR_TLS_REQD, b"TLS required"));
        }
        Step::Continue(option_reply(
            opt,
            REP_ERR_TOO_BIG,
            b"option payload too large",
        ))
    }

    /// Handle one option with its whole payload.
    pub fn handle_option(&mut self, opt: u32, data: &[u8]) -> Step {
        if opt == OPT_EXPORT_NAME {
            // EXPORT_NAME cannot be refused with an error: without TLS, hang up.
            if !self.tls_ok() {
                return Step::Close(Vec::new());
            }
            return self.export_name(data);
        }
        if !self.fixed {
            // Without fixed newstyle only EXPORT_NAME exists and errors cannot be sent.
            return Step::Close(Vec::new());
        }
        if opt == OPT_STARTTLS {
            return self.starttls(data);
        }
        if !self.tls_ok() && opt != OPT_ABORT {
            return Step::Continue(option_reply(
                opt,
                REP_ERR_TLS_REQD,
                b"this server requires TLS: send NBD_OPT_STARTTLS first",
            ));
        }
        match opt {
            OPT_ABORT => Step::Close(option_reply(opt, REP_ACK, &[])),
            OPT_LIST => self.list(data),
            OPT_INFO | OPT_GO => self.info_go(opt, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return invalid(opt, "STRUCTURED_REPLY takes no data");
                }
                self.structured = true;
                Step::Continue(option_reply(opt, REP_ACK, &[]))
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(opt, data),
            _ => Step::Continue(option_reply(
                opt,
                REP_ERR_UNSUP,
                format!("option {opt} is not supported").as_bytes(),
            )),
        }
    }

    fn starttls(&mut self, data: &[u8]) -> Step {
        if !self.tls_required {
            return Step::Continue(option_reply(
                OPT_STARTTLS,
                REP_ERR_UNSUP,
                b"TLS is not configured on this server",
            ));
        }
        if self.tls_active {
            return invalid(OPT_STARTTLS, "TLS is already running");
        }
        if !data.is_empty() {
            return invalid(OPT_STARTTLS, "STARTTLS takes no data");
        }
        Step::StartTls(option_reply(OPT_STARTTLS, REP_ACK, &[]))
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.exports.iter().position(|e| e.name.as_bytes() == name)
    }

    fn negotiated(&self, index: usize) -> Negotiated {
        let export = &self.exports[index];
        Negotiated {
            export: index,
            structured: self.structured,
            base_allocation: self.structured
                && self.meta_for.as_deref() == Some(export.name.as_str()),
            flags: transmission_flags(export, self.structured),
        }
    }

    fn export_name(&mut self, data: &[u8]) -> Step {
        let Some(index) = self.find(data) else {
            return Step::Close(Vec::new());
        };
        let n = self.negotiated(index);
        let mut out = Vec::with_capacity(134);
        out.extend_from_slice(&self.exports[index].size.to_be_bytes());
        out.extend_from_slice(&n.flags.to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        Step::Transmit(out, n)
    }

    fn list(&self, data: &[u8]) -> Step {
        if !data.is_empty() {
            return invalid(OPT_LIST, "LIST takes no data");
        }
        let mut out = Vec::new();
        for e in &self.exports {
            let mut d = Vec::new();
            d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
            d.extend_from_slice(e.name.as_bytes());
            d.extend_from_slice(e.description.as_bytes());
            out.extend(option_reply(OPT_LIST, REP_SERVER, &d));
        }
        out.extend(option_reply(OPT_LIST, REP_ACK, &[]));
        Step::Continue(out)
    }

    fn info_go(&mut self, opt: u32, data: &[u8]) -> Step {
        let mut r = Reader::new(data);
        let parsed = (|| {
            let name = r.string32()?;
            let count = r.u16()? as usize;
            let mut infos = Vec::with_capacity(count.min(16));
            for _ in 0..count {
                infos.push(r.u16()?);
            }
            Some((name, infos))
        })();
        let Some((name, infos)) = parsed.filter(|_| r.remaining() == 0) else {
            return invalid(opt, "malformed INFO/GO request");
        };
        if name.len() > MAX_STRING {
            return invalid(opt, "export name longer than 4096 bytes");
        }
        let Some(index) = self.find(name) else {
            let msg = format!("no export named '{}'", String::from_utf8_lossy(name));
            return Step::Continue(option_reply(opt, REP_ERR_UNKNOWN, msg.as_bytes()));
        };
        let n = self.negotiated(index);
        let e = &self.exports[index];
        let mut out = Vec::new();
        let mut info = |payload: Vec<u8>| out.extend(option_reply(opt, REP_INFO, &payload));
        info(info_export(e.size, n.flags));
        if infos.contains(&INFO_NAME) {
            info(info_string(INFO_NAME, &e.name));
        }
        if infos.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
            info(info_string(INFO_DESCRIPTION, &e.description));
        }
        info(info_block_size(MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD));
        out.extend(option_reply(opt, REP_ACK, &[]));
        if opt == OPT_GO {
            Step::Transmit(out, n)
        } else {
            Step::Continue(out)
        }
    }

    fn meta_context(&mut self, opt: u32, data: &[u8]) -> Step {
        if !self.structured {
            return invalid(opt, "structured replies must be negotiated first");
        }
        let Some(req) = parse_meta_request(data) else {
            return invalid(opt, "malformed meta context request");
        };
        if self.find(req.export).is_none() {
            let msg = format!("no export named '{}'", String::from_utf8_lossy(req.export));
            return Step::Continue(option_reply(opt, REP_ERR_UNKNOWN, msg.as_bytes()));
        }
        let listing = opt == OPT_LIST_META_CONTEXT;
        let selected = if req.queries.is_empty() {
            listing
        } else {
            req.queries
                .iter()
                .any(|q| *q == BASE_ALLOCATION.as_bytes() || (listing && *q == b"base:".as_slice()))
        };
        if !listing {
            // SET replaces the previous selection.
            self.meta_for = selected.then(|| String::from_utf8_lossy(req.export).into_owned());
        }
        let mut out = Vec::new();
        if selected {
            let id = if listing { 0 } else { BASE_ALLOCATION_ID };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            out.extend(option_reply(opt, REP_META_CONTEXT, &d));
        }
        out.extend(option_reply(opt, REP_ACK, &[]));
        Step::Continue(out)
    }
}

fn invalid(opt: u32, msg: &str) -> Step {
    Step::Continue(option_reply(opt, REP_ERR_INVALID, msg.as_bytes()))
}

fn parse_meta_request(data: &[u8]) -> Option<MetaRequest<'_>> {
    let mut r = Reader::new(data);
    let export = r.string32()?;
    let count = r.u32()? as usize;
    // Each query needs at least its 4-byte length, so a huge count cannot allocate.
    if count > r.remaining() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let q = r.string32()?;
        if q.len() > MAX_STRING || std::str::from_utf8(q).is_err() {
            return None;
        }
        queries.push(q);
    }
    (r.remaining() == 0 && export.len() <= MAX_STRING).then_some(MetaRequest { export, queries })
}

fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d
}

fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut d = kind.to_be_bytes().to_vec();
    d.extend_from_slice(s.as_bytes());
    d
}

fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, preferred, max] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "handshake_tls_tests.rs"]
mod tls_tests;
