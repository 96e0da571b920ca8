//! Stop over real TCP and TLS on 127.0.0.1: the TERM → grace → KILL sequence belongs to
//! the job, so a Stop whose client gives up before the grace period is over still ends it.

use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;
use tonic::Code;

mod support;
use support::TestServer;

/// Follows the job's output until `needle` appears, for at most 10 s.
async fn wait_for_output(c: &mut JobServiceClient<Channel>, id: &str, needle: &[u8]) {
    let mut stream = c
        .logs(pb::LogsRequest {
            job_id: id.into(),
            follow: true,
            start: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no output in time")
            .unwrap()
            .expect("the job ended before its output appeared");
        for r in batch.records {
            seen.extend_from_slice(&r.data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_a_deadline_shorter_than_the_grace_still_ends_the_job() {
    let server = TestServer::start(|_| {}).await;
    let mut alice = server.client("alice").await;
    let id = alice
        .start(pb::StartRequest {
            argv: [
                "sh",
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    wait_for_output(&mut alice, &id, b"ready").await;

    let t0 = Instant::now();
    let mut stop = tonic::Request::new(pb::StopRequest {
        job_id: id.clone(),
        grace_period: Some(proto::Duration {
            seconds: 2,
            nanos: 0,
        }),
    });
    // Sent as grpc-timeout: the server drops the call when it expires, and so does the
    // client (the outer timeout only bounds the test).
    stop.set_timeout(Duration::from_millis(300));
    let given_up = tokio::time::timeout(Duration::from_secs(10), alice.stop(stop))
        .await
        .expect("the Stop call outlived its own deadline")
        .expect_err("the Stop returned before the grace period was over");
    assert!(
        matches!(given_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{given_up:?}"
    );

    // Waits for the job's end, polling its status for at most 10 s.
    let ended = loop {
        let s = alice
            .status(pb::StatusRequest { job_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state != pb::JobState::Running as i32 {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the job still runs 10 s after a stop with 2 s of grace: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended.state, pb::JobState::Stopped as i32);
    assert_eq!(ended.signal, Some(9));
    assert!(ended.stop_requested);
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    server.shutdown().await;
}
