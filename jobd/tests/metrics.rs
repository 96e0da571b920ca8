//! The metrics endpoint end to end: the real jobd binary with `--metrics-listen
//! 127.0.0.1:0`, scraped during a load of jobs, log reads, refused handshakes and requests
//! for jobs that do not exist, and after it. The counts must be the load's, and
//! `promtool check metrics` (Debian's `prometheus` package) must find nothing to say about
//! either scrape.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use testkit::{issue, Server, Validity, CN, O};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes each job of the load writes.
const OUTPUT: usize = 100_000;
/// Jobs of the load that finish on their own with exit code 0.
const OK_JOBS: usize = 4;
/// Status calls for a job that does not exist.
const NOT_FOUND: usize = 3;

/// An HTTP/1.1 GET of `path`: (status code, Content-Type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    request(addr, "GET", path).await
}

/// An HTTP/1.1 request with no body: (status code, Content-Type, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the metrics endpoint {addr}: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .expect("the metrics endpoint did not answer within 10 s")
        .unwrap();
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the head in {response:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head:?}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    body
}

/// The value of the sample written exactly as `series` (name and labels), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in the scrape:\n{text}"))
}

/// Scrapes until `done` holds for a scrape, which it returns; fails after 20 s.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(addr).await;
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s; the last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `promtool check metrics` on `text`: it must exit 0 and print nothing.
fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's prometheus package \
             (apt-get install prometheus), as .ci/run does"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\non the scrape:\n{text}",
        out.status
    );
}

/// Starts `sh -c script` as alice; returns the job id.
async fn start(
    client: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    script: &str,
) -> String {
    client
        .start(pb::StartRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Start of {script:?}: {e}"))
        .into_inner()
        .job_id
}

/// Reads a job's log from its start: the bytes of output read. With `until`, returns as
/// soon as that many bytes came, leaving the stream open.
async fn read_logs(stream: &mut tonic::Streaming<pb::LogsResponse>, until: Option<usize>) -> usize {
    let mut read = 0;
    while let Some(batch) = stream.message().await.expect("a Logs message") {
        read += batch.records.iter().map(|r| r.data.len()).sum::<usize>();
        if until.is_some_and(|n| read >= n) {
            break;
        }
    }
    read
}

/// One TLS handshake (one connection, which a gRPC channel could make again) as `target`'s
/// certificate, which the server must refuse. TLS 1.3 delivers the server's verdict after
/// the client has finished: it is read as an alert or a close.
async fn refused_handshake(addr: SocketAddr, target: &jobc::client::Target) {
    let config = jobc::client::tls_config(target).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(_)) => panic!("{}: the server answered", target.cert.display()),
        Err(_) => panic!(
            "{}: the server neither refused nor closed",
            target.cert.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_load_and_pass_promtool() {
    let s = Server::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let line = s
        .jobd
        .wait_log("its metrics address", Duration::from_secs(10), |l| {
            l.contains("metrics on ")
        });
    let metrics: SocketAddr = line
        .split("metrics on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(metrics.ip().is_loopback() && metrics.port() != 0, "{line}");

    let (status, _, _) = get(metrics, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(metrics, "/metrics/more").await;
    assert_eq!(status, 404);
    let (status, _, body) = request(metrics, "POST", "/metrics").await;
    assert_eq!(status, 404, "{body}");
    let before = scrape(metrics).await;
    assert_eq!(value(&before, "jobworker_jobs_started_total"), 0.0);
    assert_eq!(value(&before, "jobworker_jobs_running"), 0.0);
    promtool_check(&before);

    // The load: jobs that write OUTPUT bytes each, one that fails, and one that writes
    // OUTPUT bytes and then runs, with a follow of its log open, until it is stopped after
    // the scrape during the load.
    let mut client = jobc::client::connect(&s.target("alice")).await.unwrap();
    let write = format!("head -c {OUTPUT} /dev/zero | tr '\\0' x");
    let mut ok_jobs = Vec::new();
    for _ in 0..OK_JOBS {
        ok_jobs.push(start(&mut client, &write).await);
    }
    let failing = start(&mut client, "exit 3").await;
    let stopped = start(&mut client, &format!("{write}; exec sleep 60")).await;
    let output_jobs = OK_JOBS + 1;

    let mut follow = client
        .logs(pb::LogsRequest {
            job_id: stopped.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = read_logs(&mut follow, Some(OUTPUT)).await;
    assert_eq!(read, OUTPUT);

    for _ in 0..NOT_FOUND {
        let e = client
            .status(pb::StatusRequest {
                job_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }

    // Refused handshakes: a certificate from the right CA that has expired, and one from
    // another CA (of the same name, so that only the signature tells).
    let now = time::OffsetDateTime::now_utc();
    issue(
        &s.pki,
        "late",
        &[(CN, "late"), (O, "user")],
        &[],
        false,
        Validity {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
        },
    );
    let other = tempfile::tempdir().unwrap();
    jobd::pki::init(&jobd::pki::PkiOptions::new(other.path())).unwrap();
    for (dir, name) in [(s.pki.as_path(), "late"), (other.path(), "alice")] {
        let target = jobc::client::Target {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ..s.target("alice")
        };
        refused_handshake(s.jobd.addrs[0], &target).await;
    }
    for id in ok_jobs.iter().chain([&failing]) {
        client
            .wait(pb::WaitRequest { job_id: id.clone() })
            .await
            .unwrap();
    }

    // During the load.
    let during = scrape_until(metrics, "both refusals and every end counted", |t| {
        sample(t, "jobworker_jobs_running") == Some(1.0)
            && sample(
                t,
                r#"jobworker_tls_handshakes_refused_total{reason="unknown_ca"}"#,
            )
            .is_some()
            && sample(
                t,
                r#"jobworker_tls_handshakes_refused_total{reason="certificate_expired"}"#,
            )
            .is_some()
    })
    .await;
    let started = OK_JOBS + 2;
    assert_eq!(
        value(&during, "jobworker_jobs_started_total"),
        started as f64
    );
    assert_eq!(
        value(&during, "jobworker_start_duration_seconds_count"),
        started as f64
    );
    assert_eq!(
        value(
            &during,
            r#"jobworker_jobs_ended_total{outcome="finished_ok"}"#
        ),
        OK_JOBS as f64
    );
    assert_eq!(
        value(&during, "jobworker_log_streams_open"),
        1.0,
        "{during}"
    );
    assert!(value(&during, "jobworker_connections_open") >= 1.0);
    assert_eq!(
        value(
            &during,
            r#"jobworker_requests_total{method="Status",code="NOT_FOUND"}"#
        ),
        NOT_FOUND as f64
    );
    assert_eq!(
        value(
            &during,
            r#"jobworker_tls_handshakes_refused_total{reason="unknown_ca"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            r#"jobworker_tls_handshakes_refused_total{reason="certificate_expired"}"#
        ),
        1.0
    );
    assert!(value(&during, "jobworker_output_served_bytes_total") >= read as f64);
    promtool_check(&during);

    // The rest of the load: the stop, the follow to its end, the other logs.
    client
        .stop(pb::StopRequest {
            job_id: stopped.clone(),
            grace_period: None,
        })
        .await
        .unwrap();
    read += read_logs(&mut follow, None).await;
    drop(follow);
    for id in &ok_jobs {
        let mut logs = client
            .logs(pb::LogsRequest {
                job_id: id.clone(),
                follow: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        read += read_logs(&mut logs, None).await;
    }
    assert_eq!(read, output_jobs * OUTPUT);

    let after = scrape_until(metrics, "every job ended and every stream closed", |t| {
        sample(t, "jobworker_jobs_running") == Some(0.0)
            && sample(t, "jobworker_log_streams_open") == Some(0.0)
    })
    .await;
    assert_eq!(
        value(&after, "jobworker_jobs_started_total"),
        started as f64
    );
    for (outcome, n) in [
        ("finished_ok", OK_JOBS),
        ("finished_error", 1),
        ("stopped", 1),
    ] {
        let series = format!("jobworker_jobs_ended_total{{outcome=\"{outcome}\"}}");
        assert_eq!(value(&after, &series), n as f64, "{after}");
    }
    assert_eq!(
        sample(&after, r#"jobworker_jobs_ended_total{outcome="signaled"}"#),
        None
    );
    assert_eq!(
        value(&after, "jobworker_output_stored_bytes_total"),
        (output_jobs * OUTPUT) as f64
    );
    // Every stream was read to its end: what was sent is what was read.
    assert_eq!(
        value(&after, "jobworker_output_served_bytes_total"),
        read as f64
    );
    assert_eq!(
        value(
            &after,
            r#"jobworker_requests_total{method="Start",code="OK"}"#
        ),
        started as f64
    );
    assert_eq!(
        value(
            &after,
            r#"jobworker_requests_total{method="Logs",code="OK"}"#
        ),
        (OK_JOBS + 1) as f64
    );
    assert_eq!(
        value(
            &after,
            r#"jobworker_requests_total{method="Status",code="NOT_FOUND"}"#
        ),
        NOT_FOUND as f64
    );
    for text in [&before, &during, &after] {
        assert!(
            !text.contains(&ok_jobs[0]) && !text.contains("alice"),
            "a job id or a user name in the metrics:\n{text}"
        );
    }
    promtool_check(&after);
    drop(client);
    let mut s = s;
    assert!(s.jobd.terminate().success());
}

#[test]
fn no_endpoint_unless_asked_and_an_address_taken_stops_jobd() {
    let s = Server::start();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.jobd.log().iter().any(|l| l.contains("metrics")),
        "{:#?}",
        s.jobd.log()
    );
    // The gRPC port of the running jobd is taken.
    let taken = format!("127.0.0.1:{}", s.jobd.port);
    let dir = testkit::public_tempdir();
    match testkit::Jobd::spawn(
        &dir.path().join("state"),
        &s.pki.join("ca.pem"),
        &s.pki.join("server.pem"),
        &s.pki.join("server-key.pem"),
        &["--metrics-listen", &taken],
    ) {
        Ok(jobd) => panic!(
            "jobd started with its metrics on a taken port: {:?}",
            jobd.log()
        ),
        Err((status, log)) => {
            let log = log.join("\n");
            assert_eq!(status.code(), Some(1), "{log}");
            assert!(
                log.contains(&format!("jobd: cannot listen for metrics on {taken}: ")),
                "{log}"
            );
        }
    }
}
