//! Calls that outlive a connection: a follow of a job's output, and a wait for a job's
//! end, both of which may last longer than a server or a network does.
//!
//! Each Logs response carries the position after it, so a follow whose connection broke
//! (a server restart, a network cut) connects again and resumes from the last position:
//! no byte is printed twice and none is skipped. A wait is simply asked again. Retries are
//! bounded, with a growing pause between them, and the first of each outage is noted on
//! stderr. Only a lost connection is retried: a refusal (a certificate, a job not found) is
//! final.

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

use crate::client::{self, ConnectError, Target};
use crate::errors::{self, Failure};
use crate::output::LogSink;

/// Pauses before each new attempt of one outage: about 25 s in all, which covers a
/// server's restart (it recovers its jobs before it listens).
const RETRY_PAUSES: &[Duration] = &[
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_secs(3),
    Duration::from_secs(3),
    Duration::from_secs(3),
    Duration::from_secs(3),
    Duration::from_secs(3),
    Duration::from_secs(3),
    Duration::from_secs(3),
];

/// A connection to jobd that is made again when it breaks. Clones share the connection
/// until one of them has to make a new one.
#[derive(Clone)]
pub struct Connection {
    pub target: Target,
    pub client: JobServiceClient<Channel>,
}

/// How one attempt of a call failed.
enum Broken {
    /// The connection broke or could not be made; worth another attempt.
    Lost(Failure),
    /// A refusal or a local failure: final.
    Final(Failure),
}

/// The retries of one call: how many pauses are left in the current outage.
struct Retries {
    what: &'static str,
    left: std::slice::Iter<'static, Duration>,
}

impl Retries {
    fn new(what: &'static str) -> Self {
        Retries {
            what,
            left: RETRY_PAUSES.iter(),
        }
    }

    /// The call made progress: the next outage gets every retry again.
    fn progressed(&mut self) {
        self.left = RETRY_PAUSES.iter();
    }

    /// After a lost connection: pauses, then connects again, until a connection is made
    /// (`Ok`) or the retries are spent or a connection is refused for good (`Err`: the
    /// loss itself once the retries are spent, as `the server went away`).
    async fn reconnect(&mut self, conn: &mut Connection, lost: Failure) -> Result<(), Failure> {
        // A connection cut without a word may have been the server's verdict on our
        // certificate (TLS 1.3 gives it after the handshake): that is final, not an outage.
        if lost.unexplained {
            if let Some(reason) = client::diagnose(&conn.target).await {
                return Err(Failure::new(lost.exit_code, reason.to_string()));
            }
        }
        if self.left.len() == RETRY_PAUSES.len() {
            note(&format!("{}; resuming {}", lost.message, self.what));
        }
        for pause in self.left.by_ref() {
            tokio::time::sleep(*pause).await;
            match client::connect(&conn.target).await {
                Ok(client) => {
                    conn.client = client;
                    return Ok(());
                }
                Err(e) if lost_connecting(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Failure {
            unexplained: false,
            ..lost
        })
    }
}

impl Connection {
    /// Streams the output `request` asks for into `sink`. With `resume`, a broken stream
    /// is taken up again where it stopped; the read ends when the server ends it (for a
    /// follow: once the job has ended and every byte was sent).
    pub async fn logs(
        &mut self,
        mut request: pb::LogsRequest,
        sink: &mut LogSink,
        resume: bool,
    ) -> Result<(), Failure> {
        let mut retries = Retries::new("the output");
        let result = loop {
            match self
                .logs_once(&mut request, sink, resume, &mut retries)
                .await
            {
                Ok(()) => break Ok(()),
                Err(Broken::Final(failure)) => break Err(failure),
                Err(Broken::Lost(failure)) => {
                    if let Err(failure) = retries.reconnect(self, failure).await {
                        break Err(failure);
                    }
                }
            }
        };
        // Whatever was printed stays printed, with its last line ended.
        sink.finish().map_err(crate::output::write_failure)?;
        result
    }

    /// One Logs call; each batch printed moves `request` on to the position after it.
    async fn logs_once(
        &mut self,
        request: &mut pb::LogsRequest,
        sink: &mut LogSink,
        resume: bool,
        retries: &mut Retries,
    ) -> Result<(), Broken> {
        let server = &self.target.server;
        let mut stream = self
            .client
            .logs(request.clone())
            .await
            .map_err(|s| classify(&s, server, resume))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(batch)) => {
                    sink.write_batch(batch.records)
                        .map_err(|e| Broken::Final(crate::output::write_failure(e)))?;
                    if let Some(next) = batch.next {
                        request.start = Some(pb::logs_request::Start::Position(next));
                        retries.progressed();
                    }
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(classify(&s, server, resume)),
            }
        }
    }

    /// Waits until the job has ended and returns its final status.
    pub async fn wait(&mut self, job_id: &str) -> Result<pb::JobStatus, Failure> {
        let mut retries = Retries::new("the wait");
        loop {
            let request = pb::WaitRequest {
                job_id: job_id.to_string(),
            };
            let lost = match self.client.wait(request).await {
                Ok(reply) => return Ok(reply.into_inner().status.unwrap_or_default()),
                Err(s) => match classify(&s, &self.target.server, true) {
                    Broken::Final(failure) => return Err(failure),
                    Broken::Lost(failure) => failure,
                },
            };
            retries.reconnect(self, lost).await?;
        }
    }
}

/// Whether a failed call lost its connection (so that asking again may work) or was
/// answered with a refusal.
fn classify(status: &tonic::Status, server: &str, retry: bool) -> Broken {
    let failure = errors::from_status(status, server);
    if retry && errors::is_connection_lost(&failure) {
        Broken::Lost(failure)
    } else {
        Broken::Final(failure)
    }
}

/// A connection that could not be made for now (refused, timed out, cut while jobd
/// restarts), rather than refused for good: a certificate refusal or a bad flag is final.
fn lost_connecting(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Connect { .. }) && !errors::is_certificate_refusal(e)
}

/// A note on stderr that does not end jobc.
pub fn note(text: &str) {
    eprintln!("jobc: {}", common::inert::Inert(text));
}
