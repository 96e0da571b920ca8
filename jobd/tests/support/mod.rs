//! What jobd's in-process tests share: a server on 127.0.0.1 with its own PKI (the
//! development users, plus `nobody` with no role and `both` with both roles), which kills
//! the jobs of a test that fails before it shuts the server down.
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

/// jobd in this process on 127.0.0.1, with its PKI and state in a temporary dir.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub pki: PathBuf,
    pub state: PathBuf,
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
        let mut opts = PkiOptions::new(&pki_dir);
        opts.users.push(User {
            name: "nobody".into(),
            roles: vec![],
        });
        opts.users.push(User {
            name: "both".into(),
            roles: vec![Role::User, Role::Admin],
        });
        pki::init(&opts).unwrap();
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
            state: dir.path().join("state"),
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn target(&self, user: &str) -> Target {
        target_in(&self.pki, &self.pki, user, self.addr)
    }

    pub async fn client(&self, user: &str) -> JobServiceClient<Channel> {
        client::connect(&self.target(user)).await.unwrap()
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
/// of their own, and nothing else stops them. Kill each one still alive, by the pid and
/// start time its record holds, so only this test's processes are touched.
impl Drop for TestServer {
    fn drop(&mut self) {
        if self.task.is_none() {
            return;
        }
        let Ok(dirs) = std::fs::read_dir(self.state.join("jobs")) else {
            return;
        };
        for dir in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(dir.path().join("job.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let (Some(pid), Some(ticks)) = (record["pid"].as_i64(), record["start_ticks"].as_u64())
            else {
                continue;
            };
            let alive_as_recorded = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                    // Field 22 of stat is the 20th after the command name.
                    fields.get(19)?.parse::<u64>().ok()
                })
                == Some(ticks);
            if alive_as_recorded {
                // SAFETY: kill has no memory preconditions. The job leads its own session
                // and process group (and is PID 1 of its PID namespace, if it has one).
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

pub fn target_in(ca_dir: &Path, user_dir: &Path, user: &str, addr: std::net::SocketAddr) -> Target {
    Target {
        server: format!("localhost:{}", addr.port()),
        ca: ca_dir.join("ca.pem"),
        cert: user_dir.join(format!("{user}.pem")),
        key: user_dir.join(format!("{user}-key.pem")),
        connect_timeout: jobc::client::DEFAULT_CONNECT_TIMEOUT,
    }
}
