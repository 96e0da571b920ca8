//! What jobd's in-process tests share: a scratch dir laid out as production's (a PKI with
//! the development users, plus `nobody` with no role, `both` with both roles and `carol`,
//! a user; the state dir a not-yet-existing child of a 0755 folder), and a server on
//! 127.0.0.1 over it, which kills the jobs of a test that fails before it shuts the server
//! down.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use jobc::client::{self, Target};
use jobd::identity::Role;
use jobd::pki::{self, PkiOptions, User};
use jobd::server::{ServerConfig, TlsFiles};
use proto::v1::job_service_client::JobServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A PKI and a state dir in a 0755 temporary folder, as `/var/lib` is: a 0700 one would
/// hide the modes of the state dir that jobd makes inside it. A test may fill the state
/// dir before a server starts on it, and start several servers on it in turn.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut opts = PkiOptions::new(dir.path().join("pki"));
        for (name, roles) in [
            ("nobody", vec![]),
            ("both", vec![Role::User, Role::Admin]),
            ("carol", vec![Role::User]),
        ] {
            opts.users.push(User {
                name: name.into(),
                roles,
            });
        }
        pki::init(&opts).unwrap();
        Scratch { dir }
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

/// jobd in this process on 127.0.0.1.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub pki: PathBuf,
    pub state: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped last, after `Drop` has killed what is left of the jobs.
    owned: Option<Scratch>,
}

impl TestServer {
    /// A server on a scratch dir of its own.
    pub async fn start(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let scratch = Scratch::new();
        let mut server = TestServer::start_in(&scratch, tune).await;
        server.owned = Some(scratch);
        server
    }

    /// A server on `scratch`, which outlives it.
    pub async fn start_in(scratch: &Scratch, tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(addr, scratch.state(), TlsFiles::in_dir(&scratch.pki()));
        tune(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(jobd::server::serve(config, vec![listener], async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            pki: scratch.pki(),
            state: scratch.state(),
            stop: Some(stop),
            task: Some(task),
            owned: None,
        }
    }

    pub fn target(&self, user: &str) -> Target {
        target_in(&self.pki, &self.pki, user, self.addr)
    }

    pub async fn client(&self, user: &str) -> JobServiceClient<Channel> {
        client::connect(&self.target(user)).await.unwrap()
    }

    /// A client that takes messages up to `max_message` bytes only (gRPC's default is
    /// 4 MiB, which most clients keep; jobc allows more).
    pub async fn client_limited(
        &self,
        user: &str,
        max_message: usize,
    ) -> JobServiceClient<Channel> {
        self.client(user)
            .await
            .max_decoding_message_size(max_message)
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

/// A test that fails before `shutdown` would leave its jobs running: they are in sessions
/// of their own, and nothing else stops them.
impl Drop for TestServer {
    fn drop(&mut self) {
        if self.task.is_some() {
            kill_recorded_jobs(&self.state);
        }
    }
}

use testkit::kill_recorded_jobs;

pub fn target_in(ca_dir: &Path, user_dir: &Path, user: &str, addr: std::net::SocketAddr) -> Target {
    Target {
        ca: ca_dir.join("ca.pem"),
        ..testkit::target(user_dir, user, addr.port())
    }
}

/// Starts `argv` as the client's user; returns the job id.
pub async fn start(c: &mut JobServiceClient<Channel>, argv: &[&str]) -> String {
    c.start(proto::v1::StartRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .job_id
}
