//! `jobc run` and `jobc wait`: a job's end as jobc's own exit code, so that a script can
//! run a remote command as it would a local one.
//!
//! A job that exits with N gives N; one killed by signal N gives 128+N, as shells do.
//! When jobc cannot tell the job's end (it could not connect, the start was refused, the
//! job is not found), it exits with [`EXIT_NO_STATUS`], as `docker run` does with 125, so
//! that jobc's own failures are not taken for the job's.

use std::io::IsTerminal;

use proto::v1 as pb;
use tokio::signal::unix::{signal, SignalKind};

use crate::errors::Failure;
use crate::follow::{note, Connection};
use crate::output::{self, LogSink};

/// The exit code of `run` and `wait` when jobc could not tell the job's end.
pub const EXIT_NO_STATUS: i32 = 125;

/// The exit code a shell would give for this end.
pub fn exit_code(status: &pb::JobStatus) -> i32 {
    match (status.exit_code, status.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        // A status without an end (an older server, a running job) is no answer.
        (None, None) => EXIT_NO_STATUS,
    }
}

/// Starts the job, prints its output to stdout and stderr as it wrote them, and returns
/// its exit code. Ctrl-C: SIGINT to the job's program, then a stop; a third ends jobc
/// and leaves the stop to jobd.
pub async fn run(
    conn: &mut Connection,
    request: pb::StartRequest,
    remove: bool,
) -> Result<i32, Failure> {
    let server = conn.target.server.clone();
    // Before the start, so that a Ctrl-C during it is not jobc's death but the job's INT.
    let interrupts = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(EXIT_NO_STATUS, format!("cannot catch Ctrl-C: {e}")))?;
    let id = conn
        .client
        .start(request)
        .await
        .map_err(|s| crate::errors::from_status(&s, &server))?
        .into_inner()
        .job_id;
    if std::io::stderr().is_terminal() {
        note(&format!("running as job {id}"));
    }
    let forwarder = tokio::spawn(forward_interrupts(
        interrupts,
        conn.client.clone(),
        id.clone(),
        server.clone(),
    ));
    let mut sink = LogSink::new(true);
    let request = pb::LogsRequest {
        job_id: id.clone(),
        follow: true,
        start: None,
    };
    let followed = conn.logs(request, &mut sink, true).await;
    let ended = match followed {
        Ok(()) => conn.wait(&id).await,
        Err(failure) => Err(failure),
    };
    forwarder.abort();
    let status = ended?;
    if remove {
        if let Err(s) = conn
            .client
            .remove(pb::RemoveRequest { job_id: id.clone() })
            .await
        {
            let failure = crate::errors::from_status(&s, &server);
            note(&format!(
                "the job ended but cannot be removed: {}",
                failure.message
            ));
        }
    }
    Ok(exit_code(&status))
}

/// What Ctrl-C does while a job runs in the foreground, as `docker run --sig-proxy`.
async fn forward_interrupts(
    mut interrupts: tokio::signal::unix::Signal,
    mut client: pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    id: String,
    server: String,
) {
    let mut count = 0;
    while interrupts.recv().await.is_some() {
        count += 1;
        let result = match count {
            1 => client
                .signal(pb::SignalRequest {
                    job_id: id.clone(),
                    signal: "INT".into(),
                    all_processes: false,
                })
                .await
                .map(|_| note("sent SIGINT to the job; Ctrl-C again to stop it")),
            2 => {
                note("stopping the job; Ctrl-C again to leave it to the server");
                // Its own task: the output goes on being printed while the job stops.
                let mut client = client.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let _ = client
                        .stop(pb::StopRequest {
                            job_id: id,
                            grace_period: None,
                        })
                        .await;
                });
                Ok(())
            }
            _ => {
                note(&format!("left job {id} to stop in the server"));
                std::process::exit(crate::errors::EXIT_INTERRUPTED);
            }
        };
        if let Err(s) = result {
            // The job may have just ended: the follow says so.
            let failure = crate::errors::from_status(&s, &server);
            note(&format!("cannot signal the job: {}", failure.message));
        }
    }
}

/// Waits for each job in turn, printing each status as soon as it and those before it
/// have ended; returns the first non-zero exit code in the order given.
pub async fn wait(conn: &Connection, ids: &[String]) -> Result<i32, Failure> {
    let several = ids.len() > 1;
    // Every wait is asked at once, each retrying on its own.
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut one = conn.clone();
            let id = id.clone();
            tokio::spawn(async move { one.wait(&id).await })
        })
        .collect();
    let mut first_non_zero = 0;
    for (id, wait) in ids.iter().zip(waits) {
        let ended = wait.await.unwrap_or_else(|e| {
            Err(Failure::new(
                EXIT_NO_STATUS,
                format!("the wait failed: {e}"),
            ))
        });
        let code = match ended {
            Ok(status) => {
                let text = if several {
                    format!("{}: {}\n", status.job_id, output::status_line(&status))
                } else {
                    output::status_text(&status)
                };
                output::print(&text)?;
                exit_code(&status)
            }
            Err(failure) if several => {
                note(&format!("{id}: {}", failure.message));
                EXIT_NO_STATUS
            }
            Err(failure) => return Err(failure),
        };
        if first_non_zero == 0 {
            first_non_zero = code;
        }
    }
    Ok(first_non_zero)
}
