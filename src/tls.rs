//! TLS on the one port (the only user of rustls): the server side of every connection,
//! the client side the peer client uses, and the certificate reload.
//!
//! One [`Certificate`] holds the node's certificate and key; the server presents it to
//! every client and the peer client presents it under mutual TLS. [`Certificate::reload`]
//! swaps it when its files change (the daemon checks every few seconds and on SIGHUP):
//! a new handshake gets the new one, a connection already open keeps the one it
//! started with. A reload that fails (a half-written file, a key that does not match)
//! keeps the old certificate and says why.
//!
//! Peers verify each other against `tls.ca`. With `tls.peer_auth: mtls` the server asks
//! every client for a certificate signed by that CA but serves clients without one too:
//! only `/internal/` requires it (the HTTP layer checks [`ClientCert`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Whether peers must show a certificate signed by `tls.ca` on `/internal/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTls {
    /// Peers are authenticated by the cluster key only.
    #[default]
    None,
    /// Peers must also present a certificate signed by `tls.ca`.
    Mtls,
}

impl std::str::FromStr for PeerTls {
    type Err = String;

    fn from_str(text: &str) -> Result<PeerTls, String> {
        match text {
            "none" => Ok(PeerTls::None),
            "mtls" => Ok(PeerTls::Mtls),
            other => Err(format!("{other:?} is not none or mtls")),
        }
    }
}

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA peers verify each other against; without it the peer client trusts the
    /// system's roots and mutual TLS is not available.
    pub ca: Option<PathBuf>,
    pub peer_auth: PeerTls,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The client side of TLS the peer client uses (handed to reqwest as it is).
pub type ClientTls = ClientConfig;

/// How a connection's client identified itself during the handshake; the HTTP layer
/// finds it in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCert {
    /// The client presented a certificate and it verified against `tls.ca`.
    pub verified: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| read(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read(error.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned(), what: "PEM certificate" });
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|error| TlsError::Read {
            path: path.to_owned(),
            reason: format!("not a CA certificate: {error}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The file's modification time, or `None` when it cannot be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The node's certificate and key, swapped whole on reload.
#[derive(Debug)]
pub struct Certificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when `current` was loaded.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, TlsError> {
        let stamp = (modified(cert), modified(key));
        let loaded = Self::read(cert, key)?;
        Ok(Certificate {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            stamp: Mutex::new(stamp),
        })
    }

    fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let chain = read_certs(cert)?;
        let der = PrivateKeyDer::from_pem_file(key)
            .map_err(|error| TlsError::Read { path: key.to_owned(), reason: error.to_string() })?;
        let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|error| {
            TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
                reason: error.to_string(),
            }
        })?;
        Ok(certified)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reloads the files if they changed since the last load (or always, when
    /// `force`). Returns whether a new certificate is now in use; on error the old one
    /// stays.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamp = (modified(&self.cert_path), modified(&self.key_path));
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && *last == stamp {
            return Ok(false);
        }
        let loaded = Self::read(&self.cert_path, &self.key_path);
        // Either way, do not retry the same files every tick: the next change retries.
        *last = stamp;
        let loaded = loaded?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(true)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Certificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Everything TLS needs at run time: the server config (for the listener) and, when a
/// CA is configured, the client config the peer client uses.
#[derive(Clone)]
pub struct Tls {
    pub certificate: Arc<Certificate>,
    pub server: Arc<ServerConfig>,
    /// `None` without `tls.ca`: the peer client then trusts the system's roots.
    pub peer_client: Option<ClientConfig>,
    pub peer_auth: PeerTls,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("peer_auth", &self.peer_auth).finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(files: &TlsFiles) -> Result<Tls, TlsError> {
        let certificate = Arc::new(Certificate::load(&files.cert, &files.key)?);
        let roots = files.ca.as_deref().map(read_roots).transpose()?;
        let setup = |error: rustls::Error| TlsError::Setup(error.to_string());
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?;
        let builder = match (&roots, files.peer_auth) {
            (Some(roots), PeerTls::Mtls) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| TlsError::Setup(error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, PeerTls::Mtls) => {
                return Err(TlsError::Setup(
                    "tls.peer_auth: mtls needs tls.ca, the CA peer certificates are signed by"
                        .into(),
                ))
            }
            (_, PeerTls::None) => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(certificate.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let peer_client = match roots {
            Some(roots) => {
                let builder = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(setup)?
                    .with_root_certificates(roots);
                let mut client = match files.peer_auth {
                    PeerTls::Mtls => builder.with_client_cert_resolver(certificate.clone()),
                    PeerTls::None => builder.with_no_client_auth(),
                };
                client.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(client)
            }
            None => None,
        };
        Ok(Tls { certificate, server: Arc::new(server), peer_client, peer_auth: files.peer_auth })
    }

    /// The handshake side of the listener.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

/// Completes a server handshake on `stream` and says how the client identified itself.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, ClientCert)> {
    let stream = acceptor.accept(stream).await?;
    // rustls fails the handshake on a certificate that does not verify, so one that
    // is present here verified against `tls.ca`.
    let verified = stream.get_ref().1.peer_certificates().is_some_and(|certs| !certs.is_empty());
    Ok((stream, ClientCert { verified }))
}
