//! `vmcrypt serve --tls-creds DIR` against qemu's TLS NBD client (`tls-creds-x509`
//! object): certificates are made with the `openssl` CLI for "localhost", the server
//! demands NBD_OPT_STARTTLS, qemu-img/qemu-io read and write over TLS on TCP and on a
//! Unix socket (with client certificates when `--tls-verify-peer` is given), and clients
//! that do not start TLS are refused while TLS clients keep being served.
mod common;
mod nbd_support;

use common::*;
use nbd_support::{Served, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SIZE: usize = 2 << 20;

/// Run openssl (failing the test when it is missing).
fn openssl(dir: &str, args: &[&str]) {
    let out = std::process::Command::new(require_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `who` ("server" or "client") signed by the CA in `dir`, written as
/// `WHO-cert.pem` / `WHO-key.pem` (qemu's names), with `ext` as its X.509v3 extensions.
fn issue(dir: &str, who: &str, ext: &str) {
    std::fs::write(format!("{dir}/{who}.ext"), ext).unwrap();
    let key = format!("{who}-key.pem");
    let csr = format!("{who}.csr");
    #[rustfmt::skip]
    openssl(dir, &["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN=vmcrypt-test-{who}")]);
    #[rustfmt::skip]
    openssl(dir, &["x509", "-req", "-in", &csr, "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
        "-set_serial", if who == "server" { "2" } else { "3" }, "-days", "2",
        "-extfile", &format!("{who}.ext"), "-out", &format!("{who}-cert.pem")]);
}

/// A credentials directory as qemu's tls-creds-x509 wants it: a CA, a server
/// certificate for localhost / 127.0.0.1 and a client certificate.
fn make_creds(sc: &Scratch, name: &str) -> String {
    let dir = sc.p(name);
    std::fs::create_dir(&dir).unwrap();
    #[rustfmt::skip]
    openssl(&dir, &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2",
        "-subj", "/CN=vmcrypt-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    let leaf = "basicConstraints=critical,CA:FALSE\n\
                keyUsage=critical,digitalSignature,keyEncipherment\n";
    issue(
        &dir,
        "server",
        &format!("{leaf}extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"),
    );
    issue(
        &dir,
        "client",
        &format!("{leaf}extendedKeyUsage=clientAuth\n"),
    );
    dir
}

/// `--object` for a qemu TLS client whose files are in `dir`.
fn tls_object(dir: &str) -> String {
    format!("tls-creds-x509,id=tls0,dir={dir},endpoint=client")
}

/// Start `vmcrypt serve --persistent --bind 127.0.0.1:PORT --tls-creds DIR` of `image`.
fn serve_tcp(sc: &Scratch, creds: &str, image: &str) -> (Served, u16) {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    #[rustfmt::skip]
    let args = ["--persistent", "--bind", &bind, "--tls-creds", creds, "-f", "raw", image];
    let server = Served::start(sc, &args, || TcpStream::connect(&bind).is_ok());
    (server, port)
}

/// A clear-text client: greeting, client flags, then `opt` with `data`; returns every
/// byte the server sends afterwards until it closes or goes quiet.
fn plain_option(port: u16, opt: u32, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
    let mut msg = 3u32.to_be_bytes().to_vec();
    msg.extend(b"IHAVEOPT");
    msg.extend(opt.to_be_bytes());
    msg.extend((data.len() as u32).to_be_bytes());
    msg.extend(data);
    s.write_all(&msg).unwrap();
    let mut got = vec![0u8; 20];
    match s.read_exact(&mut got) {
        Ok(()) => got,
        Err(_) => Vec::new(),
    }
}

#[test]
fn qemu_img_reads_and_writes_over_tls_and_clear_text_clients_are_refused() {
    let sc = Scratch::new();
    let creds = make_creds(&sc, "pki");
    let plain = plaintext(SIZE, "nbd-tls");
    let image = sc.write("d.raw", &plain);
    let (server, port) = serve_tcp(&sc, &creds, &image);
    let obj = tls_object(&creds);
    let opts = format!("driver=nbd,host=localhost,port={port},tls-creds=tls0");

    let info = qemu_img(&[
        "info",
        "--output",
        "json",
        "--object",
        &obj,
        "--image-opts",
        &opts,
    ])
    .ok()
    .json();
    assert_eq!(info["virtual-size"], SIZE as u64, "{info}");

    // Clear-text clients: qemu-img is told TLS is required; EXPORT_NAME is hung up on.
    qemu_img(&["info", &format!("nbd://127.0.0.1:{port}")])
        .failed()
        .stderr_has("TLS");
    let go = [0u8; 6];
    let reply = plain_option(port, 7, &go);
    assert_eq!(
        reply[8..16],
        [0, 0, 0, 7, 0x80, 0, 0, 5],
        "GO gets TLS_REQD"
    );
    assert!(
        plain_option(port, 1, b"").is_empty(),
        "EXPORT_NAME is dropped"
    );

    // TLS clients are still served: read everything, then write and read back.
    let out = sc.p("got.raw");
    qemu_convert_to_raw(&obj, &opts, &out).ok();
    assert_same_bytes("disk read over TLS", &sc.read("got.raw"), &plain);
    #[rustfmt::skip]
    tool("qemu-io", &["--object", &obj, "--image-opts", &opts,
        "-c", "write -P 0x3c 100000 70001", "-c", "read -P 0x3c 100000 70001"]).ok();
    let log = server.stop();
    assert!(log.contains("tls=true"), "log:\n{log}");
    let mut want = plain;
    want[100_000..170_001].fill(0x3c);
    assert_same_bytes("image after a write over TLS", &sc.read("d.raw"), &want);
}

#[test]
fn unix_socket_with_verify_peer_needs_a_client_certificate() {
    let sc = Scratch::new();
    let creds = make_creds(&sc, "pki");
    let plain = plaintext(SIZE, "nbd-tls-unix");
    let image = sc.write("d.raw", &plain);
    #[rustfmt::skip]
    let (server, sock) = Served::unix(&sc, &["--tls-creds", &creds, "--tls-verify-peer",
        "-f", "raw", &image]);
    let url = |dir: &str| {
        let o = format!("driver=nbd,server.type=unix,server.path={sock},tls-creds=tls0");
        (tls_object(dir), format!("{o},tls-hostname=localhost"))
    };
    let (obj, opts) = url(&creds);
    let out = sc.p("got.raw");
    qemu_convert_to_raw(&obj, &opts, &out).ok();
    assert_same_bytes("disk read over TLS on unix", &sc.read("got.raw"), &plain);

    // A client that trusts the CA but has no certificate of its own is refused.
    let anon = sc.p("anon");
    std::fs::create_dir(&anon).unwrap();
    std::fs::copy(
        format!("{creds}/ca-cert.pem"),
        format!("{anon}/ca-cert.pem"),
    )
    .unwrap();
    let (obj, opts) = url(&anon);
    qemu_img(&["info", "--object", &obj, "--image-opts", &opts]).failed();
    // ...and the server still serves certified clients.
    let (obj, opts) = url(&creds);
    qemu_img(&["info", "--object", &obj, "--image-opts", &opts]).ok();
    // qemu checks our certificate: another host name is refused on its side.
    let opts = opts.replace("tls-hostname=localhost", "tls-hostname=other.example");
    qemu_img(&["info", "--object", &obj, "--image-opts", &opts])
        .failed()
        .stderr_has("hostname");
    let log = server.stop();
    assert!(log.contains("no certificates"), "log:\n{log}");
}

#[test]
fn bad_tls_files_are_reported_before_serving() {
    let sc = Scratch::new();
    let creds = make_creds(&sc, "pki");
    let image = sc.write("d.raw", &[0u8; 4096]);
    let sock = sc.p("x.sock");
    let serve = |dir: &str, extra: &[&str]| {
        let mut args = vec!["serve", "--socket", &sock, "--tls-creds", dir];
        args.extend_from_slice(extra);
        args.extend(["-f", "raw", &image]);
        vmcrypt(&args)
    };
    let dir = |name: &str, files: &[(&str, &str)]| {
        let d = sc.p(name);
        std::fs::create_dir(&d).unwrap();
        for (from, to) in files {
            std::fs::copy(format!("{creds}/{from}"), format!("{d}/{to}")).unwrap();
        }
        d
    };
    let empty = dir("empty", &[]);
    serve(&empty, &[]).failed().stderr_has("server-cert.pem");
    // The client's key does not belong to the server's certificate.
    let mismatch = dir(
        "mismatch",
        &[
            ("server-cert.pem", "server-cert.pem"),
            ("client-key.pem", "server-key.pem"),
        ],
    );
    serve(&mismatch, &[]).failed().stderr_has("server-key.pem");
    // A certificate where the key should be.
    let garbage = dir(
        "garbage",
        &[
            ("server-cert.pem", "server-cert.pem"),
            ("server-cert.pem", "server-key.pem"),
        ],
    );
    serve(&garbage, &[]).failed().stderr_has("server-key.pem");
    // --tls-verify-peer needs the CA to check clients with.
    let noca = dir(
        "noca",
        &[
            ("server-cert.pem", "server-cert.pem"),
            ("server-key.pem", "server-key.pem"),
        ],
    );
    serve(&noca, &["--tls-verify-peer"])
        .failed()
        .stderr_has("ca-cert.pem");
    assert!(!std::path::Path::new(&sock).exists());
}
