//! gzip on the wire: jobd takes requests that other gRPC clients compress (grpcio with
//! `compression=Gzip`), and compresses its responses for a client that asks for it, only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proto::v1 as pb;
use tonic::codec::CompressionEncoding;

mod support;
use support::TestServer;

/// The workspace root, where `proto/` is.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("jobd is a folder of the workspace")
        .to_path_buf()
}

/// Runs `python3 args`; panics with its stderr unless it succeeds. Returns stdout.
fn python(args: &[&std::ffi::OsStr]) -> String {
    let out = testkit::output(
        Command::new("python3").args(args).current_dir(workspace()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "python3 {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// Python stubs of proto/service.proto, generated into `dir`. Missing grpcio is a failure:
/// CI installs it (.ci/run), and a test that passed without running would hide that.
fn python_stubs(dir: &Path) {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "this test needs python3 with grpcio and grpcio-tools \
             (python3 -m pip install grpcio grpcio-tools; .ci/run does): {other:?}"
        ),
    }
    // grpc_tools' own copy of google/protobuf/*.proto, for imports of well-known types.
    let bundled = python(&[
        "-c".as_ref(),
        "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"
            .as_ref(),
    ]);
    let out = |flag: &str| format!("--{flag}={}", dir.display());
    python(&[
        "-m".as_ref(),
        "grpc_tools.protoc".as_ref(),
        "-I".as_ref(),
        "proto".as_ref(),
        "-I".as_ref(),
        bundled.trim_end().as_ref(),
        out("python_out").as_ref(),
        out("grpc_python_out").as_ref(),
        "proto/service.proto".as_ref(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_that_compresses_its_requests_is_served() {
    let server = TestServer::start(|_| {}).await;
    let stubs = tempfile::tempdir().unwrap();
    let script = workspace().join("jobd/tests/clients/gzip_client.py");
    let pki = server.pki.clone();
    let target = server.addr.to_string();
    let printed = tokio::task::spawn_blocking(move || {
        python_stubs(stubs.path());
        python(&[
            script.as_os_str(),
            stubs.path().as_os_str(),
            target.as_ref(),
            pki.join("ca.pem").as_os_str(),
            pki.join("alice.pem").as_os_str(),
            pki.join("alice-key.pem").as_os_str(),
        ])
    })
    .await
    .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let started = reply["started"].as_str().expect("a job id");
    assert!(!started.is_empty(), "{printed}");
    assert_eq!(reply["listed"], serde_json::json!([started]), "{printed}");
    server.shutdown().await;
}

#[tokio::test]
async fn responses_are_compressed_for_a_client_that_asks_and_only_for_it() {
    let server = TestServer::start(|_| {}).await;
    let encoding = |response: &tonic::Response<pb::ListResponse>| {
        response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_string())
    };
    // As jobc connects: it does not ask for compression.
    let mut plain = server.client("alice").await;
    let reply = plain.list(pb::ListRequest::default()).await.unwrap();
    assert_eq!(encoding(&reply), None);

    let mut gzip = server
        .client("alice")
        .await
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let id = gzip
        .start(pb::StartRequest {
            argv: ["sh", "-c", "seq 1 20000"].map(String::from).to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let reply = gzip.list(pb::ListRequest::default()).await.unwrap();
    assert_eq!(encoding(&reply).as_deref(), Some("gzip"));
    // A stream too, decoded whole.
    let logs = gzip
        .logs(pb::LogsRequest {
            job_id: id,
            follow: true,
            start: None,
        })
        .await
        .unwrap();
    assert_eq!(
        logs.metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let mut stream = logs.into_inner();
    let mut output = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        for record in batch.records {
            output.extend_from_slice(&record.data);
        }
    }
    let expected: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    assert!(output == expected.as_bytes(), "{} bytes", output.len());
    server.shutdown().await;
}
