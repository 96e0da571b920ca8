//! Connecting to jobd: TCP, then mutual TLS 1.3 with our certificate, then gRPC.
//!
//! The rustls client config is built here (TLS 1.3 only, the server verified against the
//! given CA and by name) and handed to tonic through a custom connector, so the client
//! needs none of tonic's TLS features.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proto::v1::job_service_client::JobServiceClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Where to connect and with which credentials.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT`.
    pub server: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long the TCP connect and the TLS handshake may take together: a server that
    /// accepts and never answers (stopped, overloaded, a black-holed route) must not hang
    /// a script forever.
    pub connect_timeout: Duration,
}

/// The default of [`Target::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| {
        ConnectError::Config(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let pem = read(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ConnectError::Config(format!("{} is not a PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConnectError::Config(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnectError> {
    let pem = read(path, "key")?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| ConnectError::Config(format!("{} holds no private key", path.display())))
}

/// TLS 1.3 only; the server must chain to `ca`; we present `cert` with `key`.
pub fn tls_config(target: &Target) -> Result<Arc<ClientConfig>, ConnectError> {
    let mut roots = RootCertStore::empty();
    for c in certs(&target.ca, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| ConnectError::Config(format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&target.cert, "certificate")?, key(&target.key)?)
        .map_err(|e| ConnectError::Config(format!("bad client certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // One connection per run: nothing could be resumed, and jobd issues no tickets.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Splits `HOST:PORT` (or `[V6]:PORT`) into the host name to verify and the address.
fn server_name(server: &str) -> Result<ServerName<'static>, ConnectError> {
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h)
        .ok_or_else(|| ConnectError::Config(format!("{server:?}: expected HOST:PORT")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| ConnectError::Config(format!("{host:?} is not a valid host name")))
}

/// The host name of `--server` did not resolve. Typed, so that jobc says so in its own
/// words rather than in the resolver's.
#[derive(Debug, thiserror::Error)]
#[error("name not resolved: {0}")]
pub struct NameNotResolved(String);

impl NameNotResolved {
    #[cfg(test)]
    pub(crate) fn for_test(why: &str) -> Self {
        NameNotResolved(why.into())
    }
}

/// Connects TCP to `HOST:PORT`. IP literals and `localhost` (loopback by RFC 6761) skip
/// the resolver, whose start-up (NSS configuration, a helper thread) costs milliseconds
/// of a CLI run; other names are resolved as usual, and tried in the resolver's order.
async fn tcp_connect(server: &str) -> std::io::Result<TcpStream> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return TcpStream::connect(addr).await;
    }
    if let Some(port) = server
        .strip_prefix("localhost:")
        .and_then(|p| p.parse().ok())
    {
        return TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await;
    }
    let not_resolved =
        |why: String| std::io::Error::new(std::io::ErrorKind::NotFound, NameNotResolved(why));
    let addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| not_resolved(e.to_string()))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| not_resolved("no address".into())))
}

/// HTTP/2 settings this client offers jobd. Log batches are up to 1 MiB: with the default
/// 16 KiB frames, jobd sends each batch as 64 frames. 1 MiB frames and windows of a few
/// batches took a 200 MiB `logs --raw` from 0.28 s to 0.23-0.25 s (medians of 8 reads).
/// The windows also bound what jobd queues for each connection: with 8/16 MiB windows,
/// 1000 followers on 8 connections peaked jobd at 240 MiB; with these, at 141 MiB.
const MAX_FRAME_BYTES: u32 = 1024 * 1024;
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// Connects to jobd; fails if the server cannot be reached or the TLS handshake fails.
pub async fn connect(target: &Target) -> Result<JobServiceClient<Channel>, ConnectError> {
    let config = tls_config(target)?;
    connect_with(target, config).await
}

/// Like [`connect`], with a caller-built TLS config (tests use it to offer other versions).
pub async fn connect_with(
    target: &Target,
    config: Arc<ClientConfig>,
) -> Result<JobServiceClient<Channel>, ConnectError> {
    let name = server_name(&target.server)?;
    let server = target.server.clone();
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|_| ConnectError::Config(format!("{server:?}: expected HOST:PORT")))?
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    let connector = TlsConnector::from(config);
    let addr = server.clone();
    let limit = target.connect_timeout;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
            let handshake = async move {
                let tcp = tcp_connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            };
            async move {
                tokio::time::timeout(limit, handshake)
                    .await
                    .unwrap_or_else(|_| Err(handshake_timed_out(limit)))
            }
        }))
        .await
        .map_err(|source| ConnectError::Connect { server, source })?;
    // Output batches can be up to a few MiB once encoded.
    Ok(JobServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn handshake_timed_out(limit: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no TLS handshake within {} (--connect-timeout)",
            humantime::format_duration(limit)
        ),
    )
}

/// Finds out why a connection failed without a reason, typically a TLS alert that
/// arrived while a request was in flight: a fresh handshake, then one read, which gets
/// the server's HTTP/2 settings if it accepts us or its alert if it does not. Only an
/// alert is a diagnosis: any other failure of the fresh attempt (say, connection refused
/// by a server that has since shut down) tells nothing about the first one.
pub async fn diagnose(target: &Target) -> Option<crate::errors::Reason> {
    use tokio::io::AsyncReadExt;
    let config = tls_config(target).ok()?;
    let name = server_name(&target.server).ok()?;
    let attempt = async {
        let tcp = tcp_connect(&target.server).await?;
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        let mut byte = [0u8; 1];
        tls.read(&mut byte).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Err(e)) => crate::errors::alert_of(&e).map(crate::errors::alert_reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts TCP and never answers must not hang jobc past its timeout.
    #[tokio::test]
    async fn a_silent_server_times_out_the_handshake() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap().to_string();
        let target = Target {
            server,
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            connect_timeout: Duration::from_millis(300),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let started = std::time::Instant::now();
        let attempt = connect_with(&target, Arc::new(config));
        let result = tokio::time::timeout(Duration::from_secs(20), attempt)
            .await
            .expect("connect_with outlived its own timeout by 20 s");
        let elapsed = started.elapsed();
        let Err(ConnectError::Connect { source, .. }) = result else {
            panic!("a silent server was not an error");
        };
        let mut chain: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        let mut timed_out = false;
        while let Some(e) = chain {
            timed_out |= e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
            chain = e.source();
        }
        assert!(timed_out, "not a time-out: {source:?}");
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        drop(listener);
    }
}
