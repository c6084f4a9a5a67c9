//! The transmission phase without I/O: parsing and validating the 28-byte request
//! header, and encoding simple replies and structured reply chunks.
//!
//! Validation turns a request into a [`Command`] or a [`Rejection`] (an error reply,
//! after draining a WRITE payload so the stream stays in step). Only what makes the
//! stream impossible to follow is a [`ProtocolError`]: a bad magic, or a WRITE payload
//! larger than [`MAX_PAYLOAD`].
use super::*;
use vmcrypt_block::Allocation;

/// Size of a request header.
pub const REQUEST_LEN: usize = 28;

/// A request header as sent by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Parse a header; only a wrong magic is an error here.
    pub fn decode(buf: &[u8; REQUEST_LEN]) -> Result<Request, ProtocolError> {
        let mut r = Reader::new(buf);
        let magic = r.u32().unwrap_or_default();
        if magic != REQUEST_MAGIC {
            return violation(format!(
                "request magic is {magic:#010x}, expected {REQUEST_MAGIC:#010x}"
            ));
        }
        Ok(Request {
            flags: r.u16().unwrap_or_default(),
            kind: r.u16().unwrap_or_default(),
            cookie: r.u64().unwrap_or_default(),
            offset: r.u64().unwrap_or_default(),
            length: r.u32().unwrap_or_default(),
        })
    }

    /// Encode a header (what a client sends; used by tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.length
        } else {
            0
        }
    }
}

/// A valid request, ready to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Disconnect,
    Flush,
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
        /// NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than zero slowly.
        fast: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        req_one: bool,
    },
}

/// A request refused with an error reply; `drain` payload bytes must be skipped first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub error: NbdError,
    pub message: String,
    pub drain: u32,
}

/// What validation needs to know about the connection.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// Command flags we understand at all.
const KNOWN_FLAGS: u16 =
    CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;

/// Check a request against the export; see the module doc for what is fatal.
pub fn validate(req: &Request, s: &Session) -> Result<Result<Command, Rejection>, ProtocolError> {
    let drain = req.payload_len();
    if req.kind == CMD_WRITE && req.length > MAX_PAYLOAD {
        return violation(format!(
            "WRITE of {} bytes exceeds the {MAX_PAYLOAD}-byte maximum",
            req.length
        ));
    }
    let reject = |error, message: String| {
        Ok(Err(Rejection {
            error,
            message,
            drain,
        }))
    };
    if req.flags & !KNOWN_FLAGS != 0 {
        return reject(
            NbdError::Inval,
            format!("unknown command flags {:#06x}", req.flags),
        );
    }
    let (offset, length) = (req.offset, req.length);
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let in_range = offset
        .checked_add(u64::from(length))
        .is_some_and(|end| end <= s.size);
    let range_msg = || {
        format!(
            "request at offset {offset} length {length} is beyond the end of the export ({} bytes)",
            s.size
        )
    };
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && s.read_only {
        return reject(NbdError::Perm, "the export is read-only".into());
    }
    if req.flags & CMD_FLAG_FAST_ZERO != 0 && req.kind != CMD_WRITE_ZEROES {
        return reject(
            NbdError::Inval,
            "NBD_CMD_FLAG_FAST_ZERO is only valid on WRITE_ZEROES".into(),
        );
    }
    match req.kind {
        CMD_READ | CMD_CACHE if length > MAX_PAYLOAD => reject(
            NbdError::Overflow,
            format!("request of {length} bytes exceeds the {MAX_PAYLOAD}-byte maximum"),
        ),
        CMD_READ | CMD_CACHE | CMD_BLOCK_STATUS if !in_range => {
            reject(NbdError::Inval, range_msg())
        }
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if !in_range => {
            reject(NbdError::NoSpc, range_msg())
        }
        CMD_READ => Ok(Ok(Command::Read { offset, length })),
        CMD_WRITE => Ok(Ok(Command::Write {
            offset,
            length,
            fua,
        })),
        CMD_DISC => Ok(Ok(Command::Disconnect)),
        CMD_FLUSH => Ok(Ok(Command::Flush)),
        CMD_TRIM => Ok(Ok(Command::Trim {
            offset,
            length,
            fua,
        })),
        CMD_CACHE => Ok(Ok(Command::Cache)),
        CMD_WRITE_ZEROES => Ok(Ok(Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole: req.flags & CMD_FLAG_NO_HOLE != 0,
            fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
        })),
        CMD_BLOCK_STATUS if !(s.structured && s.base_allocation) => reject(
            NbdError::Inval,
            "BLOCK_STATUS needs structured replies and the base:allocation context".into(),
        ),
        CMD_BLOCK_STATUS if length == 0 => {
            reject(NbdError::Inval, "BLOCK_STATUS of zero length".into())
        }
        CMD_BLOCK_STATUS => Ok(Ok(Command::BlockStatus {
            offset,
            length,
            req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
        })),
        other => reject(NbdError::Inval, format!("unknown command {other}")),
    }
}

/// A simple reply header (16 bytes); READ data follows it on success.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header (20 bytes); `length` bytes of payload follow.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&length.to_be_bytes());
    b
}

/// The final, empty chunk of a successful structured reply.
pub fn none_chunk(cookie: u64) -> [u8; 20] {
    chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// Header and offset of an OFFSET_DATA chunk (28 bytes); `data_len` bytes follow.
pub fn offset_data_header(cookie: u64, offset: u64, data_len: u32, done: bool) -> Vec<u8> {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let mut v = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, cookie, data_len + 8).to_vec();
    v.extend_from_slice(&offset.to_be_bytes());
    v
}

/// A final ERROR chunk with a human-readable message (cut to 4096 bytes at a char
/// boundary).
pub fn error_chunk(cookie: u64, error: NbdError, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut v = chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    )
    .to_vec();
    v.extend_from_slice(&error.code().to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// A final BLOCK_STATUS chunk for one context: `(length, flags)` descriptors.
pub fn block_status_chunk(cookie: u64, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len() as u32;
    let mut v = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len).to_vec();
    v.extend_from_slice(&context.to_be_bytes());
    for (l, f) in extents {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&f.to_be_bytes());
    }
    v
}

/// `base:allocation` flags for a block-layer allocation state.
pub fn allocation_flags(a: Allocation) -> u32 {
    match a {
        Allocation::Data => 0,
        Allocation::Zero => STATE_HOLE | STATE_ZERO,
    }
}

/// Encodes replies in the style the connection negotiated.
#[derive(Clone, Copy, Debug)]
pub struct Replies {
    pub structured: bool,
}

impl Replies {
    /// A successful reply without data.
    pub fn ok(&self, cookie: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        self.push_ok(cookie, &mut v);
        v
    }

    /// [`Self::ok`], appended to `out` (the server's path for every request).
    pub fn push_ok(&self, cookie: u64, out: &mut Vec<u8>) {
        if self.structured {
            out.extend_from_slice(&none_chunk(cookie));
        } else {
            out.extend_from_slice(&simple_reply(cookie, 0));
        }
    }

    /// An error reply.
    pub fn error(&self, cookie: u64, error: NbdError, message: &str) -> Vec<u8> {
        if self.structured {
            error_chunk(cookie, error, message)
        } else {
            simple_reply(cookie, error.code()).to_vec()
        }
    }

    /// What precedes the data of a successful READ of `len` (> 0) bytes at `offset`:
    /// one final OFFSET_DATA chunk, or a simple reply.
    pub fn read_header(&self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(28);
        self.push_read_header(cookie, offset, len, &mut v);
        v
    }

    /// [`Self::read_header`], appended to `out`.
    pub fn push_read_header(&self, cookie: u64, offset: u64, len: u32, out: &mut Vec<u8>) {
        if self.structured {
            out.extend_from_slice(&chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                len + 8,
            ));
            out.extend_from_slice(&offset.to_be_bytes());
        } else {
            out.extend_from_slice(&simple_reply(cookie, 0));
        }
    }
}

#[cfg(test)]
#[path = "transmission_tests.rs"]
mod tests;
