//! Isolation is the server's decision: over real TCP and TLS, a user may ask for the
//! server's default namespaces or more, weaker isolation only where the server lets the
//! caller's role, and without cgroups no job runs without a PID namespace to hold it.

use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;
use tonic::Code;

mod support;
use support::TestServer;

const NONE: pb::Isolation = pb::Isolation {
    pid: false,
    mount: false,
    net: false,
};
const ALL: pb::Isolation = pb::Isolation {
    pid: true,
    mount: true,
    net: true,
};

async fn start(
    c: &mut JobServiceClient<Channel>,
    isolation: Option<pb::Isolation>,
    host_network: bool,
) -> Result<pb::JobStatus, tonic::Status> {
    let id = c
        .start(pb::StartRequest {
            argv: vec!["true".into()],
            isolation,
            host_network,
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    Ok(c.status(pb::StatusRequest { job_id: id })
        .await?
        .into_inner()
        .status
        .unwrap())
}

fn refused(result: Result<pb::JobStatus, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("the start was allowed");
    assert_eq!((status.code(), status.message()), (code, message));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weaker_isolation_is_for_admins_by_default() {
    let server = TestServer::start(|c| c.worker.cgroups = worker::CgroupMode::Off).await;
    let mut alice = server.client("alice").await;
    let mut admin = server.client("admin").await;

    // The default, or asking for it: anyone's.
    let job = start(&mut alice, None, false).await.unwrap();
    assert_eq!(job.isolation, Some(ALL));
    start(&mut alice, Some(ALL), false).await.unwrap();

    // Less of it: not a user's...
    refused(
        start(&mut alice, Some(NONE), false).await,
        Code::PermissionDenied,
        "this server does not let you start a job without a PID namespace or without a mount \
         namespace or with the host's network: that is less isolation than its default",
    );
    refused(
        start(&mut alice, None, true).await,
        Code::PermissionDenied,
        "this server does not let you start a job with the host's network: that is less \
         isolation than its default",
    );
    refused(
        start(&mut alice, Some(pb::Isolation { pid: false, ..ALL }), false).await,
        Code::PermissionDenied,
        "this server does not let you start a job without a PID namespace: that is less \
         isolation than its default",
    );
    let alices = alice
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(alices.len(), 2, "{alices:?}");

    // ...but an admin's, as long as something holds the job's processes.
    let job = start(&mut admin, None, true).await.unwrap();
    assert_eq!(job.isolation, Some(pb::Isolation { net: false, ..ALL }));
    refused(
        start(&mut admin, Some(NONE), false).await,
        Code::FailedPrecondition,
        "without cgroups a job needs a PID namespace to hold its processes",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weaker_isolation_can_be_forbidden_to_everyone() {
    let server = TestServer::start(|c| {
        c.worker.cgroups = worker::CgroupMode::Off;
        c.service.weaker_isolation_roles = vec![];
    })
    .await;
    let mut admin = server.client("admin").await;
    refused(
        start(&mut admin, None, true).await,
        Code::PermissionDenied,
        "this server does not let you start a job with the host's network: that is less \
         isolation than its default",
    );
    start(&mut admin, Some(ALL), false).await.unwrap();
    server.shutdown().await;
}
