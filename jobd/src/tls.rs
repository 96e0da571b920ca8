//! The transport: TCP accept, mutual TLS 1.3 handshake, and the caller's identity.
//!
//! tonic's own TLS setup cannot pin the protocol version, so the rustls `ServerConfig` is
//! built here (TLS 1.3 only, client certificate required and verified against the CA) and
//! handshakes are done before tonic sees a connection. Each connection carries the
//! identity read from its verified certificate, which handlers find in the request
//! extensions as [`ConnInfo`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::admission::Handshakes;
use crate::identity::Identity;
use crate::metrics::{self, HandshakeRefusal, Metrics};

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context as _;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use anyhow::Context as _;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{} is not a PEM key file", path.display()))?
        .with_context(|| format!("{} holds no private key", path.display()))
}

/// The crypto provider both ends use: ring, chosen explicitly so no process-wide default
/// has to be installed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 only, with a client certificate required and verified against `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_with_crls(ca, cert, key, Vec::new())
}

/// As [`server_config`], refusing the client certificates that `crls` revoke. Only the
/// client's own certificate is checked (the CA is the root itself); one whose issuer has no
/// CRL among them is refused too, so a CRL of another CA cannot pass for ours.
pub fn server_config_with_crls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    use anyhow::Context as _;
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    let provider = provider();
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = builder.build().context("the CA or the CRL is not usable")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(crate::identity::SubjectVerifier(verifier)))
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| {
            format!(
                "the server certificate {} and key {} do not make a pair",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session skips the client certificate check, so a
    // certificate is checked against the CA on every connection, and the server keeps no
    // session (with its certificate chain) per client. jobc could not resume anyway: it
    // makes one connection per run.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// What handlers learn about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub identity: Arc<Identity>,
    pub remote: SocketAddr,
}

/// An established, authenticated connection.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    /// Held for the connection's life: counts it against the server's connection limit.
    _permit: OwnedSemaphorePermit,
    /// Held for the connection's life: counts it in the connections-open gauge.
    _open: metrics::Open,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Limits of the transport.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    pub max_connections: usize,
    /// How long a connection may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in flight from one source address (see [`crate::admission`]).
    pub max_handshakes_per_address: usize,
}

/// Accepts connections on every listener until `incoming` is dropped, handshaking
/// each in its own task so a slow or hostile client cannot hold up the others.
/// Refused handshakes are logged and dropped; only authenticated connections reach tonic.
/// Once more than half of the connection slots are taken, a source address with its
/// maximum of handshakes in flight gets its further connections closed at once, so that
/// it cannot take the remaining slots from others.
pub async fn accept_loop(
    listeners: Vec<TcpListener>,
    tls: watch::Receiver<Arc<ServerConfig>>,
    limits: TransportLimits,
    incoming: mpsc::Sender<Result<TlsConn, io::Error>>,
    metrics: Metrics,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Handshakes::new(limits.max_handshakes_per_address);
    let mut first = 0;
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = accept_any(&listeners, &mut first) => match accepted {
                Ok(a) => a,
                Err((listen, e)) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    tracing::warn!(%listen, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = incoming.closed() => return,
        };
        let crowded = slots.available_permits() < limits.max_connections.div_ceil(2);
        let Some(handshake_slot) = handshakes.try_begin(remote.ip(), crowded) else {
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%remote, limit = limits.max_connections, "connection refused: too many connections");
            continue;
        };
        // Small RPCs must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        // The config as it is now: a reload changes the handshakes that follow it.
        let acceptor = TlsAcceptor::from(Arc::clone(&tls.borrow()));
        let incoming = incoming.clone();
        let timeout = limits.handshake_timeout;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let handshaken = tokio::time::timeout(timeout, handshake(&acceptor, tcp)).await;
            drop(handshake_slot);
            match handshaken {
                Ok(Ok((stream, identity))) => {
                    let conn = TlsConn {
                        stream,
                        info: ConnInfo {
                            identity: Arc::new(identity),
                            remote,
                        },
                        _permit: permit,
                        _open: metrics.connection_open(),
                    };
                    let _ = incoming.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    metrics.handshake_refused(refusal_kind(&e));
                    tracing::info!(%remote, error = %refusal_reason(&e), "TLS handshake refused")
                }
                Err(_) => {
                    metrics.handshake_refused(HandshakeRefusal::Timeout);
                    tracing::info!(%remote, "TLS handshake timed out")
                }
            }
        });
    }
}

/// The next connection on any of `listeners`. Each call starts polling at the listener
/// after the one that gave the last connection, so a busy listener cannot starve another.
/// An error comes with the address of the listener that failed.
async fn accept_any(
    listeners: &[TcpListener],
    first: &mut usize,
) -> Result<(TcpStream, SocketAddr), (String, io::Error)> {
    std::future::poll_fn(|cx| {
        for i in 0..listeners.len() {
            let at = (*first + i) % listeners.len();
            if let Poll::Ready(accepted) = listeners[at].poll_accept(cx) {
                *first = (at + 1) % listeners.len();
                return Poll::Ready(accepted.map_err(|e| {
                    let listen = listeners[at]
                        .local_addr()
                        .map_or_else(|_| "?".to_string(), |a| a.to_string());
                    (listen, e)
                }));
            }
        }
        Poll::Pending
    })
    .await
}

/// The rustls errors in `e`'s chain, whether wrapped in an I/O error (as tokio-rustls
/// returns them) or not.
fn tls_errors(e: &anyhow::Error) -> impl Iterator<Item = &rustls::Error> {
    e.chain()
        .filter_map(|cause| match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            None => cause.downcast_ref::<rustls::Error>(),
        })
}

/// Why a handshake failed, as a metric's label says it: one of a few kinds, so that the
/// label's values stay bounded whatever a client sends.
fn refusal_kind(e: &anyhow::Error) -> HandshakeRefusal {
    use rustls::CertificateError as C;
    let Some(tls) = tls_errors(e).next() else {
        return match e.downcast_ref::<crate::identity::IdentityError>() {
            Some(_) => HandshakeRefusal::BadSubject,
            None if e.is::<NoClientCertificate>() => HandshakeRefusal::NoCertificate,
            None => HandshakeRefusal::Other,
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeRefusal::NoCertificate,
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::Expired | C::ExpiredContext { .. } => HandshakeRefusal::CertificateExpired,
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                HandshakeRefusal::UnknownCa
            }
            C::Revoked => HandshakeRefusal::Revoked,
            C::Other(other) if other.0.is::<crate::identity::IdentityError>() => {
                HandshakeRefusal::BadSubject
            }
            _ => HandshakeRefusal::Other,
        },
        _ => HandshakeRefusal::Other,
    }
}

/// A connection that finished TLS without a client certificate.
#[derive(Debug, thiserror::Error)]
#[error("no client certificate")]
struct NoClientCertificate;

/// Why a handshake failed, as the log should say it: an identity the subject check refused
/// (see [`crate::identity::SubjectVerifier`]) reads as its own sentence, not as rustls'
/// debug form of a wrapped error.
fn refusal_reason(e: &anyhow::Error) -> String {
    let identity = tls_errors(e).find_map(|tls| match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<crate::identity::IdentityError>()
        }
        _ => None,
    });
    match identity {
        Some(reason) => reason.to_string(),
        None => e.to_string(),
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> anyhow::Result<(TlsStream<TcpStream>, Identity)> {
    let stream = acceptor.accept(tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(NoClientCertificate)?;
    let identity = Identity::from_certificate(leaf)?;
    Ok((stream, identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    /// As tokio-rustls returns a handshake's failure.
    fn wrapped(e: rustls::Error) -> anyhow::Error {
        anyhow::Error::new(io::Error::new(io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn refusals_fall_into_a_few_kinds() {
        let subject = rustls::OtherError(Arc::new(crate::identity::IdentityError::NoCommonName));
        for (e, want) in [
            (
                wrapped(rustls::Error::InvalidCertificate(C::Expired)),
                HandshakeRefusal::CertificateExpired,
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                HandshakeRefusal::UnknownCa,
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::BadSignature)),
                HandshakeRefusal::UnknownCa,
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::Revoked)),
                HandshakeRefusal::Revoked,
            ),
            (
                wrapped(rustls::Error::NoCertificatesPresented),
                HandshakeRefusal::NoCertificate,
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::Other(subject))),
                HandshakeRefusal::BadSubject,
            ),
            (
                anyhow::Error::new(crate::identity::IdentityError::NoCommonName),
                HandshakeRefusal::BadSubject,
            ),
            (
                anyhow::Error::new(NoClientCertificate),
                HandshakeRefusal::NoCertificate,
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::NotValidYet)),
                HandshakeRefusal::Other,
            ),
            (
                anyhow::Error::new(io::Error::from(io::ErrorKind::UnexpectedEof)),
                HandshakeRefusal::Other,
            ),
        ] {
            assert_eq!(refusal_kind(&e), want, "{e:#}");
        }
    }
}
