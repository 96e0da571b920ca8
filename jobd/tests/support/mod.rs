//! What jobd's in-process tests share: a server on 127.0.0.1 with its own PKI.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use jobc::client::{self, Target};
use jobd::pki::{self, PkiOptions};
use jobd::server::{ServerConfig, TlsFiles};
use proto::v1::job_service_client::JobServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// jobd in this process on 127.0.0.1, with the development PKI in a temporary dir.
pub struct TestServer {
    addr: std::net::SocketAddr,
    pki: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
        // A 0755 scratch dir, as /var/lib is: a 0700 one would hide the modes of the
        // state dir that jobd makes inside it.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init(&PkiOptions::new(&pki_dir)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config =
            ServerConfig::new(addr, dir.path().join("state"), TlsFiles::in_dir(&pki_dir));
        tune(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(jobd::server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            pki: pki_dir,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self, user: &str) -> JobServiceClient<Channel> {
        let target = Target {
            server: format!("localhost:{}", self.addr.port()),
            ca: self.pki.join("ca.pem"),
            cert: self.pki.join(format!("{user}.pem")),
            key: self.pki.join(format!("{user}-key.pem")),
            connect_timeout: client::DEFAULT_CONNECT_TIMEOUT,
        };
        client::connect(&target).await.unwrap()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task.take().unwrap())
            .await
            .expect("server did not shut down")
            .unwrap()
            .unwrap();
    }
}
