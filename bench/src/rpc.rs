//! The in-process gRPC client and the few calls scenarios make with it: start, status,
//! wait for the end, and read or follow a job's output.

use std::time::Duration;

use anyhow::{Context, Result};
use jobc::client::Target;
use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

pub type Client = JobServiceClient<Channel>;

/// A new connection (TCP, TLS handshake, HTTP/2) with jobc's own connection code.
pub async fn connect(target: &Target) -> Result<Client> {
    jobc::client::connect(target)
        .await
        .with_context(|| format!("cannot connect to jobd at {}", target.server))
}

/// No namespaces at all: `jobc start --isolate none`.
pub fn isolate_none() -> Option<pb::Isolation> {
    Some(pb::Isolation {
        pid: false,
        mount: false,
        net: false,
    })
}

/// The least isolation this server runs a job with, and its label: none at all, or only
/// a PID namespace where jobd has no cgroups (a job then needs one to hold its processes).
pub async fn least_isolation(c: &mut Client) -> Result<(&'static str, Option<pb::Isolation>)> {
    let refused = c
        .start(pb::StartRequest {
            argv: argv(&["true"]),
            isolation: isolate_none(),
            ..Default::default()
        })
        .await
        .err();
    match refused {
        None => Ok(("isolate none", isolate_none())),
        Some(s) if s.code() == tonic::Code::FailedPrecondition => Ok((
            "isolate pid (no cgroups)",
            Some(pb::Isolation {
                pid: true,
                mount: false,
                net: false,
            }),
        )),
        Some(s) => Err(s).context("Start failed"),
    }
}

/// Starts `true` with `isolation` and waits for its end; returns its id and the
/// namespaces it got, which are what a floor must match.
pub async fn probe(
    c: &mut Client,
    isolation: Option<pb::Isolation>,
) -> Result<(String, pb::Isolation)> {
    let id = start(c, argv(&["true"]), isolation).await?;
    let got = wait_ended(c, &id, Duration::from_secs(10)).await?;
    Ok((id, got.isolation.unwrap_or_default()))
}

pub fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Starts a job; `isolation` `None` means the server's default.
pub async fn start(
    c: &mut Client,
    argv: Vec<String>,
    isolation: Option<pb::Isolation>,
) -> Result<String> {
    Ok(start_timed(c, argv, isolation).await?.0)
}

/// As [`start`], with the server's own time over the Start, from the `server-timing`
/// metadata of its reply.
pub async fn start_timed(
    c: &mut Client,
    argv: Vec<String>,
    isolation: Option<pb::Isolation>,
) -> Result<(String, Duration)> {
    let reply = c
        .start(pb::StartRequest {
            argv,
            isolation,
            ..Default::default()
        })
        .await
        .context("Start failed")?;
    let timing = reply
        .metadata()
        .get(jobd::service::START_TIMING)
        .and_then(|v| v.to_str().ok())
        .and_then(jobd::service::start_timing)
        .context("Start reply without a server-timing of the form start;dur=<ms>")?;
    Ok((reply.into_inner().job_id, timing))
}

pub async fn status(c: &mut Client, id: &str) -> Result<pb::JobStatus> {
    c.status(pb::StatusRequest { job_id: id.into() })
        .await
        .context("Status failed")?
        .into_inner()
        .status
        .context("Status reply without a status")
}

pub fn has_ended(s: &pb::JobStatus) -> bool {
    s.state != pb::JobState::Running as i32
}

/// Waits for the job's end with the Wait call, which answers once the job has ended.
pub async fn wait_ended(c: &mut Client, id: &str, timeout: Duration) -> Result<pb::JobStatus> {
    let waited = tokio::time::timeout(timeout, c.wait(pb::WaitRequest { job_id: id.into() }))
        .await
        .map_err(|_| anyhow::anyhow!("job {id} still runs after {timeout:?}"))?;
    waited
        .context("Wait failed")?
        .into_inner()
        .status
        .context("Wait reply without a status")
}

/// Reads a job's output to its end (following it when `follow`); returns the byte count.
pub async fn count_output(c: &mut Client, id: &str, follow: bool) -> Result<u64> {
    let mut total = 0u64;
    each_batch(c, id, follow, |records| {
        total += records.iter().map(|r| r.data.len() as u64).sum::<u64>();
    })
    .await?;
    Ok(total)
}

/// The whole output of a job that has ended.
pub async fn output(c: &mut Client, id: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    each_batch(c, id, false, |records| {
        for r in records {
            out.extend_from_slice(&r.data);
        }
    })
    .await?;
    Ok(out)
}

async fn each_batch(
    c: &mut Client,
    id: &str,
    follow: bool,
    mut take: impl FnMut(&[pb::OutputRecord]),
) -> Result<()> {
    let mut stream = c
        .logs(pb::LogsRequest {
            job_id: id.into(),
            follow,
            start: None,
        })
        .await
        .context("Logs failed")?
        .into_inner();
    while let Some(batch) = stream.message().await.context("Logs stream failed")? {
        take(&batch.records);
    }
    Ok(())
}

/// Deletes an ended job and its output, so big logs do not pile up on the disk.
pub async fn remove(c: &mut Client, id: &str) -> Result<()> {
    c.remove(pb::RemoveRequest { job_id: id.into() })
        .await
        .context("Remove failed")?;
    Ok(())
}
