//! Fuzz entry points for the sans-I/O NBD protocol codecs of `vmcrypt-nbd`: the
//! handshake state machine fed a client's option stream, and the transmission-phase
//! request decoder and validator with the replies the server would send.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/`) and by
//! `crates/vmcrypt-nbd/tests/fuzz_replay.rs` (included with `#[path]`).
use crate::replay::Target;
use vmcrypt_nbd::proto::handshake::{ExportInfo, Handshake, Step, parse_option_header};
use vmcrypt_nbd::proto::transmission::{self, Command, REQUEST_LEN, Replies, Request, Session};
use vmcrypt_nbd::proto::{MAX_OPTION_LEN, MAX_PAYLOAD};

/// Every target in this file, by name (the corpus directory names).
pub const TARGETS: &[Target] = &[
    ("nbd_handshake", nbd_handshake),
    ("nbd_transmission", nbd_transmission),
];

/// Split `n` bytes (or what is left) off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

/// Two exports, one read-only, as the server would offer them.
fn exports() -> Vec<ExportInfo> {
    let export = |name: &str, read_only| ExportInfo {
        name: name.into(),
        description: format!("{name} export"),
        size: 1 << 20,
        read_only,
    };
    vec![export("", false), export("ro", true)]
}

/// The handshake as the server runs it. Byte 0 bit 0 demands TLS; bytes 1..5 are the
/// client flags; then options as on the wire (IHAVEOPT, option, length, payload).
pub fn nbd_handshake(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut hs = Handshake::new(exports()).require_tls(mode & 1 != 0);
    let Ok(flags) = <[u8; 4]>::try_from(take(&mut rest, 4)) else {
        return;
    };
    if hs.client_flags(&flags).is_err() {
        return;
    }
    while let Ok(head) = <[u8; 16]>::try_from(take(&mut rest, 16)) {
        let Ok((opt, len)) = parse_option_header(&head) else {
            return;
        };
        let step = if len > MAX_OPTION_LEN {
            hs.oversized_option(opt)
        } else {
            hs.handle_option(opt, take(&mut rest, len as usize))
        };
        match step {
            Step::Continue(_) => {}
            Step::StartTls(_) => hs.tls_started(),
            Step::Close(_) => return,
            Step::Transmit(_, negotiated) => {
                assert!(negotiated.export < exports().len(), "unknown export chosen");
                return;
            }
        }
    }
}

/// The transmission phase. Bytes 0..8 are the export size, byte 8 the session flags
/// (read-only, structured replies, base:allocation); then request headers, each
/// followed by its WRITE payload. Accepted commands must lie inside the export.
pub fn nbd_transmission(data: &[u8]) {
    let mut rest = data;
    let mut size = [0u8; 8];
    let head = take(&mut rest, 8);
    size[..head.len()].copy_from_slice(head);
    let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
    let session = Session {
        size: u64::from_be_bytes(size),
        read_only: flags & 1 != 0,
        structured: flags & 2 != 0,
        base_allocation: flags & 4 != 0,
    };
    let replies = Replies {
        structured: session.structured,
    };
    while let Ok(buf) = <[u8; REQUEST_LEN]>::try_from(take(&mut rest, REQUEST_LEN)) {
        let Ok(req) = Request::decode(&buf) else {
            return;
        };
        assert_eq!(req.encode(), buf, "request header changed in a round trip");
        match transmission::validate(&req, &session) {
            Err(_) => return,
            Ok(Err(rejection)) => {
                let _ = replies.error(req.cookie, rejection.error, &rejection.message);
                take(&mut rest, rejection.drain as usize);
            }
            Ok(Ok(cmd)) => {
                check_command(&cmd, &session);
                let _ = replies.ok(req.cookie);
                take(&mut rest, req.payload_len() as usize);
            }
        }
    }
}

/// What an accepted command promises the server.
fn check_command(cmd: &Command, s: &Session) {
    let inside = |offset: u64, length: u32| {
        assert!(
            offset
                .checked_add(u64::from(length))
                .is_some_and(|e| e <= s.size),
            "command beyond the export: {cmd:?}"
        );
    };
    match *cmd {
        Command::Read { offset, length } => {
            assert!(length <= MAX_PAYLOAD);
            inside(offset, length);
        }
        Command::Write { offset, length, .. }
        | Command::Trim { offset, length, .. }
        | Command::WriteZeroes { offset, length, .. } => {
            assert!(!s.read_only, "write accepted on a read-only export");
            inside(offset, length);
        }
        Command::BlockStatus { offset, length, .. } => {
            assert!(s.structured && s.base_allocation && length > 0);
            inside(offset, length);
        }
        Command::Disconnect | Command::Flush | Command::Cache => {}
    }
}
