//! TLS credentials for the server, loaded from a directory laid out like qemu's
//! `tls-creds-x509` object: `server-cert.pem` (the certificate chain, leaf first),
//! `server-key.pem` (PKCS#8, PKCS#1 or SEC1 key) and `ca-cert.pem` (the CA that signs
//! client certificates; needed only when clients must present one). TLS 1.2 and 1.3
//! with rustls and the *ring* provider.
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use vmcrypt_error::{Error, ErrorKind, Result};
use zeroize::Zeroizing;

/// File names inside the credentials directory (as qemu names them).
pub const CA_CERT: &str = "ca-cert.pem";
pub const SERVER_CERT: &str = "server-cert.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// A server TLS configuration, ready to accept connections.
#[derive(Clone)]
pub struct TlsCreds {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsCreds { .. }")
    }
}

impl TlsCreds {
    /// Load `server-cert.pem` and `server-key.pem` from `dir`; with `verify_peer`, also
    /// `ca-cert.pem`, and then every client must present a certificate it signed.
    pub fn from_x509_dir(dir: &Path, verify_peer: bool) -> Result<Self> {
        let provider = Arc::new(ring::default_provider());
        let certs = load_certs(&dir.join(SERVER_CERT))?;
        let key = load_key(&dir.join(SERVER_KEY))?;
        let signer = ring::sign::any_supported_type(&key)
            .map_err(|e| bad_file(&dir.join(SERVER_KEY), &format!("unusable key: {e}")))?;
        drop(key);
        let certified = CertifiedKey::new(certs, signer);
        certified.keys_match().map_err(|e| {
            bad_file(
                &dir.join(SERVER_KEY),
                &format!("does not belong to {SERVER_CERT}: {e}"),
            )
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("TLS versions: {e}")))?;
        let builder = if verify_peer {
            let ca = dir.join(CA_CERT);
            let mut roots = RootCertStore::empty();
            for cert in load_certs(&ca)? {
                roots
                    .add(cert)
                    .map_err(|e| bad_file(&ca, &format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| bad_file(&ca, &format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        Ok(TlsCreds {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn bad_file(path: &Path, what: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("'{}': {what}", path.display()))
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Error::new(kind, format!("reading '{}': {e}", path.display()))
    })
}

/// Every certificate in a PEM file (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, &format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The first private key in a PEM file, wiped from memory when dropped.
fn load_key(path: &Path) -> Result<Zeroizing<PrivateKeyDer<'static>>> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(Zeroizing::new)
        .map_err(|e| bad_file(path, &format!("no usable private key: {e}")))
}
