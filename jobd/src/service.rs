//! The `jobworker.v1.JobService` handlers: identity → policy → worker, and one log line
//! per request with the caller, method, job and outcome.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use proto::v1 as pb;
use proto::v1::job_service_server::JobService;
use tokio::sync::{watch, Semaphore};
use tonic::{Request, Response, Status};
use worker::{IdPrefix, Job, JobId, JobSpec, Recipients, Worker};

use crate::audit::{self, AuditLog};
use crate::authz::{self, Action, Denied};
use crate::convert::{self, RequestLimits};
use crate::identity::{Identity, Role};
use crate::metrics::Metrics;
use crate::paging::{ListLimits, PageRequest};
use crate::tls::ConnInfo;

/// Server-side limits applied by the handlers.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    pub request: RequestLimits,
    pub max_log_streams: usize,
    pub max_grace: Duration,
    /// Roles that may start a job with less isolation than the server's default.
    pub weaker_isolation_roles: Vec<Role>,
    pub list: ListLimits,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            request: RequestLimits::default(),
            max_log_streams: 4096,
            max_grace: Duration::from_secs(600),
            weaker_isolation_roles: authz::DEFAULT_WEAKER_ISOLATION_ROLES.to_vec(),
            list: ListLimits::default(),
        }
    }
}

pub struct Service {
    worker: Worker,
    limits: ServiceLimits,
    log_streams: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    audit: Option<Arc<AuditLog>>,
    metrics: Metrics,
}

/// A request's failure, and whether policy refused it: the caller is told only the
/// status (a job hidden from them is "not found"), the audit log also the refusal.
struct Refusal {
    status: Status,
    denied: bool,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Refusal {
            status,
            denied: false,
        }
    }
}

type Outcome<T> = Result<T, Refusal>;

impl Service {
    pub fn new(
        worker: Worker,
        limits: ServiceLimits,
        shutdown: watch::Receiver<bool>,
        metrics: Metrics,
    ) -> Self {
        Service {
            log_streams: Arc::new(Semaphore::new(limits.max_log_streams)),
            worker,
            limits,
            shutdown,
            audit: None,
            metrics,
        }
    }

    /// Records every request in `audit` too.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Logs one request's outcome (and records it in the audit log), with how long the
    /// server took over it (for Logs: to open the stream), measured from the handler's
    /// entry; returns the outcome as the caller sees it, and that time, for a reply that
    /// reports it too.
    fn finish<T>(
        &self,
        conn: &ConnInfo,
        method: &'static str,
        job: &str,
        started: Instant,
        result: Outcome<T>,
    ) -> (Result<T, Status>, Duration) {
        let elapsed = log(&conn.identity, method, job, started, &result);
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(r) => r.status.code(),
        };
        self.metrics.request(method, code_name(code));
        if let Some(audit) = &self.audit {
            // The caller's text until it named a job: kept short, as in the log.
            let job = common::inert::Brief(job).to_string();
            let entry = audit::Entry {
                time: audit::Entry::now(),
                caller: &conn.identity.name,
                roles: conn.identity.roles.iter().map(|r| r.as_str()).collect(),
                serial: &conn.identity.serial,
                remote: conn.remote.to_string(),
                method,
                job: &job,
                allowed: !matches!(&result, Err(r) if r.denied),
                code: code_name(code),
            };
            if let Err(e) = audit.record(&entry) {
                tracing::error!(path = %audit.path().display(), error = %e, "cannot write the audit log");
            }
        }
        (result.map_err(|r| r.status), elapsed)
    }

    /// Finds a job the caller may act on, by its id or the unique start of it among the
    /// jobs the caller may see; a job they may not see is "not found", and never makes a
    /// prefix ambiguous.
    fn job_for(&self, caller: &Identity, action: Action, id: &str) -> Outcome<Arc<Job>> {
        // A caller without a role learns nothing, not even whether the id is well formed.
        authz::authorize(caller, action, Some(&caller.name)).map_err(denied(id))?;
        let Ok(full) = id.parse::<JobId>() else {
            return self.job_by_prefix(caller, action, id);
        };
        let job = self.worker.job(&full).map_err(convert::error)?;
        authz::authorize(caller, action, Some(job.owner())).map_err(denied(&full.to_string()))?;
        Ok(job)
    }

    fn job_by_prefix(&self, caller: &Identity, action: Action, text: &str) -> Outcome<Arc<Job>> {
        let prefix: IdPrefix = text
            .parse()
            .map_err(|e: worker::BadPrefix| Status::invalid_argument(e.to_string()))?;
        let mut found = self.worker.jobs_with_prefix(&prefix, |job| {
            authz::authorize(caller, action, Some(job.owner())).is_ok()
        });
        match found.len() {
            0 => Err(
                Status::not_found(format!("no job with an id that starts with {prefix}")).into(),
            ),
            1 => Ok(found.remove(0)),
            n => {
                let shown: Vec<String> = found
                    .iter()
                    .take(AMBIGUOUS_SHOWN)
                    .map(|j| j.id().to_string())
                    .collect();
                let more = match n.saturating_sub(AMBIGUOUS_SHOWN) {
                    0 => String::new(),
                    rest => format!(" and {rest} more"),
                };
                Err(Status::invalid_argument(format!(
                    "job id prefix {prefix} is ambiguous: it matches {n} jobs: {}{more}",
                    shown.join(", ")
                ))
                .into())
            }
        }
    }
}

/// The matches an ambiguous prefix's refusal names.
const AMBIGUOUS_SHOWN: usize = 10;

fn denied(id: &str) -> impl Fn(Denied) -> Refusal + '_ {
    move |d| Refusal {
        status: match d {
            Denied::NoRole => Status::permission_denied(
                "this certificate carries no known role (admin or user) and may do nothing",
            ),
            Denied::Hidden => Status::not_found(format!("job {id} not found")),
            Denied::AdminOnly => Status::permission_denied("only an admin may do this"),
            Denied::WeakerIsolation(dropped) => {
                Status::permission_denied(authz::weaker_isolation_refusal(dropped))
            }
        },
        denied: true,
    }
}

fn conn<T>(req: &Request<T>) -> Result<ConnInfo, Status> {
    req.extensions()
        .get::<ConnInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

/// The name of a code as gRPC spells it (`NOT_FOUND`), for the audit log.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Logs one request's outcome and how long the server took over it (for Logs: to open
/// the stream), measured from the handler's entry; returns that time, for a reply that
/// reports it too.
fn log<T>(
    caller: &Identity,
    method: &str,
    job: &str,
    started: Instant,
    result: &Outcome<T>,
) -> Duration {
    let elapsed = started.elapsed();
    let elapsed_us = elapsed.as_micros() as u64;
    // The job id is the caller's text until it parsed: shown inert and short.
    let job = common::inert::Brief(job);
    match result {
        Ok(_) => tracing::info!(caller = %caller, method, %job, elapsed_us, "ok"),
        Err(Refusal { status: s, .. }) if s.code() == tonic::Code::Internal => {
            tracing::error!(caller = %caller, method, %job, elapsed_us, code = ?s.code(), error = s.message(), "failed")
        }
        Err(Refusal { status: s, .. }) => {
            tracing::info!(caller = %caller, method, %job, elapsed_us, code = ?s.code(), error = s.message(), "refused")
        }
    }
    elapsed
}

/// The response metadata that tells a client how long the server took over its Start
/// (handler entry to the program's exec), in the W3C Server-Timing form
/// `start;dur=<milliseconds>`: benchmarks and operators read the server's own share of a
/// start from it, without parsing jobd's log.
pub const START_TIMING: &str = "server-timing";

fn server_timing(took: Duration) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    let text = format!("start;dur={:.3}", took.as_secs_f64() * 1000.0);
    text.parse()
        .expect("a metric name and a decimal number are valid header text")
}

/// The time in a [`START_TIMING`] value, for a client of jobd that reads it.
pub fn start_timing(value: &str) -> Option<Duration> {
    let ms: f64 = value.strip_prefix("start;dur=")?.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Service {
    async fn start(
        &self,
        req: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            authz::authorize(caller, Action::Start, None).map_err(denied(""))?;
            if req.as_root {
                authz::authorize(caller, Action::StartAsRoot, None).map_err(|_| Refusal {
                    status: Status::permission_denied("only an admin may start a job as root"),
                    denied: true,
                })?;
            }
            let argv = convert::argv(req.argv, &self.limits.request)?;
            let limits = convert::limits(req.limits)?;
            let mut spec = JobSpec::new(caller.name.clone(), argv).with_limits(limits);
            let default = self.worker.default_isolation();
            let mut isolation = self.worker.isolation(convert::isolation(req.isolation));
            if req.host_network {
                isolation.net = false;
            }
            authz::authorize_isolation(
                caller,
                isolation,
                default,
                &self.limits.weaker_isolation_roles,
            )
            .map_err(denied(""))?;
            spec.isolation = Some(isolation);
            spec.as_root = req.as_root;
            spec.env = req.env;
            spec.working_dir = Some(req.working_dir).filter(|d| !d.is_empty());
            spec.timeout = match req.timeout {
                None => None,
                Some(t) => match convert::duration_from(t, "a time limit")? {
                    t if t.is_zero() => {
                        return Err(Status::invalid_argument(
                            "a time limit must be longer than zero",
                        )
                        .into())
                    }
                    t => Some(t),
                },
            };
            Ok(self.worker.start(spec).await.map_err(convert::error)?)
        }
        .await;
        let id = result
            .as_ref()
            .map(|job| job.id().to_string())
            .unwrap_or_default();
        let (result, took) = self.finish(&conn, "Start", &id, started, result);
        self.metrics.job_started(result?, took);
        let mut response = Response::new(pb::StartResponse { job_id: id });
        response
            .metadata_mut()
            .insert(START_TIMING, server_timing(took));
        Ok(response)
    }

    async fn stop(
        &self,
        req: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            let job = self.job_for(caller, Action::Stop, &req.job_id)?;
            let grace = match req.grace_period {
                None => self.worker.config().default_grace,
                Some(g) => match convert::duration_from(g, "a grace period")? {
                    g if g > self.limits.max_grace => {
                        return Err(Status::invalid_argument(format!(
                            "a grace period of {} is longer than the server's maximum of {} s",
                            humantime::format_duration(g),
                            self.limits.max_grace.as_secs()
                        ))
                        .into())
                    }
                    g => g,
                },
            };
            let info = job.stop(grace).await.map_err(convert::error)?;
            Ok(convert::status(&info))
        }
        .await;
        let (result, _) = self.finish(&conn, "Stop", &req.job_id, started, result);
        result.map(|status| {
            Response::new(pb::StopResponse {
                status: Some(status),
            })
        })
    }

    async fn signal(
        &self,
        req: Request<pb::SignalRequest>,
    ) -> Result<Response<pb::SignalResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            let job = self.job_for(caller, Action::Signal, &req.job_id)?;
            let signal = common::parse_signal(&req.signal)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let to = if req.all_processes {
                Recipients::All
            } else {
                Recipients::Program
            };
            Ok(job.signal(signal, to).map_err(convert::error)?)
        }
        .await;
        let (result, _) = self.finish(&conn, "Signal", &req.job_id, started, result);
        result.map(|()| Response::new(pb::SignalResponse {}))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result = self
            .job_for(caller, Action::Status, &req.job_id)
            .map(|job| convert::status(&job.info()));
        let (result, _) = self.finish(&conn, "Status", &req.job_id, started, result);
        result.map(|status| {
            Response::new(pb::StatusResponse {
                status: Some(status),
            })
        })
    }

    async fn wait(
        &self,
        req: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            let job = self.job_for(caller, Action::Status, &req.job_id)?;
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                info = job.wait() => Ok(convert::into_status(info)),
                // The server's graceful shutdown waits for calls in flight: a wait must end.
                _ = shutdown.wait_for(|down| *down) => {
                    Err(Status::unavailable("the server is shutting down").into())
                }
            }
        }
        .await;
        let (result, _) = self.finish(&conn, "Wait", &req.job_id, started, result);
        result.map(|status| {
            Response::new(pb::WaitResponse {
                status: Some(status),
            })
        })
    }

    type LogsStream = LogStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<LogStream>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            let job = self.job_for(caller, Action::Logs, &req.job_id)?;
            let start = convert::log_start(req.start)?;
            let permit = Arc::clone(&self.log_streams)
                .try_acquire_owned()
                .map_err(|_| {
                    Status::resource_exhausted(
                        "the server is serving its maximum of log streams; try again later",
                    )
                })?;
            let reader = job
                .logs_from(req.follow, start)
                .await
                .map_err(convert::error)?;
            Ok(log_stream(
                reader,
                self.shutdown.clone(),
                permit,
                self.metrics.clone(),
            ))
        }
        .await;
        let (result, _) = self.finish(&conn, "Logs", &req.job_id, started, result);
        result.map(Response::new)
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let req = req.into_inner();
        let result: Outcome<_> = async {
            let job = self.job_for(caller, Action::Remove, &req.job_id)?;
            Ok(self
                .worker
                .remove(&job.id())
                .await
                .map_err(convert::error)?)
        }
        .await;
        let (result, _) = self.finish(&conn, "Remove", &req.job_id, started, result);
        result.map(|()| Response::new(pb::RemoveResponse {}))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let started = Instant::now();
        let conn = conn(&req)?;
        let caller = &conn.identity;
        let result = authz::authorize(caller, Action::List, None)
            .map_err(denied(""))
            .and_then(|()| {
                PageRequest::parse(caller, req.into_inner(), &self.limits.list)
                    .map_err(Refusal::from)
            })
            .map(|request| {
                let page = self.worker.page(&request.query());
                request.response(page, &self.limits.list)
            });
        let (result, _) = self.finish(&conn, "List", "", started, result);
        result.map(Response::new)
    }
}

/// The response stream of one Logs call. It is pulled by tonic only as fast as the client
/// takes data, so a slow client holds back nobody else; when the client goes away, tonic
/// drops the stream and with it the reader and its permit. On server shutdown a follow
/// ends with UNAVAILABLE, so the client can tell it from the job's end.
fn log_stream(
    reader: worker::LogReader,
    shutdown: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Metrics,
) -> LogStream {
    struct State {
        reader: Option<worker::LogReader>,
        shutdown: watch::Receiver<bool>,
        _permit: tokio::sync::OwnedSemaphorePermit,
        _open: crate::metrics::Open,
        metrics: Metrics,
    }
    let state = State {
        reader: Some(reader),
        shutdown,
        _permit: permit,
        _open: metrics.log_stream_open(),
        metrics,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let reader = st.reader.as_mut()?;
        let next = tokio::select! {
            batch = reader.next_batch() => Some(batch),
            _ = st.shutdown.wait_for(|down| *down) => None,
        };
        match next {
            Some(Ok(Some(batch))) => {
                let bytes: usize = batch.iter().map(|r| r.data.len()).sum();
                st.metrics.output_served(bytes as u64);
                Some((Ok(convert::records(batch, reader.position())), st))
            }
            Some(Ok(None)) => None,
            Some(Err(e)) => {
                st.reader = None;
                Some((Err(convert::error(e)), st))
            }
            None => {
                st.reader = None;
                Some((Err(Status::unavailable("the server is shutting down")), st))
            }
        }
    }))
}

#[cfg(test)]
mod start_timing_tests {
    use super::*;

    #[test]
    fn a_start_timing_reads_back_as_it_was_written() {
        let written = server_timing(Duration::from_micros(1234));
        assert_eq!(written.to_str().unwrap(), "start;dur=1.234");
        let read = start_timing(written.to_str().unwrap()).unwrap();
        assert_eq!(read.as_micros(), 1234);
        for bad in ["dur=1.0", "start;dur=", "start;dur=-1", "start;dur=NaN"] {
            assert_eq!(start_timing(bad), None, "{bad}");
        }
    }
}
