//! Handshake tests for TLS (the spec's FORCEDTLS mode): what is refused before
//! STARTTLS, the STARTTLS exchange itself, and normal negotiation afterwards.
use super::*;

fn forced() -> Handshake {
    let export = ExportInfo {
        name: "disk".into(),
        description: String::new(),
        size: 1 << 20,
        read_only: false,
    };
    let mut h = Handshake::new(vec![export]).require_tls(true);
    h.client_flags(&[0, 0, 0, 3]).unwrap();
    h
}

/// Reply header fields of the first option reply in `bytes`: (magic, option, type).
fn header(bytes: &[u8]) -> (u64, u32, u32) {
    let mut r = Reader::new(bytes);
    (r.u64().unwrap(), r.u32().unwrap(), r.u32().unwrap())
}

fn go(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend(0u16.to_be_bytes());
    d
}

#[test]
fn before_starttls_every_option_but_abort_is_tls_reqd() {
    let mut h = forced();
    let cases: [(u32, Vec<u8>); 6] = [
        (OPT_LIST, vec![]),
        (OPT_GO, go("disk")),
        (OPT_INFO, go("disk")),
        (OPT_STRUCTURED_REPLY, vec![]),
        (OPT_EXTENDED_HEADERS, vec![]),
        (99, b"junk".to_vec()),
    ];
    for (opt, data) in cases {
        match h.handle_option(opt, &data) {
            // 0x80000005 is NBD_REP_ERR_TLS_REQD in the spec's table.
            Step::Continue(b) => assert_eq!(header(&b), (REPLY_MAGIC, opt, 0x8000_0005)),
            other => panic!("option {opt}: expected TLS_REQD, got {other:?}"),
        }
    }
    match h.oversized_option(OPT_LIST) {
        Step::Continue(b) => assert_eq!(header(&b).2, 0x8000_0005),
        other => panic!("expected TLS_REQD, got {other:?}"),
    }
}

#[test]
fn export_name_without_tls_drops_the_connection_and_abort_is_acked() {
    let mut h = forced();
    assert_eq!(
        h.handle_option(OPT_EXPORT_NAME, b"disk"),
        Step::Close(Vec::new())
    );
    let mut h = forced();
    match h.handle_option(OPT_ABORT, &[]) {
        Step::Close(b) => assert_eq!(header(&b), (REPLY_MAGIC, OPT_ABORT, REP_ACK)),
        other => panic!("expected an ACK and close, got {other:?}"),
    }
    // A client without fixed newstyle cannot even ask for TLS.
    let mut h = Handshake::new(Vec::new()).require_tls(true);
    h.client_flags(&[0, 0, 0, 0]).unwrap();
    assert_eq!(h.handle_option(OPT_STARTTLS, &[]), Step::Close(Vec::new()));
}

#[test]
fn starttls_is_acked_once_then_options_work() {
    let mut h = forced();
    match h.handle_option(OPT_STARTTLS, b"x") {
        Step::Continue(b) => assert_eq!(header(&b).2, REP_ERR_INVALID),
        other => panic!("STARTTLS with data: {other:?}"),
    }
    // The ACK: magic, option 5, type 1 (ACK), length 0.
    let mut ack = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    ack.extend([0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(h.handle_option(OPT_STARTTLS, &[]), Step::StartTls(ack));
    h.tls_started();
    match h.handle_option(OPT_STARTTLS, &[]) {
        Step::Continue(b) => assert_eq!(header(&b).2, REP_ERR_INVALID),
        other => panic!("second STARTTLS: {other:?}"),
    }
    match h.handle_option(OPT_LIST, &[]) {
        Step::Continue(b) => assert_eq!(header(&b), (REPLY_MAGIC, OPT_LIST, REP_SERVER)),
        other => panic!("LIST over TLS: {other:?}"),
    }
    match h.handle_option(OPT_GO, &go("disk")) {
        Step::Transmit(_, n) => assert_eq!(n.export, 0),
        other => panic!("GO over TLS: {other:?}"),
    }
}

#[test]
fn starttls_without_tls_configured_is_unsupported() {
    let mut h = Handshake::new(Vec::new());
    h.client_flags(&[0, 0, 0, 1]).unwrap();
    match h.handle_option(OPT_STARTTLS, &[]) {
        Step::Continue(b) => assert_eq!(header(&b).2, REP_ERR_UNSUP),
        other => panic!("expected UNSUP, got {other:?}"),
    }
}
