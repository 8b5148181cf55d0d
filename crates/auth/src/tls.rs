//! TLS and mTLS for every service's gRPC listener, and the identity a
//! client certificate proves.
//!
//! The listener accepts TCP itself (Nagle off), runs each TLS handshake in
//! its own task (a slow client cannot hold up others) with rustls limited
//! to TLS 1.3, and hands tonic a [`Conn`] whose connect info carries the
//! peer's certificate identity. With a client CA, a client certificate is
//! required; its principal comes from a SPIFFE URI SAN
//! (`spiffe://<trust domain>/<kind>/<id>`) or from the explicit
//! `[[auth.certificates]]` mappings (by URI or by subject `CN=`), never from
//! anything the client sends in a request. The server certificate and key
//! are re-read when their files change, so rotation needs no restart.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::principal::{Kind, Principal, roles};

/// Maps a certificate identity to a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMapping {
    /// A URI SAN (`spiffe://warden.local/human/ada`) or `CN=<subject common name>`.
    pub identity: String,
    pub principal: String,
    pub kind: Kind,
    pub roles: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    read_certs_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificates in a PEM bundle.
pub fn read_certs_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(certs)
}

pub fn parse_key(pem: &str, name: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("{name}: {e}"))?
        .ok_or_else(|| format!("{name} holds no PEM private key"))
}

/// The server's certificate, swapped when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingCert {
    fn load(cert: &Path, key_pem: &str) -> Result<CertifiedKey, String> {
        let chain = read_certs(cert)?;
        let key = parse_key(key_pem, "tls_key")?;
        let signing = provider().key_provider.load_private_key(key).map_err(|e| format!("tls_key: {e}"))?;
        Ok(CertifiedKey::new(chain, signing))
    }

    pub fn swap(&self, cert: &Path, key_pem: &str) -> Result<(), String> {
        self.current.store(Arc::new(ReloadingCert::load(cert, key_pem)?));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A listener's TLS settings.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
    pub cert_path: PathBuf,
    mutual: bool,
    trust_domain: String,
    mappings: Vec<CertificateMapping>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert_path).field("mutual", &self.mutual).finish()
    }
}

impl ServerTls {
    /// TLS 1.3 only; with `client_ca`, a client certificate signed by it is
    /// required.
    pub fn new(
        cert: &Path,
        key_pem: &str,
        client_ca: Option<&Path>,
        trust_domain: &str,
        mappings: Vec<CertificateMapping>,
    ) -> Result<ServerTls, String> {
        let reloading = Arc::new(ReloadingCert { current: ArcSwap::from_pointee(ReloadingCert::load(cert, key_pem)?) });
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(reloading.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert: reloading,
            cert_path: cert.to_owned(),
            mutual: client_ca.is_some(),
            trust_domain: trust_domain.to_owned(),
            mappings,
        })
    }

    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// The principal a verified client certificate proves.
    pub fn principal_of(&self, cert: &CertificateDer<'_>) -> Result<Arc<Principal>, String> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    uris.push(uri.to_string());
                }
            }
        }
        let common_names: Vec<String> =
            parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(|s| format!("CN={s}"))).collect();
        for identity in uris.iter().chain(common_names.iter()) {
            if let Some(mapping) = self.mappings.iter().find(|m| &m.identity == identity) {
                return Ok(Arc::new(Principal::new(
                    mapping.kind,
                    mapping.principal.clone(),
                    mapping.roles.clone(),
                    &mapping.agents,
                    format!("mtls:{identity}"),
                )));
            }
        }
        let prefix = format!("spiffe://{}/", self.trust_domain);
        for uri in &uris {
            if let Some((kind, id)) = uri.strip_prefix(&prefix).and_then(|rest| rest.split_once('/'))
                && let Some(kind) = Kind::parse(kind)
                && !id.is_empty()
                && !id.contains('/')
            {
                let roles = match kind {
                    Kind::Agent => vec![roles::AGENT.to_owned()],
                    Kind::Service => vec![roles::SERVICE.to_owned()],
                    // People get roles only through an explicit mapping.
                    Kind::Human => Vec::new(),
                };
                return Ok(Arc::new(Principal::new(kind, id, roles, &[], format!("mtls:{uri}"))));
            }
        }
        let shown = uris.first().or(common_names.first()).cloned().unwrap_or_else(|| "(no identity)".into());
        Err(format!("client certificate {shown} maps to no principal"))
    }
}

/// What tonic puts in every request's extensions for a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// Set on mTLS connections: the certificate's principal, or why it has none.
    pub certificate: Option<Result<Arc<Principal>, String>>,
}

/// An accepted connection: plain TCP or TLS.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(_, info) | Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream, _) => Pin::new(stream).poll_read(cx, buf),
            Conn::Tls(stream, _) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream, _) => Pin::new(stream).poll_write(cx, buf),
            Conn::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream, _) => Pin::new(stream).poll_flush(cx),
            Conn::Tls(stream, _) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream, _) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream, _) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream, _) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Conn::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(stream, _) => stream.is_write_vectored(),
            Conn::Tls(stream, _) => stream.is_write_vectored(),
        }
    }
}

/// The stream of accepted connections tonic serves.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>>;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `listen` and accepts connections in a background task (returned,
/// to be stopped with the server). Port 0 picks a free port.
pub async fn bind(
    listen: &str,
    tls: Option<Arc<ServerTls>>,
) -> io::Result<(Incoming, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A small response must not wait for the peer's delayed ACK.
            let _ = stream.set_nodelay(true);
            let info = PeerInfo { remote: Some(remote), certificate: None };
            match &tls {
                None => {
                    if tx.send(Ok(Conn::Plain(stream, info))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let mut info = info;
                                if tls.mutual {
                                    info.certificate = Some(match stream.get_ref().1.peer_certificates() {
                                        Some([leaf, ..]) => tls.principal_of(leaf),
                                        _ => Err("no client certificate".into()),
                                    });
                                }
                                let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info))).await;
                            }
                            Ok(Err(error)) => tracing::debug!(%remote, %error, "tls handshake failed"),
                            Err(_) => tracing::debug!(%remote, "tls handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Ok((tokio_stream::wrappers::ReceiverStream::new(rx), addr, task))
}
