//! jobd over real TCP and TLS on 127.0.0.1, with certificates made by its own PKI code:
//! the RBAC matrix, refused handshakes, many concurrent followers, and cleanup of
//! streams whose client went away.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobc::client::{self, Target};
use jobd::identity::Role;
use jobd::pki::{self, PkiOptions, User};
use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::Code;

mod support;
use support::{start, target_in, TestServer};

async fn status(
    c: &mut JobServiceClient<Channel>,
    id: &str,
) -> Result<pb::JobStatus, tonic::Status> {
    c.status(pb::StatusRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

/// Waits (up to 10 s) until the job is no longer running.
async fn wait_ended(c: &mut JobServiceClient<Channel>, id: &str) -> pb::JobStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(c, id).await.unwrap();
        if st.state != pb::JobState::Running as i32 {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job's whole output, followed to its end (up to 20 s).
async fn output(c: &mut JobServiceClient<Channel>, id: &str) -> String {
    let out = tokio::time::timeout(Duration::from_secs(20), read_logs(c, id, true))
        .await
        .expect("the job's output did not end")
        .unwrap();
    String::from_utf8(out).unwrap()
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
            start: None,
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

/// A Start's reply says how long the server took over it, as `server-timing: start;dur=<ms>`
/// (what the benchmark reads), and no longer than the client waited for the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reply_carries_the_servers_own_time() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let sent = std::time::Instant::now();
    let reply = alice
        .start(pb::StartRequest {
            argv: vec!["true".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let round_trip = sent.elapsed();
    let timing = reply
        .metadata()
        .get("server-timing")
        .expect("a server-timing in the Start reply")
        .to_str()
        .unwrap()
        .to_owned();
    let ms: f64 = timing
        .strip_prefix("start;dur=")
        .unwrap_or_else(|| panic!("not of the form start;dur=<ms>: {timing:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{timing:?}: {e}"));
    assert!(
        ms > 0.0 && ms <= round_trip.as_secs_f64() * 1000.0,
        "{timing:?} against a round trip of {round_trip:?}"
    );
    wait_ended(&mut alice, &reply.into_inner().job_id).await;
    server.shutdown().await;
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
            .list(pb::ListRequest::default())
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
                        grace_period: None,
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
            grace_period: Some(proto::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    // The job's init passes the SIGTERM on to `sleep`, which dies of it.
    assert_eq!(
        (stopped.state, stopped.signal, stopped.stop_requested),
        (pb::JobState::Stopped as i32, Some(15), true)
    );
    // An admin stops anyone's job: its own and bob's.
    for (owner, id) in [&jobs[0], &jobs[2]] {
        let stopped = admin
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period: Some(proto::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("admin stop of {owner}'s job: {e:?}"))
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            (
                stopped.owner.as_str(),
                stopped.state,
                stopped.signal,
                stopped.stop_requested
            ),
            (*owner, pb::JobState::Stopped as i32, Some(15), true),
            "admin stop of {owner}'s job"
        );
        assert_eq!(
            status(&mut admin, id).await.unwrap().state,
            pb::JobState::Stopped as i32
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_certificate_without_a_role_may_do_nothing() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sleep", "60"]).await;
    // An ended job, which its owner could remove: the refusal is not about its state.
    let ended = start(&mut alice, &["true"]).await;
    wait_ended(&mut alice, &ended).await;
    let mut nobody = server.client("nobody").await;
    let denied = [
        nobody
            .start(pb::StartRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        nobody.list(pb::ListRequest::default()).await.map(|_| ()),
        status(&mut nobody, &id).await.map(|_| ()),
        status(&mut nobody, "not-a-uuid").await.map(|_| ()),
        read_logs(&mut nobody, &id, false).await.map(|_| ()),
        nobody
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period: None,
            })
            .await
            .map(|_| ()),
        nobody
            .remove(pb::RemoveRequest { job_id: id.clone() })
            .await
            .map(|_| ()),
        nobody
            .remove(pb::RemoveRequest {
                job_id: ended.clone(),
            })
            .await
            .map(|_| ()),
    ];
    for result in denied {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(
            err.message(),
            "this certificate carries no known role (admin or user) and may do nothing"
        );
    }
    assert_eq!(
        status(&mut alice, &id).await.unwrap().state,
        pb::JobState::Running as i32
    );
    assert!(
        status(&mut alice, &ended).await.is_ok(),
        "the ended job is gone"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_status_codes() {
    let server = TestServer::start(|c| {
        c.service.request.max_argv_bytes = 1024;
        // A job asking for limits is refused only without cgroups: pin that, whatever
        // this host offers.
        c.worker.cgroups = worker::CgroupMode::Off;
    })
    .await;
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

    let e = status(&mut alice, "12z4").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "malformed job id \"12z4\": expected a UUID or the start of one"
    );
    let e = status(&mut alice, "123").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "job id prefix \"123\" is too short: give at least 4 characters of the id"
    );
    let e = status(&mut alice, "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let id = start(&mut alice, &["sleep", "60"]).await;
    let e = alice
        .stop(pb::StopRequest {
            job_id: id.clone(),
            grace_period: Some(proto::Duration {
                seconds: 100_000,
                nanos: 0,
            }),
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
    assert_eq!(
        limited.message(),
        "resource limits need cgroup v2 with the cpu, memory, io and pids controllers, \
         which this server does not have"
    );
    // Stopping twice is fine.
    for _ in 0..2 {
        alice
            .stop(pb::StopRequest {
                job_id: id.clone(),
                grace_period: None,
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
    // TLS 1.3 completes the client's side of the handshake before the server checks the
    // client certificate, so the connection opens and the first call meets the alert: no
    // gRPC status from the server, tonic's UNKNOWN "transport error" carrying the alert,
    // which jobc turns into one sentence.
    let mut c = client::connect(&target).await.unwrap();
    let e = c.list(pb::ListRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown, "{e:?}");
    assert!(format!("{e:?}").contains("CertificateExpired"), "{e:?}");
    let failure = jobc::errors::from_status(&e, "localhost");
    assert_eq!(
        (failure.message.as_str(), failure.exit_code),
        (
            "server refused this certificate: it has expired or is not valid yet",
            jobc::errors::EXIT_CONNECT
        )
    );
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
    c.list(pb::ListRequest::default()).await.unwrap();
    c.list(pb::ListRequest::default()).await.unwrap();
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
                    start: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(s.message().await.unwrap().is_some());
            streams.push((c, s));
        }
        // A third is refused while two are open.
        // The job never ends: a third stream that was served would follow it forever.
        let err = tokio::time::timeout(Duration::from_secs(5), read_logs(&mut alice, &id, true))
            .await
            .expect("a third log stream was served while two were open")
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(
            err.message(),
            "the server is serving its maximum of log streams; try again later"
        );
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
                    start: None,
                })
                .await
            {
                Ok(probe) => {
                    // Read the probe to its end: the server frees a stream's slot before
                    // it ends the stream, so once the end arrives, both slots are free.
                    let mut probe = probe.into_inner();
                    tokio::time::timeout(Duration::from_secs(10), async {
                        while probe.message().await.unwrap().is_some() {}
                    })
                    .await
                    .expect("a no-follow read did not end");
                    break;
                }
                Err(e) if e.code() == Code::ResourceExhausted => {
                    assert!(tokio::time::Instant::now() < deadline, "log streams leaked");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    alice
        .stop(pb::StopRequest {
            job_id: id,
            grace_period: None,
        })
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_follows_with_unavailable_and_stops_jobs() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sh", "-c", "echo started; exec sleep 600"]).await;
    let pid = status(&mut alice, &id).await.unwrap().pid as i32;
    let mut follow = alice
        .logs(pb::LogsRequest {
            job_id: id.clone(),
            follow: true,
            start: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(follow.message().await.unwrap().is_some());
    let stopping = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(10), follow.message())
        .await
        .expect("follow did not end at shutdown");
    // UNAVAILABLE, not a clean end: a clean end would tell the client the job has ended.
    let s = end.expect_err("the follow ended without UNAVAILABLE");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(s.message(), "the server is shutting down");
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

async fn signal(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    signal: &str,
) -> Result<(), tonic::Status> {
    c.signal(pb::SignalRequest {
        job_id: id.into(),
        signal: signal.into(),
        all_processes: false,
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_follows_the_rules_of_stop_and_says_what_is_wrong() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.client("admin").await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut nobody = server.client("nobody").await;
    let id = start(
        &mut alice,
        &[
            "sh",
            "-c",
            "trap 'echo hup' HUP; echo ready; while :; do sleep 0.1; done",
        ],
    )
    .await;
    let so_far = |c: &mut JobServiceClient<Channel>| {
        let id = id.clone();
        let mut c = c.clone();
        async move { String::from_utf8(read_logs(&mut c, &id, false).await.unwrap()).unwrap() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !so_far(&mut alice).await.contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = signal(&mut bob, &id, "HUP").await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, format!("job {id} not found").as_str())
    );
    let e = signal(&mut nobody, &id, "HUP").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    for bad in ["FOO", "0", "65", ""] {
        let e = signal(&mut alice, &id, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().starts_with("unknown signal"), "{bad}: {e:?}");
    }
    // A shell takes two HUPs that arrive during one `sleep` as one: one at a time.
    let mut owner = alice.clone();
    for (caller, name, count) in [(&mut owner, "SIGHUP", 1), (&mut admin, "1", 2)] {
        signal(caller, &id, name).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = so_far(&mut alice).await;
            if out.matches("hup").count() == count {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "HUP {count} never arrived: {out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    signal(&mut admin, &id, "KILL").await.unwrap();
    let ended = wait_ended(&mut alice, &id).await;
    assert_eq!(ended.signal, Some(9));
    let e = signal(&mut alice, &id, "HUP").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!("job {id} has ended: there is nothing to signal")
    );
    server.shutdown().await;
}

async fn remove(c: &mut JobServiceClient<Channel>, id: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveRequest { job_id: id.into() })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_follows_the_rbac_rules() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.client("admin").await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let jobs_dir = server.state.join("jobs");

    let alices = start(&mut alice, &["true"]).await;
    let bobs = start(&mut bob, &["true"]).await;
    wait_ended(&mut alice, &alices).await;
    wait_ended(&mut bob, &bobs).await;

    // Another user's job does not exist for bob, and stays.
    let e = remove(&mut bob, &alices).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(e.message(), format!("job {alices} not found"));
    assert!(jobs_dir.join(&alices).is_dir());
    assert!(status(&mut alice, &alices).await.is_ok());

    // The owner removes it: gone from the API (for admins too) and from the disk.
    remove(&mut alice, &alices).await.unwrap();
    for c in [&mut alice, &mut admin] {
        let e = status(c, &alices).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    assert!(!jobs_dir.join(&alices).exists());
    let e = remove(&mut alice, &alices).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // An admin removes anyone's.
    remove(&mut admin, &bobs).await.unwrap();
    assert_eq!(
        status(&mut bob, &bobs).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(!jobs_dir.join(&bobs).exists());

    // A running job is refused, to its owner and to an admin, and keeps running.
    let running = start(&mut alice, &["sleep", "60"]).await;
    for (who, c) in [("alice", &mut alice), ("admin", &mut admin)] {
        let e = remove(c, &running).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{who}: {e:?}");
        assert_eq!(
            e.message(),
            format!("job {running} is still running: stop it first")
        );
    }
    assert_eq!(
        status(&mut alice, &running).await.unwrap().state,
        pb::JobState::Running as i32
    );
    assert!(jobs_dir.join(&running).is_dir());
    alice
        .stop(pb::StopRequest {
            job_id: running.clone(),
            grace_period: Some(proto::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    remove(&mut alice, &running).await.unwrap();
    assert!(!jobs_dir.join(&running).exists());
    server.shutdown().await;
}

/// A client whose channel connects on its first call, as a gRPC client that was not
/// told to connect eagerly does; its calls report connection failures as statuses.
fn lazy_client(target: &Target) -> JobServiceClient<Channel> {
    let connector = tokio_rustls::TlsConnector::from(client::tls_config(target).unwrap());
    let server = target.server.clone();
    let port: u16 = server.rsplit_once(':').unwrap().1.parse().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    JobServiceClient::new(channel)
}

/// Past `max_connections`, jobd closes a connection before the TLS handshake: it spends
/// no handshake on a connection it cannot serve. gRPC clients see UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_before_the_handshake() {
    let server = TestServer::start(|c| c.transport.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = server.client("alice").await;
        c.list(pb::ListRequest::default()).await.unwrap();
        held.push(c);
    }

    // Raw TLS: the connection ends before the server says a word.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let config = client_config(
        &server,
        &[&rustls::version::TLS13],
        Some((&server.pki, "alice")),
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("the handshake neither failed nor finished")
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{refused:?}"
    );

    // A gRPC call: UNAVAILABLE.
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        lazy_client(&server.target("alice")).list(pb::ListRequest::default()),
    )
    .await
    .expect("the call neither failed nor finished")
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // jobc: one line saying what happened, exit code 3.
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        client::connect(&server.target("alice")),
    )
    .await
    .expect("connect neither failed nor finished")
    .map(|_| ())
    .unwrap_err();
    let failure = jobc::errors::Failure::from(e);
    assert_eq!(
        (failure.message.as_str(), failure.exit_code),
        (
            format!(
                "cannot connect to localhost:{}: the server closed the connection before the \
                 TLS handshake (for example because it is at its connection limit)",
                server.addr.port()
            )
            .as_str(),
            jobc::errors::EXIT_CONNECT
        )
    );

    // The held connections still work; once one closes, a new one is served.
    for c in &mut held {
        c.list(pb::ListRequest::default()).await.unwrap();
    }
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        // Waits for the server to see the close and free the connection's slot.
        match client::connect(&server.target("alice")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no slot freed after a client left: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    fresh.list(pb::ListRequest::default()).await.unwrap();
    drop((held, fresh));
    server.shutdown().await;
}

/// h2 semantics: the server announces `max_streams_per_connection` in its SETTINGS, and a
/// client keeps the streams past it queued until one of its open streams ends (a client
/// that ignored the setting would have the extra streams reset with REFUSED_STREAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_connection_limit_wait_for_a_free_one() {
    let server = TestServer::start(|c| c.max_streams_per_connection = 2).await;
    // One channel, one connection: every call below shares it.
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sh", "-c", "echo started; exec sleep 60"]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = alice
            .logs(pb::LogsRequest {
                job_id: id.clone(),
                follow: true,
                start: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
        open.push(s);
    }
    let mut third = {
        let mut c = alice.clone();
        let id = id.clone();
        tokio::spawn(async move { status(&mut c, &id).await })
    };
    // A negative can only be watched for a while: for a second, the third call neither
    // gets an answer nor an error.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut third)
            .await
            .is_err(),
        "a third stream was served while two were open"
    );
    // A stream ends: the queued call goes out and is answered.
    drop(open.pop());
    let st = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the queued call was not served after a stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(st.state, pb::JobState::Running as i32);
    drop(open);
    alice
        .stop(pb::StopRequest {
            job_id: id,
            grace_period: Some(proto::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_past_the_limit_are_refused() {
    let server = TestServer::start(|c| c.worker.max_running_jobs = 2).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let first = start(&mut alice, &["sleep", "60"]).await;
    let second = start(&mut bob, &["sleep", "60"]).await;
    // The limit is the server's, whoever asks.
    for c in [&mut alice, &mut bob] {
        let e = c
            .start(pb::StartRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_eq!(
            e.message(),
            "the server already runs 2 jobs, its maximum; try again later"
        );
    }
    // Stopping one frees its slot (once the job is reaped).
    alice
        .stop(pb::StopRequest {
            job_id: first,
            grace_period: Some(proto::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let third = loop {
        match alice
            .start(pb::StartRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner().job_id,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot stayed taken"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    wait_ended(&mut alice, &third).await;
    bob.stop(pb::StopRequest {
        job_id: second,
        grace_period: Some(proto::Duration {
            seconds: 0,
            nanos: 0,
        }),
    })
    .await
    .unwrap();
    server.shutdown().await;
}

async fn start_as_root(
    c: &mut JobServiceClient<Channel>,
    argv: &[&str],
) -> Result<String, tonic::Status> {
    c.start(pb::StartRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        as_root: true,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().job_id)
}

fn assert_root_tests_run_as_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests run as root");
}

/// What `id -u; id -g; id -G` prints in a job of `user`'s, and the uid its status names.
async fn ids_of(server: &TestServer, user: &str) -> (String, Option<u32>) {
    let mut c = server.client(user).await;
    let id = start(&mut c, &["sh", "-c", "id -u; id -g; id -G"]).await;
    let out = output(&mut c, &id).await;
    (out, status(&mut c, &id).await.unwrap().uid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_users_jobs_run_under_a_uid_of_their_own_by_default() {
    assert_root_tests_run_as_root();
    let server = TestServer::start(|_| {}).await;
    let range = worker::UidRange::DYNAMIC_USER;
    let mut seen = Vec::new();
    for user in ["alice", "bob", "admin"] {
        let (out, uid) = ids_of(&server, user).await;
        let uid = uid.expect("the status names the job's uid");
        assert!(
            (range.first()..=range.last()).contains(&uid),
            "{user}: {uid} is outside {range}"
        );
        // The gid is the uid's number, and there are no supplementary groups.
        assert_eq!(out, format!("{uid}\n{uid}\n{uid}\n"), "{user}");
        assert!(!seen.contains(&uid), "{user} shares uid {uid}");
        seen.push(uid);
    }
    // A user's uid stays theirs.
    assert_eq!(ids_of(&server, "alice").await.1, Some(seen[0]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_jobs_need_an_admin_and_a_server_that_allows_them() {
    assert_root_tests_run_as_root();
    let user_refused = "only an admin may start a job as root";

    // allow_root_jobs = false (the default): refused to everyone.
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let mut admin = server.client("admin").await;
    let e = start_as_root(&mut alice, &["id", "-u"]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, user_refused)
    );
    let e = start_as_root(&mut admin, &["id", "-u"]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "this server does not run jobs as root"
        )
    );
    // Nothing was started.
    assert!(admin
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());
    server.shutdown().await;

    // allow_root_jobs = true: an admin may, a user still may not.
    let server = TestServer::start(|c| c.worker.allow_root = true).await;
    let mut alice = server.client("alice").await;
    let mut admin = server.client("admin").await;
    let e = start_as_root(&mut alice, &["id", "-u"]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, user_refused)
    );
    let root = start_as_root(&mut admin, &["id", "-u"]).await.unwrap();
    assert_eq!(output(&mut admin, &root).await, "0\n");
    // Without asking, an admin's job runs under the admin's own uid, like anyone's.
    let plain = start(&mut admin, &["id", "-u"]).await;
    let shown: u32 = output(&mut admin, &plain).await.trim().parse().unwrap();
    let range = worker::UidRange::DYNAMIC_USER;
    assert!(
        (range.first()..=range.last()).contains(&shown),
        "{shown} is outside {range}"
    );
    assert_eq!(status(&mut admin, &plain).await.unwrap().uid, Some(shown));
    server.shutdown().await;
}
