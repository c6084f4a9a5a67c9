//! Handshake tests: byte layouts written out from the protocol specification, and
//! hostile input.
use super::*;

fn exports() -> Vec<ExportInfo> {
    vec![
        ExportInfo {
            name: String::new(),
            description: "default disk".into(),
            size: 0x1_0000_0200,
            read_only: false,
        },
        ExportInfo {
            name: "ro".into(),
            description: String::new(),
            size: 4096,
            read_only: true,
        },
    ]
}

fn fixed() -> Handshake {
    let mut h = Handshake::new(exports());
    h.client_flags(&[0, 0, 0, 3]).unwrap();
    h
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Option reply header: magic 0x3e889045565a9, option, type, length.
fn rep(opt: u32, ty: u32, data: &str) -> Vec<u8> {
    let d = hex(data);
    let mut v = hex("0003e889045565a9");
    v.extend(opt.to_be_bytes());
    v.extend(ty.to_be_bytes());
    v.extend((d.len() as u32).to_be_bytes());
    v.extend(d);
    v
}

fn cont(step: Step) -> Vec<u8> {
    match step {
        Step::Continue(b) => b,
        other => panic!("expected Continue, got {other:?}"),
    }
}

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_flags() {
    // "NBDMAGIC" "IHAVEOPT", flags FIXED_NEWSTYLE|NO_ZEROES = 0x0003.
    let mut want = b"NBDMAGICIHAVEOPT".to_vec();
    want.extend([0, 3]);
    assert_eq!(greeting().to_vec(), want);
}

#[test]
fn client_flags_accept_known_bits_only() {
    let mut h = Handshake::new(exports());
    assert!(h.client_flags(&[0, 0, 0, 1]).is_ok());
    assert!(h.client_flags(&[0, 0, 0, 0]).is_ok());
    assert!(h.client_flags(&[0, 0, 0, 4]).is_err());
    assert!(h.client_flags(&[0x80, 0, 0, 0]).is_err());
}

#[test]
fn option_header_needs_ihaveopt() {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(b"IHAVEOPT");
    b[8..12].copy_from_slice(&7u32.to_be_bytes());
    b[12..].copy_from_slice(&9u32.to_be_bytes());
    assert_eq!(parse_option_header(&b), Ok((7, 9)));
    b[0] = b'X';
    assert!(parse_option_header(&b).is_err());
}

#[test]
fn export_name_sends_size_flags_and_zeroes_unless_no_zeroes() {
    let mut h = Handshake::new(exports());
    h.client_flags(&[0, 0, 0, 1]).unwrap();
    let Step::Transmit(bytes, n) = h.handle_option(OPT_EXPORT_NAME, b"ro") else {
        panic!("EXPORT_NAME must enter transmission");
    };
    // size 4096, flags HAS_FLAGS|READ_ONLY|FLUSH|FUA|MULTI_CONN|CACHE = 0x050f.
    let mut want = hex("0000000000001000 050f");
    want.extend([0u8; 124]);
    assert_eq!(bytes, want);
    assert_eq!(n.export, 1);
    assert!(!n.structured && !n.base_allocation);

    let mut h = fixed();
    let Step::Transmit(bytes, _) = h.handle_option(OPT_EXPORT_NAME, b"") else {
        panic!("EXPORT_NAME must enter transmission");
    };
    // Writable: HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|MULTI_CONN|CACHE|FAST_ZERO = 0x0d6d.
    assert_eq!(bytes, hex("0000000100000200 0d6d"));
}

#[test]
fn export_name_of_unknown_export_closes_silently() {
    assert_eq!(
        fixed().handle_option(OPT_EXPORT_NAME, b"nope"),
        Step::Close(vec![])
    );
}

#[test]
fn abort_is_acknowledged_then_closed() {
    assert_eq!(
        fixed().handle_option(OPT_ABORT, &[]),
        Step::Close(rep(2, 1, ""))
    );
}

#[test]
fn list_sends_one_server_reply_per_export_then_ack() {
    let got = cont(fixed().handle_option(OPT_LIST, &[]));
    let mut want = rep(3, 2, &format!("00000000{}", hexs("default disk")));
    want.extend(rep(3, 2, &format!("00000002{}", hexs("ro"))));
    want.extend(rep(3, 1, ""));
    assert_eq!(got, want);
    // LIST with data is invalid.
    assert_eq!(
        cont(fixed().handle_option(OPT_LIST, &[1])),
        rep(3, REP_ERR_INVALID, &hexs("LIST takes no data"))
    );
}

fn hexs(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// INFO/GO payload: name length, name, number of info requests, the requests.
fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend((infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend(i.to_be_bytes());
    }
    d
}

#[test]
fn go_replies_export_name_description_block_size_then_ack() {
    let mut h = fixed();
    let Step::Transmit(bytes, n) =
        h.handle_option(OPT_GO, &go_data("", &[INFO_NAME, INFO_DESCRIPTION]))
    else {
        panic!("GO must enter transmission");
    };
    let mut want = rep(7, 3, "0000 0000000100000200 0d6d");
    want.extend(rep(7, 3, "0001"));
    want.extend(rep(7, 3, &format!("0002{}", hexs("default disk"))));
    // min 1, preferred 4096, max 32 MiB.
    want.extend(rep(7, 3, "0003 00000001 00001000 02000000"));
    want.extend(rep(7, 1, ""));
    assert_eq!(bytes, want);
    assert_eq!(n.export, 0);
}

#[test]
fn info_does_not_end_negotiation_and_unknown_export_is_err_unknown() {
    let mut h = fixed();
    let got = cont(h.handle_option(OPT_INFO, &go_data("ro", &[])));
    assert!(got.ends_with(&rep(6, 1, "")));
    let got = cont(h.handle_option(OPT_GO, &go_data("missing", &[])));
    assert_eq!(
        got,
        rep(7, REP_ERR_UNKNOWN, &hexs("no export named 'missing'"))
    );
}

#[test]
fn structured_reply_adds_df_flag() {
    let mut h = fixed();
    assert_eq!(
        cont(h.handle_option(OPT_STRUCTURED_REPLY, &[])),
        rep(8, 1, "")
    );
    let Step::Transmit(_, n) = h.handle_option(OPT_GO, &go_data("", &[])) else {
        panic!("GO must enter transmission");
    };
    assert!(n.structured);
    assert_eq!(n.flags, 0x0d6d | FLAG_SEND_DF);
    assert!(!n.base_allocation);
}

/// LIST/SET_META_CONTEXT payload: export name, number of queries, queries.
fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend(export.as_bytes());
    d.extend((queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend((q.len() as u32).to_be_bytes());
        d.extend(q.as_bytes());
    }
    d
}

#[test]
fn meta_context_needs_structured_replies() {
    let got = cont(fixed().handle_option(OPT_SET_META_CONTEXT, &meta_data("", &[BASE_ALLOCATION])));
    assert_eq!(&got[12..16], &REP_ERR_INVALID.to_be_bytes());
}

#[test]
fn set_meta_context_selects_base_allocation_for_go() {
    let mut h = fixed();
    cont(h.handle_option(OPT_STRUCTURED_REPLY, &[]));
    let got = cont(h.handle_option(
        OPT_SET_META_CONTEXT,
        &meta_data("", &["x-other:thing", BASE_ALLOCATION]),
    ));
    let mut want = rep(10, 4, &format!("00000001{}", hexs("base:allocation")));
    want.extend(rep(10, 1, ""));
    assert_eq!(got, want);
    let Step::Transmit(_, n) = h.handle_option(OPT_GO, &go_data("", &[])) else {
        panic!("GO must enter transmission");
    };
    assert!(n.base_allocation);
}

#[test]
fn meta_context_for_another_export_does_not_carry_over() {
    let mut h = fixed();
    cont(h.handle_option(OPT_STRUCTURED_REPLY, &[]));
    cont(h.handle_option(OPT_SET_META_CONTEXT, &meta_data("ro", &[BASE_ALLOCATION])));
    let Step::Transmit(_, n) = h.handle_option(OPT_GO, &go_data("", &[])) else {
        panic!("GO must enter transmission");
    };
    assert!(!n.base_allocation);
}

#[test]
fn list_meta_context_lists_with_zero_id() {
    let mut h = fixed();
    cont(h.handle_option(OPT_STRUCTURED_REPLY, &[]));
    let mut want = rep(9, 4, &format!("00000000{}", hexs("base:allocation")));
    want.extend(rep(9, 1, ""));
    assert_eq!(
        cont(h.handle_option(OPT_LIST_META_CONTEXT, &meta_data("", &[]))),
        want
    );
    assert_eq!(
        cont(h.handle_option(OPT_LIST_META_CONTEXT, &meta_data("", &["base:"]))),
        want
    );
    // A query matching nothing: just the ACK.
    assert_eq!(
        cont(h.handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_data("", &["qemu:dirty-bitmap:x"])
        )),
        rep(9, 1, "")
    );
}

#[test]
fn unknown_options_and_tls_are_unsupported() {
    let mut h = fixed();
    for opt in [OPT_STARTTLS, OPT_EXTENDED_HEADERS, 4, 99, u32::MAX] {
        let got = cont(h.handle_option(opt, b"junk"));
        assert_eq!(&got[8..12], &opt.to_be_bytes());
        assert_eq!(&got[12..16], &REP_ERR_UNSUP.to_be_bytes(), "option {opt}");
    }
}

#[test]
fn hostile_go_payloads_are_invalid_not_panics() {
    let mut h = fixed();
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff, 0xff, 0xff, 0xff],
        // name length 0, 65535 info requests announced but none sent
        hex("00000000 ffff"),
        // trailing garbage
        {
            let mut d = go_data("", &[]);
            d.push(0);
            d
        },
        // name length larger than the payload
        hex("00001000 41"),
    ];
    for d in bad {
        let got = cont(h.handle_option(OPT_GO, &d));
        assert_eq!(
            &got[12..16],
            &REP_ERR_INVALID.to_be_bytes(),
            "payload {d:02x?}"
        );
    }
}

#[test]
fn hostile_meta_payloads_are_invalid_not_panics() {
    let mut h = fixed();
    cont(h.handle_option(OPT_STRUCTURED_REPLY, &[]));
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        hex("00000000 ffffffff"),
        hex("00000000 00000001 ffffffff"),
        hex("00000000 00000001 00000002 ff fe"),
        hex("ffffffff"),
    ];
    for d in bad {
        let got = cont(h.handle_option(OPT_SET_META_CONTEXT, &d));
        assert_eq!(
            &got[12..16],
            &REP_ERR_INVALID.to_be_bytes(),
            "payload {d:02x?}"
        );
    }
}

#[test]
fn non_fixed_clients_may_only_send_export_name() {
    let mut h = Handshake::new(exports());
    h.client_flags(&[0, 0, 0, 0]).unwrap();
    assert_eq!(h.handle_option(OPT_LIST, &[]), Step::Close(vec![]));
    assert!(matches!(
        h.handle_option(OPT_EXPORT_NAME, b""),
        Step::Transmit(..)
    ));
}

#[test]
fn oversized_options_are_too_big_or_close() {
    let mut h = fixed();
    let got = cont(h.oversized_option(OPT_GO));
    assert_eq!(&got[12..16], &REP_ERR_TOO_BIG.to_be_bytes());
    assert_eq!(h.oversized_option(OPT_EXPORT_NAME), Step::Close(vec![]));
}
