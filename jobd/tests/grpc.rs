//! jobd over real TCP and TLS on 127.0.0.1, with certificates made by its own PKI code:
//! the RBAC matrix, refused handshakes, many concurrent followers, and cleanup of
//! streams whose client went away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobc::client::{self, Target};
use jobd::identity::Role;
use jobd::pki::{self, PkiOptions, User};
use jobd::server::{ServerConfig, TlsFiles};
use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

struct TestServer {
    addr: std::net::SocketAddr,
    pki: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    async fn start(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
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
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn target(&self, user: &str) -> Target {
        target_in(&self.pki, &self.pki, user, self.addr)
    }

    async fn client(&self, user: &str) -> JobServiceClient<Channel> {
        client::connect(&self.target(user)).await.unwrap()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task.take().unwrap())
            .await
            .expect("server did not shut down")
            .unwrap()
            .unwrap();
    }
}

fn target_in(ca_dir: &Path, user_dir: &Path, user: &str, addr: std::net::SocketAddr) -> Target {
    Target {
        server: format!("localhost:{}", addr.port()),
        ca: ca_dir.join("ca.pem"),
        cert: user_dir.join(format!("{user}.pem")),
        key: user_dir.join(format!("{user}-key.pem")),
        connect_timeout: jobc::client::DEFAULT_CONNECT_TIMEOUT,
    }
}

async fn start(c: &mut JobServiceClient<Channel>, argv: &[&str]) -> String {
    c.start(pb::StartRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .job_id
}

async fn status(
    c: &mut JobServiceClient<Channel>,
    id: &str,
) -> Result<pb::JobStatus, tonic::Status> {
    c.status(pb::StatusRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

/// All output bytes of a job, following it to the end or not.
async fn read_logs(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    follow: bool,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .logs(pb::LogsRequest {
            job_id: id.into(),
            follow,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        for r in batch.records {
            out.extend_from_slice(&r.data);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_matrix() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.client("admin").await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut both = server.client("both").await;

    // Anyone with a role may start.
    let jobs = [
        ("admin", start(&mut admin, &["sleep", "60"]).await),
        ("alice", start(&mut alice, &["sleep", "60"]).await),
        ("bob", start(&mut bob, &["sleep", "60"]).await),
    ];

    // list: users see their own jobs, admins everyone's.
    for (name, client, expected) in [
        ("admin", &mut admin, vec!["admin", "alice", "bob"]),
        ("alice", &mut alice, vec!["alice"]),
        ("bob", &mut bob, vec!["bob"]),
        ("both", &mut both, vec!["admin", "alice", "bob"]),
    ] {
        let listed = client
            .list(pb::ListRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        let mut owners: Vec<String> = listed.iter().map(|j| j.owner.clone()).collect();
        owners.sort();
        assert_eq!(owners, expected, "list as {name}");
    }

    // status and logs: own jobs for users, any for admins; others' jobs do not exist.
    for (caller, client) in [
        ("admin", &mut admin),
        ("alice", &mut alice),
        ("bob", &mut bob),
    ] {
        for (owner, id) in &jobs {
            let allowed = caller == "admin" || caller == *owner;
            let st = status(client, id).await;
            let logs = read_logs(client, id, false).await;
            if allowed {
                assert_eq!(st.unwrap().owner, *owner);
                assert!(logs.is_ok(), "{caller} logs of {owner}'s job");
            } else {
                let st = st.unwrap_err();
                assert_eq!(
                    st.code(),
                    Code::NotFound,
                    "{caller} status of {owner}'s job"
                );
                assert_eq!(st.message(), format!("job {id} not found"));
                assert_eq!(
                    logs.unwrap_err().code(),
                    Code::NotFound,
                    "{caller} logs of {owner}'s job"
                );
            }
        }
    }

    // stop: a user cannot stop another's job (and it keeps running); the owner can.
    for (caller, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        for (owner, id) in &jobs {
            if caller != *owner {
                let err = client
                    .stop(pb::StopRequest {
                        job_id: id.clone(),
                        grace_period_seconds: None,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::NotFound, "{caller} stop of {owner}'s job");
            }
        }
    }
    for (_, id) in &jobs {
        assert_eq!(
            status(&mut admin, id).await.unwrap().state,
            pb::JobState::Running as i32
        );
    }
    let stopped = alice
        .stop(pb::StopRequest {
            job_id: jobs[1].1.clone(),
            grace_period_seconds: Some(1),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    // `sleep` is PID 1 of its PID namespace without a SIGTERM handler: the kernel drops
    // SIGTERM, so the stop ends with SIGKILL after the grace period.
    assert_eq!(
        (stopped.state, stopped.signal, stopped.stop_requested),
        (pb::JobState::Stopped as i32, Some(9), true)
    );
    // An admin stops anyone's job.
    for id in [&jobs[0].1, &jobs[2].1] {
        admin
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period_seconds: Some(1),
            })
            .await
            .unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_certificate_without_a_role_may_do_nothing() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sleep", "60"]).await;
    let mut nobody = server.client("nobody").await;
    let denied = [
        nobody
            .start(pb::StartRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        nobody.list(pb::ListRequest {}).await.map(|_| ()),
        status(&mut nobody, &id).await.map(|_| ()),
        status(&mut nobody, "not-a-uuid").await.map(|_| ()),
        read_logs(&mut nobody, &id, false).await.map(|_| ()),
        nobody
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period_seconds: None,
            })
            .await
            .map(|_| ()),
    ];
    for result in denied {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("no known role"), "{}", err.message());
    }
    assert_eq!(
        status(&mut alice, &id).await.unwrap().state,
        pb::JobState::Running as i32
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_status_codes() {
    let server = TestServer::start(|c| c.service.request.max_argv_bytes = 1024).await;
    let mut alice = server.client("alice").await;
    let start_err = |argv: Vec<String>| {
        let mut c = alice.clone();
        async move {
            c.start(pb::StartRequest {
                argv,
                ..Default::default()
            })
            .await
            .unwrap_err()
        }
    };
    let e = start_err(vec![]).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("the command is empty"),
        "{}",
        e.message()
    );
    let e = start_err(vec!["no-such-program-xyz".into()]).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "cannot start no-such-program-xyz: command not found"
    );
    let e = start_err(vec!["echo".into(), "a\0b".into()]).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = start_err(vec!["echo".into(), "x".repeat(2000)]).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Past the 4 MiB message limit the request is refused before any handler runs.
    let e = start_err(vec!["echo".into(), "x".repeat(5 << 20)]).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "the request is larger than the server accepts (4 MiB)"
    );

    let e = status(&mut alice, "1234").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "malformed job id \"1234\": expected a UUID");
    let e = status(&mut alice, "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let id = start(&mut alice, &["sleep", "60"]).await;
    let e = alice
        .stop(pb::StopRequest {
            job_id: id.clone(),
            grace_period_seconds: Some(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let limited = alice
        .start(pb::StartRequest {
            argv: vec!["true".into()],
            limits: Some(pb::Limits {
                pids: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::FailedPrecondition, "{limited:?}");
    // Stopping twice is fine.
    for _ in 0..2 {
        alice
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period_seconds: None,
            })
            .await
            .unwrap();
    }
    server.shutdown().await;
}

/// Connects with raw TLS and reads once: the server's verdict on our certificate arrives
/// as an alert right after the handshake (TLS 1.3 sends client certificates last).
async fn handshake_verdict(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte)).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        // No alert and no close: the server accepted us and waits for HTTP/2.
        Err(_) => Ok(()),
    }
}

fn client_config(
    server: &TestServer,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<(&Path, &str)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in jobd::tls::load_certs(&server.pki.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(jobd::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((dir, user)) => builder
            .with_client_auth_cert(
                jobd::tls::load_certs(&dir.join(format!("{user}.pem"))).unwrap(),
                jobd::tls::load_key(&dir.join(format!("{user}-key.pem"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test]
async fn handshakes_are_refused_for_bad_clients() {
    let server = TestServer::start(|_| {}).await;
    let tls13 = &[&rustls::version::TLS13][..];

    // The reference: a good client is accepted.
    let good = client_config(&server, tls13, Some((&server.pki, "alice")));
    assert_eq!(handshake_verdict(server.addr, good).await, Ok(()));

    // TLS 1.2 only: no common protocol version.
    let tls12 = client_config(
        &server,
        &[&rustls::version::TLS12],
        Some((&server.pki, "alice")),
    );
    let err = handshake_verdict(server.addr, tls12).await.unwrap_err();
    assert!(err.contains("ProtocolVersion"), "{err}");

    // No client certificate.
    let anonymous = client_config(&server, tls13, None);
    let err = handshake_verdict(server.addr, anonymous).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");

    // A certificate from another CA. Both CAs carry the same name, so the server finds
    // "its" issuer and the signature check fails (DecryptError); a differently named CA
    // would give UnknownCA. Either way: refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    pki::init(&PkiOptions::new(other.path())).unwrap();
    let foreign = client_config(&server, tls13, Some((other.path(), "alice")));
    let err = handshake_verdict(server.addr, foreign).await.unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("DecryptError"),
        "{err}"
    );

    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    pki::add_user(
        &server.pki,
        &User {
            name: "expired".into(),
            roles: vec![Role::User],
        },
        now - time::Duration::days(30),
        now - time::Duration::days(1),
        false,
    )
    .unwrap();
    let expired = client_config(&server, tls13, Some((&server.pki, "expired")));
    let err = handshake_verdict(server.addr, expired).await.unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");

    // And through the real client, the refusal surfaces as an error, never a reply.
    let target = target_in(&server.pki, &server.pki, "expired", server.addr);
    let outcome = match client::connect(&target).await {
        Err(_) => true,
        Ok(mut c) => c.list(pb::ListRequest {}).await.is_err(),
    };
    assert!(outcome, "an expired certificate got a reply");
    server.shutdown().await;
}

/// A client session store that remembers, and counts, the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct TicketCounter {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl TicketCounter {
    fn new() -> Self {
        TicketCounter {
            inner: rustls::client::ClientSessionMemoryCache::new(8),
            tickets: Default::default(),
        }
    }
}

impl rustls::client::ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, v: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, v)
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, v: Tls13ClientSessionValue) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, v)
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A resumed TLS session would skip the client certificate check, so jobd offers none: a
/// client that would gladly resume gets no ticket.
#[tokio::test]
async fn the_server_offers_no_session_resumption() {
    let server = TestServer::start(|_| {}).await;
    let target = server.target("alice");
    let store = Arc::new(TicketCounter::new());
    let mut config = (*client::tls_config(&target).unwrap()).clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    let mut c = client::connect_with(&target, Arc::new(config))
        .await
        .unwrap();
    // Tickets would come right after the handshake, before any reply.
    c.list(pb::ListRequest {}).await.unwrap();
    c.list(pb::ListRequest {}).await.unwrap();
    assert_eq!(
        store.tickets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the server sent session tickets"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_follow_one_log_to_the_end() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    // About 2 MB, written over about a second, so followers join mid-stream.
    let id = start(
        &mut alice,
        &["sh", "-c", "i=0; while [ $i -lt 100 ]; do head -c 20000 /dev/zero | tr '\\0' a; echo $i; i=$((i+1)); sleep 0.01; done"],
    )
    .await;
    let mut followers = Vec::new();
    for _ in 0..200 {
        let target = server.target("alice");
        let id = id.clone();
        followers.push(tokio::spawn(async move {
            let mut c = client::connect(&target).await.unwrap();
            read_logs(&mut c, &id, true).await.unwrap()
        }));
    }
    let mut outputs = Vec::new();
    for f in followers {
        outputs.push(
            tokio::time::timeout(Duration::from_secs(120), f)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let whole = read_logs(&mut alice, &id, false).await.unwrap();
    assert_eq!(status(&mut alice, &id).await.unwrap().exit_code, Some(0));
    assert!(whole.len() > 2_000_000, "{}", whole.len());
    for out in outputs {
        assert!(
            out == whole,
            "a follower got {} of {} bytes",
            out.len(),
            whole.len()
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_leaves_nothing_behind() {
    // Two log streams at most: if a dropped stream leaked its reader, the next would fail.
    let server = TestServer::start(|c| c.service.max_log_streams = 2).await;
    let mut alice = server.client("alice").await;
    let id = start(
        &mut alice,
        &["sh", "-c", "while :; do echo tick; sleep 0.01; done"],
    )
    .await;
    for _round in 0..3 {
        let mut streams = Vec::new();
        for _ in 0..2 {
            let mut c = server.client("alice").await;
            let mut s = c
                .logs(pb::LogsRequest {
                    job_id: id.clone(),
                    follow: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(s.message().await.unwrap().is_some());
            streams.push((c, s));
        }
        // A third is refused while two are open.
        let err = read_logs(&mut alice, &id, true).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        // Clients go away mid-stream: connections and streams dropped.
        drop(streams);
        // The server notices and frees both slots.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = server.client("alice").await;
            match c
                .logs(pb::LogsRequest {
                    job_id: id.clone(),
                    follow: false,
                })
                .await
            {
                Ok(_) => break,
                Err(e) if e.code() == Code::ResourceExhausted => {
                    assert!(tokio::time::Instant::now() < deadline, "log streams leaked");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Give the probe's own (finished) stream time to release its slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alice
        .stop(pb::StopRequest {
            job_id: id,
            grace_period_seconds: None,
        })
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_follows_cleanly_and_stops_jobs() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sh", "-c", "echo started; exec sleep 600"]).await;
    let pid = status(&mut alice, &id).await.unwrap().pid as i32;
    let mut follow = alice
        .logs(pb::LogsRequest {
            job_id: id.clone(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(follow.message().await.unwrap().is_some());
    let stopping = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(10), follow.message())
        .await
        .expect("follow did not end at shutdown");
    match end {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        Ok(None) => {}
        Ok(Some(_)) => panic!("unexpected output"),
    }
    stopping.await.unwrap();
    // The job was stopped with the server.
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start(|_| {}).await;
    let config = jobc::client::tls_config(&server.target("alice")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let port = server.addr.port();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://localhost:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "jobworker.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"jobworker.v1.JobService".to_string()),
        "{names:?}"
    );
    server.shutdown().await;
}
