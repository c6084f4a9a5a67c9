//! Transmission-phase tests: request and reply layouts from the specification, and
//! validation of hostile requests.
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
    Request {
        flags,
        kind,
        cookie: 0x0102_0304_0506_0708,
        offset,
        length,
    }
}

fn session() -> Session {
    Session {
        size: 1 << 20,
        read_only: false,
        structured: true,
        base_allocation: true,
    }
}

fn ok(r: Request, s: &Session) -> Command {
    validate(&r, s).unwrap().unwrap()
}

fn rejected(r: Request, s: &Session) -> Rejection {
    validate(&r, s).unwrap().unwrap_err()
}

#[test]
fn request_layout_matches_spec() {
    // magic 0x25609513, flags, type, cookie, offset, length.
    let bytes = hex("25609513 0001 0001 0102030405060708 0000000000001000 00000200");
    let arr: [u8; 28] = bytes.clone().try_into().unwrap();
    let r = Request::decode(&arr).unwrap();
    assert_eq!(r, req(CMD_WRITE, CMD_FLAG_FUA, 4096, 512));
    assert_eq!(r.encode().to_vec(), bytes);
    assert_eq!(r.payload_len(), 512);
    assert_eq!(req(CMD_READ, 0, 0, 512).payload_len(), 0);
}

#[test]
fn request_with_bad_magic_is_a_violation() {
    let mut arr = req(CMD_READ, 0, 0, 1).encode();
    arr[0] ^= 1;
    assert!(Request::decode(&arr).is_err());
    assert!(Request::decode(&[0u8; 28]).is_err());
}

#[test]
fn valid_commands_parse() {
    let s = session();
    assert_eq!(
        ok(req(CMD_READ, 0, 10, 20), &s),
        Command::Read {
            offset: 10,
            length: 20
        }
    );
    assert_eq!(
        ok(req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &s),
        Command::Write {
            offset: 0,
            length: 512,
            fua: true
        }
    );
    assert_eq!(
        ok(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 1 << 20), &s),
        Command::WriteZeroes {
            offset: 0,
            length: 1 << 20,
            fua: false,
            no_hole: true,
            fast: false
        }
    );
    assert_eq!(
        ok(req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 20), &s),
        Command::BlockStatus {
            offset: 0,
            length: 1 << 20,
            req_one: true
        }
    );
    assert_eq!(ok(req(CMD_FLUSH, 0, 0, 0), &s), Command::Flush);
    assert_eq!(ok(req(CMD_DISC, 0, 0, 0), &s), Command::Disconnect);
    assert_eq!(ok(req(CMD_CACHE, 0, 0, 4096), &s), Command::Cache);
    // Exactly up to the end is fine.
    assert!(matches!(
        ok(req(CMD_READ, 0, (1 << 20) - 1, 1), &s),
        Command::Read { .. }
    ));
}

#[test]
fn out_of_range_requests_are_rejected_with_the_spec_errors() {
    let s = session();
    assert_eq!(
        rejected(req(CMD_READ, 0, 1 << 20, 1), &s).error,
        NbdError::Inval
    );
    assert_eq!(
        rejected(req(CMD_READ, 0, u64::MAX, 2), &s).error,
        NbdError::Inval
    );
    let w = rejected(req(CMD_WRITE, 0, (1 << 20) - 1, 2), &s);
    assert_eq!((w.error, w.drain), (NbdError::NoSpc, 2));
    assert_eq!(
        rejected(req(CMD_TRIM, 0, u64::MAX, 1), &s).error,
        NbdError::NoSpc
    );
    assert_eq!(
        rejected(req(CMD_BLOCK_STATUS, 0, 1 << 20, 1), &s).error,
        NbdError::Inval
    );
}

#[test]
fn oversized_reads_are_refused_and_oversized_writes_are_fatal() {
    let s = Session {
        size: u64::MAX,
        ..session()
    };
    let r = rejected(req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &s);
    assert_eq!((r.error, r.drain), (NbdError::Overflow, 0));
    assert!(validate(&req(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1), &s).is_err());
    assert!(matches!(
        ok(req(CMD_READ, 0, 0, MAX_PAYLOAD), &s),
        Command::Read { .. }
    ));
    // TRIM and WRITE_ZEROES carry no payload and may be larger.
    assert!(matches!(
        ok(req(CMD_TRIM, 0, 0, u32::MAX), &s),
        Command::Trim { .. }
    ));
}

#[test]
fn writes_to_read_only_exports_are_eperm_and_drain_the_payload() {
    let s = Session {
        read_only: true,
        ..session()
    };
    let w = rejected(req(CMD_WRITE, 0, 0, 4096), &s);
    assert_eq!((w.error, w.drain), (NbdError::Perm, 4096));
    assert_eq!(
        rejected(req(CMD_TRIM, 0, 0, 4096), &s).error,
        NbdError::Perm
    );
    assert_eq!(
        rejected(req(CMD_WRITE_ZEROES, 0, 0, 4096), &s).error,
        NbdError::Perm
    );
    assert!(matches!(
        ok(req(CMD_READ, 0, 0, 4096), &s),
        Command::Read { .. }
    ));
}

#[test]
fn unknown_commands_and_flags_are_einval_not_fatal() {
    let s = session();
    assert_eq!(rejected(req(99, 0, 0, 0), &s).error, NbdError::Inval);
    assert_eq!(
        rejected(req(CMD_READ, 1 << 9, 0, 1), &s).error,
        NbdError::Inval
    );
    assert_eq!(
        rejected(req(CMD_READ, CMD_FLAG_FAST_ZERO, 0, 1), &s).error,
        NbdError::Inval,
        "FAST_ZERO outside WRITE_ZEROES"
    );
    assert!(matches!(
        ok(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 1), &s),
        Command::WriteZeroes { fast: true, .. }
    ));
}

#[test]
fn block_status_needs_the_negotiated_context() {
    let s = Session {
        base_allocation: false,
        ..session()
    };
    assert_eq!(
        rejected(req(CMD_BLOCK_STATUS, 0, 0, 512), &s).error,
        NbdError::Inval
    );
    assert_eq!(
        rejected(req(CMD_BLOCK_STATUS, 0, 0, 0), &session()).error,
        NbdError::Inval
    );
}

#[test]
fn simple_reply_layout() {
    assert_eq!(
        simple_reply(0x0102_0304_0506_0708, 5).to_vec(),
        hex("67446698 00000005 0102030405060708")
    );
}

#[test]
fn structured_chunk_layouts() {
    let c = 0x0102_0304_0506_0708;
    // magic, flags, type, cookie, length
    assert_eq!(
        none_chunk(c).to_vec(),
        hex("668e33ef 0001 0000 0102030405060708 00000000")
    );
    assert_eq!(
        offset_data_header(c, 0x200, 16, true),
        hex("668e33ef 0001 0001 0102030405060708 00000018 0000000000000200")
    );
    assert_eq!(
        error_chunk(c, NbdError::Inval, "bad"),
        hex("668e33ef 0001 8001 0102030405060708 00000009 00000016 0003 626164")
    );
    assert_eq!(
        block_status_chunk(c, 1, &[(4096, 0), (512, STATE_HOLE | STATE_ZERO)]),
        hex("668e33ef 0001 0005 0102030405060708 00000014 00000001
             00001000 00000000 00000200 00000003")
    );
}

#[test]
fn error_messages_are_cut_at_4096_bytes_on_a_char_boundary() {
    let long = "é".repeat(3000);
    let chunk = error_chunk(1, NbdError::Io, &long);
    let msg_len = u16::from_be_bytes([chunk[24], chunk[25]]) as usize;
    assert!(msg_len <= MAX_STRING);
    assert!(std::str::from_utf8(&chunk[26..]).is_ok());
    assert_eq!(chunk.len(), 26 + msg_len);
}

#[test]
fn replies_follow_the_negotiated_style() {
    let simple = Replies { structured: false };
    assert_eq!(simple.ok(7), simple_reply(7, 0).to_vec());
    assert_eq!(
        simple.error(7, NbdError::Perm, "x"),
        simple_reply(7, 1).to_vec()
    );
    assert_eq!(simple.read_header(7, 0, 9), simple_reply(7, 0).to_vec());
    let st = Replies { structured: true };
    assert_eq!(st.ok(7), none_chunk(7).to_vec());
    assert_eq!(st.read_header(7, 3, 9), offset_data_header(7, 3, 9, true));
}

#[test]
fn allocation_maps_to_hole_and_zero() {
    assert_eq!(allocation_flags(Allocation::Data), 0);
    assert_eq!(allocation_flags(Allocation::Zero), 3);
}
