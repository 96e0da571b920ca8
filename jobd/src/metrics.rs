//! jobd's Prometheus metrics, and the plain-HTTP endpoint that serves them.
//!
//! Operators watch a server by scraping it; jobd's log says what happened to each request,
//! but not at a glance how many jobs run, how fast starts are or how many handshakes are
//! refused. [`Metrics`] is always there (a few atomic adds per request, whether or not
//! anyone scrapes), so the handlers and the accept loop count without an `Option` at every
//! call site; only the endpoint is optional (`--metrics-listen`).
//!
//! The endpoint is unauthenticated plain HTTP: bind it to loopback or a monitoring
//! network. It tells no job ids or user names (every label comes from a small fixed set),
//! only counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use worker::{JobInfo, JobState};

/// The path Prometheus scrapes by default.
pub const PATH: &str = "/metrics";

/// The Prometheus text format (0.0.4), which is what the endpoint encodes: every
/// Prometheus version and `promtool check metrics` read it.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Scrapes served at once; a scrape takes microseconds, so more would only be someone
/// holding connections open.
const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// How long a scraper may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How a job ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Exit code 0.
    FinishedOk,
    /// Any other exit code.
    FinishedError,
    /// Killed by a signal after a stop asked for it (Stop, or its time limit).
    Stopped,
    /// Killed by a signal nobody asked jobd for: a Signal call, the OOM killer, anyone.
    Signaled,
}

impl JobOutcome {
    pub fn of(info: &JobInfo) -> JobOutcome {
        JobOutcome::from_state(info.state, info.stop_requested || info.timed_out)
    }

    /// `asked_to_stop`: a stop (a Stop call or the job's time limit) was under way.
    fn from_state(state: JobState, asked_to_stop: bool) -> JobOutcome {
        match state {
            JobState::Finished { exit_code: 0 } => JobOutcome::FinishedOk,
            JobState::Finished { .. } => JobOutcome::FinishedError,
            JobState::Stopped { .. } if asked_to_stop => JobOutcome::Stopped,
            // A running job has no outcome; the caller waited for its end.
            JobState::Stopped { .. } | JobState::Running => JobOutcome::Signaled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::FinishedOk => "finished_ok",
            JobOutcome::FinishedError => "finished_error",
            JobOutcome::Stopped => "stopped",
            JobOutcome::Signaled => "signaled",
        }
    }
}

/// Why a TLS handshake was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    CertificateExpired,
    /// Not issued by jobd's CA (or not verifiable against it).
    UnknownCa,
    Revoked,
    NoCertificate,
    /// Verified, but its subject is not a jobd identity (see `identity.rs`).
    BadSubject,
    /// Not finished within the handshake timeout.
    Timeout,
    /// Anything else: not TLS at all, a protocol error, a closed connection.
    Other,
}

impl HandshakeRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeRefusal::CertificateExpired => "certificate_expired",
            HandshakeRefusal::UnknownCa => "unknown_ca",
            HandshakeRefusal::Revoked => "revoked",
            HandshakeRefusal::NoCertificate => "no_certificate",
            HandshakeRefusal::BadSubject => "bad_subject",
            HandshakeRefusal::Timeout => "timeout",
            HandshakeRefusal::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

/// The registry and a handle on each metric; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    jobs_started: Counter,
    jobs_ended: Family<OutcomeLabels, Counter>,
    jobs_running: Gauge,
    start_duration: Histogram,
    output_served: Counter,
    log_streams_open: Gauge,
    connections_open: Gauge,
    handshakes_refused: Family<ReasonLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The worker's process-wide count of output bytes stored, read at each scrape: the
/// capture threads count it with no handle of ours.
#[derive(Debug)]
struct StoredBytes;

impl Collector for StoredBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(worker::output_bytes_stored());
        let metric = encoder.encode_descriptor(
            "output_stored",
            "Bytes of job output stored in job logs (payload, without framing).",
            Some(&Unit::Bytes),
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("jobworker");
        let jobs_started = Counter::default();
        registry.register(
            "jobs_started",
            "Jobs started (Start calls that launched a job)",
            jobs_started.clone(),
        );
        let jobs_ended = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs_ended",
            "Jobs started by this jobd that have ended, by outcome: finished_ok (exit 0), \
             finished_error (another exit code), stopped (by a stop or a time limit), \
             signaled (by any other signal)",
            jobs_ended.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register(
            "jobs_running",
            "Jobs started by this jobd that are running",
            jobs_running.clone(),
        );
        // 1 ms to about 1 s: the start path takes a few ms on a quiet host.
        let start_duration = Histogram::new(exponential_buckets(0.001, 2.0, 11));
        registry.register_with_unit(
            "start_duration",
            "Server time of successful Start calls, handler entry to the job's exec (as in \
             the server-timing response header)",
            Unit::Seconds,
            start_duration.clone(),
        );
        registry.register_collector(Box::new(StoredBytes));
        let output_served = Counter::default();
        registry.register_with_unit(
            "output_served",
            "Bytes of job output (payload) sent on Logs streams",
            Unit::Bytes,
            output_served.clone(),
        );
        let log_streams_open = Gauge::default();
        registry.register(
            "log_streams_open",
            "Logs streams open",
            log_streams_open.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Authenticated client connections open",
            connections_open.clone(),
        );
        let handshakes_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes refused, by reason",
            handshakes_refused.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "JobService requests, by method and gRPC status code",
            requests.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                jobs_started,
                jobs_ended,
                jobs_running,
                start_duration,
                output_served,
                log_streams_open,
                connections_open,
                handshakes_refused,
                requests,
            }),
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only if an encoder breaks, which would be a bug there.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
        {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// Counts a job that has just started, and its end once it comes. `took` is the Start
    /// call's server time.
    pub fn job_started(&self, job: Arc<worker::Job>, took: Duration) {
        let inner = &self.inner;
        inner.jobs_started.inc();
        inner.start_duration.observe(took.as_secs_f64());
        inner.jobs_running.inc();
        let metrics = self.clone();
        tokio::spawn(async move {
            let info = job.wait().await;
            metrics.inner.jobs_running.dec();
            metrics
                .inner
                .jobs_ended
                .get_or_create(&OutcomeLabels {
                    outcome: JobOutcome::of(&info).as_str(),
                })
                .inc();
        });
    }

    /// Counts one request by its method and its code's gRPC name (both from fixed sets).
    pub fn request(&self, method: &'static str, code: &'static str) {
        self.inner
            .requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
    }

    pub fn output_served(&self, bytes: u64) {
        self.inner.output_served.inc_by(bytes);
    }

    pub fn handshake_refused(&self, reason: HandshakeRefusal) {
        self.inner
            .handshakes_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a Logs stream as open until the guard is dropped.
    pub fn log_stream_open(&self) -> Open {
        Open::new(self.inner.log_streams_open.clone())
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection_open(&self) -> Open {
        Open::new(self.inner.connections_open.clone())
    }
}

/// One unit of a gauge of things open, given back when the thing is dropped: the gauge
/// cannot drift however the thing ends.
#[derive(Debug)]
pub struct Open(Gauge);

impl Open {
    fn new(gauge: Gauge) -> Open {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Binds the metrics endpoint's address; a failure names it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot listen for metrics on {addr}")))
}

/// Serves `GET /metrics` (HTTP/1.1) on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%remote, limit = MAX_SCRAPE_CONNECTIONS, "metrics: connection refused: too many connections");
            continue;
        };
        let http = http.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(tcp), service).await {
                tracing::debug!(%remote, error = %e, "metrics: connection failed");
            }
            drop(slot);
        });
    }
}

/// The whole endpoint: GET (or HEAD) /metrics, and 404 for anything else.
fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let scrape =
        req.uri().path() == PATH && (req.method() == Method::GET || req.method() == Method::HEAD);
    let (status, content_type, body) = if scrape {
        (StatusCode::OK, CONTENT_TYPE, metrics.encode())
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found: GET {PATH}\n"),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, sample: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counts_show_in_the_text_format_with_their_labels() {
        let m = Metrics::new();
        m.request("Status", "NOT_FOUND");
        m.request("Status", "NOT_FOUND");
        m.request("Start", "OK");
        m.handshake_refused(HandshakeRefusal::UnknownCa);
        m.output_served(42);
        let open = m.log_stream_open();
        let text = m.encode();
        assert_eq!(
            value(
                &text,
                r#"jobworker_requests_total{method="Status",code="NOT_FOUND"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                r#"jobworker_requests_total{method="Start",code="OK"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                r#"jobworker_tls_handshakes_refused_total{reason="unknown_ca"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "jobworker_output_served_bytes_total"),
            Some(42.0),
            "{text}"
        );
        assert_eq!(value(&text, "jobworker_log_streams_open"), Some(1.0));
        assert!(text.contains("# TYPE jobworker_start_duration_seconds histogram"));
        assert!(text.contains("# TYPE jobworker_output_stored_bytes_total counter"));
        drop(open);
        assert_eq!(value(&m.encode(), "jobworker_log_streams_open"), Some(0.0));
    }

    #[test]
    fn outcomes_tell_a_stop_from_another_signal() {
        for (state, asked_to_stop, want) in [
            (JobState::Finished { exit_code: 0 }, false, "finished_ok"),
            (JobState::Finished { exit_code: 3 }, true, "finished_error"),
            (JobState::Stopped { signal: 15 }, true, "stopped"),
            (JobState::Stopped { signal: 9 }, false, "signaled"),
        ] {
            assert_eq!(
                JobOutcome::from_state(state, asked_to_stop).as_str(),
                want,
                "{state:?}"
            );
        }
    }
}
