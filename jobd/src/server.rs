//! Wiring: TLS listener → tonic (JobService, health, reflection) → worker, and the
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
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use worker::Worker;

use crate::oversized;
use crate::pki;
use crate::service::{Service, ServiceLimits};
use crate::tls::{self, TransportLimits};

/// Largest request message; a Start request is far smaller.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Everything `jobd serve` needs, after flags and the config file are merged.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// State dir, grace period, cgroups and limit policy.
    pub worker: worker::Config,
    pub transport: TransportLimits,
    pub service: ServiceLimits,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
}

/// Where the CA, the server certificate and its key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &std::path::Path) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }
}

impl ServerConfig {
    /// Secure defaults: jobs in new PID, mount and network namespaces (as far as the kernel
    /// allows) and, when jobd runs as root, each user's under a uid of their own.
    pub fn new(listen: SocketAddr, state_dir: PathBuf, tls: TlsFiles) -> Self {
        let mut worker = worker::Config::new(state_dir);
        worker.isolation = worker::Isolation::ALL;
        worker.job_uids = Some(worker::UidRange::DYNAMIC_USER);
        ServerConfig {
            listen,
            tls,
            worker,
            transport: TransportLimits {
                max_connections: 1024,
                handshake_timeout: Duration::from_secs(5),
                max_handshakes_per_address: 16,
            },
            service: ServiceLimits::default(),
            max_streams_per_connection: 256,
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

/// Serves on `listener` until `shutdown` completes (see [`Server::serve`]).
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::open(config)?.serve(listener, shutdown).await
}

/// A server whose state is loaded and whose TLS is set up, ready to serve.
pub struct Server {
    config: ServerConfig,
    tls: Arc<rustls::ServerConfig>,
    worker: Worker,
}

impl Server {
    /// Everything that can fail before the server accepts a connection: TLS files, the
    /// state-dir lock, recovery of earlier jobs, cgroups.
    pub fn open(config: ServerConfig) -> anyhow::Result<Server> {
        let tls = tls::server_config(&config.tls.ca, &config.tls.cert, &config.tls.key)
            .context("cannot set up TLS")?;
        let worker = Worker::new(config.worker.clone()).context("cannot start the worker")?;
        Ok(Server {
            config,
            tls,
            worker,
        })
    }

    /// Serves until `shutdown` completes, then stops accepting, ends log streams, lets
    /// in-flight calls finish, and stops every job still running.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            config,
            tls: tls_config,
            worker,
        } = self;
        if let Some(retention) = config.worker.retention {
            tokio::spawn(prune_periodically(worker.clone(), retention));
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let service = Service::new(worker.clone(), config.service.clone(), shutdown_rx);
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
            listener,
            TlsAcceptor::from(tls_config),
            config.transport.clone(),
            conn_tx,
        ));
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
                JobServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal)
            .await
            .context("server failed")?;

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
