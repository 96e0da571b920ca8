//! Wiring: TLS listeners → tonic (JobService, health, reflection) → worker, and the
//! graceful shutdown that ties them together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::v1 as pb;
use proto::v1::job_service_server::JobServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use worker::Worker;

use crate::audit::AuditLog;
use crate::credentials::Credentials;
use crate::metrics::{self, Metrics};
use crate::oversized;
use crate::pki;
use crate::service::{Service, ServiceLimits};
use crate::tls::{self, TransportLimits};

/// Largest request message; a Start request is far smaller.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The port of the default addresses.
pub const DEFAULT_PORT: u16 = 50051;

/// Where jobd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// In the order given; the address file lists them so.
    pub addrs: Vec<SocketAddr>,
    /// The built-in default (localhost on both IP versions). A host without IPv6 cannot
    /// bind its `[::1]`; that host still gets a working development server on 127.0.0.1,
    /// where an address someone asked for and cannot have is an error.
    pub is_default: bool,
}

impl Listen {
    /// 127.0.0.1 and [::1], port 50051: `localhost` resolves to either, depending on the
    /// client and the host's resolver configuration.
    pub fn localhost() -> Listen {
        Listen {
            addrs: vec![
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, DEFAULT_PORT)),
            ],
            is_default: true,
        }
    }
}

impl Listen {
    /// Addresses someone asked for; one given twice is bound once.
    pub fn from_addrs(addrs: impl IntoIterator<Item = SocketAddr>) -> Listen {
        let mut unique: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        Listen {
            addrs: unique,
            is_default: false,
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen {
            addrs: vec![addr],
            is_default: false,
        }
    }
}

/// Binds every address of `listen`, in order. Only the default's IPv6 address may be
/// missing (on a host without IPv6, with a warning); any other failure names its address.
pub async fn bind(listen: &Listen) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(listen.addrs.len());
    for &addr in &listen.addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(e) if listen.is_default && addr.is_ipv6() && means_no_ipv6(&e) => {
                tracing::warn!(%addr, error = %e, "this host has no IPv6 loopback: not listening on it");
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot listen on {addr}"))),
        }
    }
    anyhow::ensure!(!listeners.is_empty(), "no address to listen on");
    Ok(listeners)
}

/// What binding an IPv6 address fails with where IPv6 is off: the family is not there at
/// all (EAFNOSUPPORT, `ipv6.disable=1`) or has no `::1` (EADDRNOTAVAIL, IPv6 disabled on
/// `lo`).
fn means_no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// Everything `jobd serve` needs, after flags and the config file are merged.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Listen,
    pub tls: TlsFiles,
    /// State dir, grace period, cgroups and limit policy.
    pub worker: worker::Config,
    pub transport: TransportLimits,
    pub service: ServiceLimits,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// The audit log (see `audit.rs`); `None`: none is kept.
    pub audit_log: Option<PathBuf>,
    /// Where to serve Prometheus metrics over plain HTTP (see `metrics.rs`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

pub use crate::credentials::TlsFiles;

/// The audit log's name in the state dir, where it is kept by default.
pub const AUDIT_LOG: &str = "audit.log";

impl ServerConfig {
    /// Secure defaults: jobs in new PID, mount and network namespaces (as far as the kernel
    /// allows) and, when jobd runs as root, each user's under a uid of their own.
    pub fn new(listen: impl Into<Listen>, state_dir: PathBuf, tls: TlsFiles) -> Self {
        let audit_log = Some(state_dir.join(AUDIT_LOG));
        let mut worker = worker::Config::new(state_dir);
        worker.isolation = worker::Isolation::ALL;
        worker.job_uids = Some(worker::UidRange::DYNAMIC_USER);
        ServerConfig {
            listen: listen.into(),
            tls,
            worker,
            transport: TransportLimits {
                max_connections: 1024,
                handshake_timeout: Duration::from_secs(5),
                max_handshakes_per_address: 16,
            },
            service: ServiceLimits::default(),
            max_streams_per_connection: 256,
            audit_log,
            metrics_listen: None,
        }
    }
}

/// Creates the development PKI in `<state dir>/pki` unless it exists, and returns where
/// it is. Used when `jobd serve` is given no TLS files.
pub fn ensure_dev_pki(state_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = state_dir.join("pki");
    if !dir.join("ca.pem").exists() {
        pki::init(&pki::PkiOptions::new(&dir))
            .with_context(|| format!("cannot create a development PKI in {}", dir.display()))?;
        tracing::warn!(
            dir = %dir.display(),
            "created a development PKI (CA, server and client certificates for admin, alice, bob); \
             do not use it in production"
        );
    }
    Ok(dir)
}

/// Serves on `listeners` until `shutdown` completes (see [`Server::serve`]).
pub async fn serve(
    config: ServerConfig,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut server = Server::open(config)?;
    server.bind_metrics().await?;
    server.serve(listeners, shutdown).await
}

/// A server whose state is loaded and whose TLS is set up, ready to serve.
pub struct Server {
    config: ServerConfig,
    tls: Credentials,
    audit: Option<Arc<AuditLog>>,
    worker: Worker,
    metrics: Metrics,
    /// Bound by [`Server::bind_metrics`], served from [`Server::serve`] on.
    metrics_listener: Option<TcpListener>,
}

/// What SIGHUP does to a running server: new TLS material for new handshakes, and the
/// audit log opened again (after a rotation). Connections and jobs are untouched.
#[derive(Debug, Clone)]
pub struct Reloader {
    tls: Credentials,
    audit: Option<Arc<AuditLog>>,
}

impl Reloader {
    /// Reloads what it can; each failure keeps the old material and is logged and returned.
    pub fn reload(&self) -> anyhow::Result<()> {
        let tls = self.tls.reload();
        match &tls {
            Ok(()) => tracing::info!("reloaded the TLS certificate, key, CA and CRL"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed: keeping the TLS material in use")
            }
        }
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.reopen() {
                tracing::error!(path = %audit.path().display(), error = %e, "cannot reopen the audit log: writing on to the old file");
            }
        }
        tls
    }
}

impl Server {
    /// Everything that can fail before the server accepts a connection: TLS files, the
    /// audit log, the state-dir lock, recovery of earlier jobs, cgroups.
    pub fn open(config: ServerConfig) -> anyhow::Result<Server> {
        let tls = Credentials::load(config.tls.clone()).context("cannot set up TLS")?;
        // After the worker, which makes the state dir and takes its lock.
        let worker = Worker::new(config.worker.clone()).context("cannot start the worker")?;
        let audit = match &config.audit_log {
            Some(path) => Some(Arc::new(AuditLog::open(path).with_context(|| {
                format!("cannot open the audit log {}", path.display())
            })?)),
            None => None,
        };
        Ok(Server {
            config,
            tls,
            audit,
            worker,
            metrics: Metrics::new(),
            metrics_listener: None,
        })
    }

    /// Binds the metrics endpoint's address, if the config names one, and returns the
    /// address bound (its port, for port 0). Called before [`Server::serve`], so that an
    /// address that cannot be had stops jobd before it says it is ready; `serve` binds it
    /// itself otherwise.
    pub async fn bind_metrics(&mut self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = self.config.metrics_listen else {
            return Ok(None);
        };
        let listener = match self.metrics_listener.take() {
            Some(listener) => listener,
            None => metrics::bind(addr).await?,
        };
        let bound = listener
            .local_addr()
            .with_context(|| format!("cannot read the address of the metrics listener {addr}"))?;
        self.metrics_listener = Some(listener);
        Ok(Some(bound))
    }

    /// The handle that reloads this server's TLS material and audit log.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            tls: self.tls.clone(),
            audit: self.audit.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, ends log streams, lets
    /// in-flight calls finish, and stops every job still running. Every listener feeds the
    /// one accept loop, so the connection limits count connections over all of them.
    pub async fn serve(
        mut self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.bind_metrics().await?;
        let Server {
            config,
            tls,
            audit,
            worker,
            metrics,
            metrics_listener,
        } = self;
        if let Some(retention) = config.worker.retention {
            tokio::spawn(prune_periodically(worker.clone(), retention));
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut service = Service::new(
            worker.clone(),
            config.service.clone(),
            shutdown_rx,
            metrics.clone(),
        );
        if let Some(audit) = audit {
            service = service.with_audit(audit);
        }
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<JobServiceServer<Service>>()
            .await;
        // Both reflection versions: grpcurl and other tools still ask for v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("cannot build the reflection service")?;

        let (conn_tx, conn_rx) = mpsc::channel(64);
        let accept = tokio::spawn(tls::accept_loop(
            listeners,
            tls.subscribe(),
            config.transport.clone(),
            conn_tx,
            metrics.clone(),
        ));
        // Scrapes go on while jobd shuts down, until its calls have ended.
        let scrapes =
            metrics_listener.map(|listener| tokio::spawn(metrics::serve(listener, metrics)));
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; ending log streams");
            accept.abort();
            shutdown_tx.send_replace(true);
        };

        tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(tower::util::MapResponseLayer::new(oversized::map_response))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                JobServiceServer::new(service)
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
                    // Other gRPC clients may compress what they send (grpcio with
                    // compression=Gzip); responses are compressed only for a client that
                    // says it accepts gzip, which jobc does not (see BENCHMARKS.md).
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal)
            .await
            .context("server failed")?;

        if let Some(scrapes) = scrapes {
            scrapes.abort();
        }
        tracing::info!("stopping running jobs");
        worker.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Deletes jobs past their retention, checking a few times per retention period (at
/// least every minute, at most every hour).
async fn prune_periodically(worker: Worker, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the worker pruned at start-up already
    loop {
        tick.tick().await;
        let worker = worker.clone();
        // Deleting files blocks; keep it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || worker.prune(retention)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_defaults_ipv6_address_may_be_missing() {
        // No host has an address of 2001:db8::/32 (documentation only): binding one fails
        // as binding [::1] does where IPv6 is off.
        let absent: SocketAddr = "[2001:db8::1]:0".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let default_like = Listen {
            addrs: vec![v4, absent],
            is_default: true,
        };
        let bound = bind(&default_like).await.unwrap();
        assert_eq!(bound.len(), 1);
        assert!(bound[0].local_addr().unwrap().is_ipv4());

        let err = bind(&Listen::from_addrs([v4, absent])).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("cannot listen on [2001:db8::1]:0: "),
            "{text}"
        );

        // Only a missing IPv6 is forgiven, not an address in use.
        assert!(!means_no_ipv6(&std::io::Error::from_raw_os_error(
            libc::EADDRINUSE
        )));
        assert!(means_no_ipv6(&std::io::Error::from_raw_os_error(
            libc::EAFNOSUPPORT
        )));
    }
}
