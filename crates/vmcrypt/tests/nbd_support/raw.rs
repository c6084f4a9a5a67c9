//! A minimal NBD client written from the spec for tests that need control over the
//! bytes on the wire (pipelined requests, torn requests, command flags): fixed
//! newstyle, NBD_OPT_EXPORT_NAME, simple replies.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

pub struct RawClient {
    pub s: UnixStream,
    /// Transmission flags the server sent for the export.
    pub flags: u16,
    pub size: u64,
}

/// A request header.
pub fn header(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend(flags.to_be_bytes());
    r.extend(kind.to_be_bytes());
    r.extend(cookie.to_be_bytes());
    r.extend(offset.to_be_bytes());
    r.extend(length.to_be_bytes());
    r
}

impl RawClient {
    /// Connect to `sock` and select export `name`.
    pub fn open(sock: &str, name: &str) -> RawClient {
        let s = UnixStream::connect(sock).expect("connecting to the NBD socket");
        RawClient::handshake(s, name)
    }

    /// The handshake on an already connected socket.
    pub fn handshake(mut s: UnixStream, name: &str) -> RawClient {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).expect("reading the NBD greeting");
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        // Client flags FIXED_NEWSTYLE | NO_ZEROES, then EXPORT_NAME.
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(b"IHAVEOPT");
        msg.extend(1u32.to_be_bytes());
        msg.extend((name.len() as u32).to_be_bytes());
        msg.extend(name.as_bytes());
        s.write_all(&msg).unwrap();
        let mut export = [0u8; 10];
        s.read_exact(&mut export)
            .expect("reading the export size and flags");
        RawClient {
            s,
            size: u64::from_be_bytes(export[..8].try_into().unwrap()),
            flags: u16::from_be_bytes(export[8..].try_into().unwrap()),
        }
    }

    pub fn request(&mut self, flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
        self.s
            .write_all(&header(flags, kind, cookie, offset, length))
            .unwrap();
    }

    /// Send a WRITE of `data` without waiting for its reply.
    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        self.request(0, CMD_WRITE, cookie, offset, data.len() as u32);
        self.s.write_all(data).unwrap();
    }

    /// The next simple reply without data: `(cookie, error)`, or `None` at EOF.
    pub fn reply(&mut self) -> Option<(u64, u32)> {
        let mut r = [0u8; 16];
        match self.s.read_exact(&mut r) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading a reply: {e}"),
        }
        assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes(), "simple reply magic");
        let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
        Some((u64::from_be_bytes(r[8..].try_into().unwrap()), error))
    }

    /// Read `len` bytes at `offset` (waits for the reply).
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, CMD_READ, cookie, offset, len);
        assert_eq!(self.reply(), Some((cookie, 0)), "READ reply");
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf).unwrap();
        buf
    }
}
