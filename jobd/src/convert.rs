//! Translation between the wire types and the worker's types, with request validation.

use std::time::{Duration, SystemTime};

use proto::v1 as pb;
use tonic::Status;
use worker::{DeviceRate, Isolation, JobInfo, JobState, Limits, Record, Stream};

/// Bounds on what one Start request may ask for.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_argv_bytes: usize,
    pub max_args: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_argv_bytes: 128 * 1024,
            max_args: 4096,
        }
    }
}

pub fn argv(argv: Vec<String>, limits: &RequestLimits) -> Result<Vec<String>, Status> {
    if argv.len() > limits.max_args {
        return Err(Status::resource_exhausted(format!(
            "the command has {} arguments; the server allows at most {}",
            argv.len(),
            limits.max_args
        )));
    }
    let bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
    if bytes > limits.max_argv_bytes {
        return Err(Status::resource_exhausted(format!(
            "the command is {bytes} bytes long; the server allows at most {}",
            limits.max_argv_bytes
        )));
    }
    Ok(argv)
}

pub fn limits(l: Option<pb::Limits>) -> Result<Limits, Status> {
    let Some(l) = l else {
        return Ok(Limits::default());
    };
    let rates = |v: Vec<pb::DeviceRate>| {
        v.into_iter()
            .map(|r| DeviceRate {
                device: r.device,
                bytes_per_second: r.bytes_per_second,
            })
            .collect()
    };
    Ok(Limits {
        cpus: l.cpus,
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        device_read_bps: rates(l.device_read_bps),
        device_write_bps: rates(l.device_write_bps),
    })
}

fn limits_to_pb(l: &Limits) -> pb::Limits {
    let rates = |v: &[DeviceRate]| {
        v.iter()
            .map(|r| pb::DeviceRate {
                device: r.device.clone(),
                bytes_per_second: r.bytes_per_second,
            })
            .collect()
    };
    pb::Limits {
        cpus: l.cpus,
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        device_read_bps: rates(&l.device_read_bps),
        device_write_bps: rates(&l.device_write_bps),
    }
}

fn timestamp(t: SystemTime) -> proto::Timestamp {
    t.into()
}

/// A `Duration` of the API: never negative (there is none in jobworker).
fn duration(d: Duration) -> proto::Duration {
    proto::Duration::try_from(d).unwrap_or(proto::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A duration a caller sent, for the field `what`: negative or malformed is their mistake.
pub fn duration_from(d: proto::Duration, what: &str) -> Result<Duration, Status> {
    Duration::try_from(d).map_err(|_| {
        Status::invalid_argument(format!(
            "{what} of {}.{:09} s is not a duration (negative, or nanos out of range)",
            d.seconds, d.nanos
        ))
    })
}

/// A time a caller sent (`since`): before the epoch is the epoch, as nanoseconds.
pub fn unix_nanos_from(t: proto::Timestamp, what: &str) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{what}: nanos {} out of range",
            t.nanos
        )));
    }
    Ok(t.seconds
        .max(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos)))
}

pub fn isolation(i: Option<pb::Isolation>) -> Option<Isolation> {
    i.map(|i| Isolation {
        pid: i.pid,
        mount: i.mount,
        net: i.net,
    })
}

pub fn status(info: &JobInfo) -> pb::JobStatus {
    into_status(info.clone())
}

/// [`status`] without copying the job's argv and texts a second time.
pub fn into_status(info: JobInfo) -> pb::JobStatus {
    let (state, exit_code, signal) = match info.state {
        JobState::Running => (pb::JobState::Running, None, None),
        JobState::Finished { exit_code } => (pb::JobState::Finished, Some(exit_code), None),
        JobState::Stopped { signal } => (pb::JobState::Stopped, None, Some(signal)),
    };
    pb::JobStatus {
        job_id: info.id.to_string(),
        owner: info.owner,
        argv: info.argv,
        limits: Some(limits_to_pb(&info.limits)),
        state: state as i32,
        exit_code,
        signal,
        started_at: Some(timestamp(info.started_at)),
        ended_at: info.ended_at.map(timestamp),
        stop_requested: info.stop_requested,
        oom_killed: info.oom_killed,
        cpu_usage: Some(duration(Duration::from_micros(info.cpu_usage_usec))),
        memory_peak_bytes: info.memory_peak_bytes,
        pid: info.pid.max(0) as u32,
        output_error: info.output_error.unwrap_or_default(),
        record_error: info.record_error.unwrap_or_default(),
        server_lost: info.server_lost,
        isolation: Some(pb::Isolation {
            pid: info.isolation.pid,
            mount: info.isolation.mount,
            net: info.isolation.net,
        }),
        uid: info.uid,
        gid: info.gid,
        env: info.env,
        working_dir: info.working_dir,
        timeout: info.timeout.map(duration),
        timed_out: info.timed_out,
    }
}

pub fn position(p: worker::LogPosition) -> pb::LogPosition {
    pb::LogPosition {
        offset: p.offset,
        skip: p.skip,
    }
}

/// Where a Logs request starts; a time or a position the caller sent is checked.
pub fn log_start(start: Option<pb::logs_request::Start>) -> Result<worker::LogStart, Status> {
    use pb::logs_request::Start as S;
    Ok(match start {
        None => worker::LogStart::Beginning,
        Some(S::Position(p)) => worker::LogStart::Position(worker::LogPosition {
            offset: p.offset,
            skip: p.skip,
        }),
        Some(S::Since(t)) => worker::LogStart::Since(unix_nanos_from(t, "since")?),
        Some(S::TailLines(n)) => worker::LogStart::TailLines(n.into()),
    })
}

pub fn records(batch: Vec<Record>, next: worker::LogPosition) -> pb::LogsResponse {
    pb::LogsResponse {
        records: batch
            .into_iter()
            .map(|r| pb::OutputRecord {
                stream: match r.stream {
                    Stream::Stdout => pb::Stream::Stdout,
                    Stream::Stderr => pb::Stream::Stderr,
                    Stream::System => pb::Stream::System,
                } as i32,
                time: Some(timestamp(r.time())),
                data: r.data,
            })
            .collect(),
        next: Some(position(next)),
    }
}

/// Maps a worker error to the status a caller should see: the one place that tells a
/// caller's mistake from a server fault. No wildcard arm: a new variant must be judged here.
pub fn error(e: worker::Error) -> Status {
    use worker::Error as E;
    match e {
        // The caller's mistakes.
        E::InvalidArgument(_) | E::Exec { .. } | E::LimitRefused(_) => {
            Status::invalid_argument(e.to_string())
        }
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::PermissionDenied(_) => Status::permission_denied(e.to_string()),
        E::ResourceExhausted(_) | E::StateDirFull { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        E::Unsupported(_) | E::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        // The server's faults.
        E::Cgroup(_) | E::Io { .. } => Status::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use tonic::Code;
    use worker::CgroupError;
    use worker::JobId;

    use super::*;

    fn write_failed(errno: i32) -> CgroupError {
        CgroupError::Write {
            path: PathBuf::from("/sys/fs/cgroup/jobd/jobs/x/io.max"),
            value: "7:0 rbps=1048576 wbps=max".into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn a_full_state_dir_is_resource_exhausted_and_says_so() {
        let status = error(worker::Error::StateDirFull {
            context: "cannot record job 1234".into(),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "cannot record job 1234: the state dir is full"
        );
    }

    #[test]
    fn callers_mistakes_and_server_faults_get_their_codes() {
        use worker::Error as E;
        let id: JobId = "6f1c2a7e-8a7b-4b7e-9c1d-2e3f4a5b6c7d".parse().unwrap();
        let cases = [
            (E::InvalidArgument("bad".into()), Code::InvalidArgument),
            (
                E::Exec {
                    program: "nope".into(),
                    reason: "command not found".into(),
                },
                Code::InvalidArgument,
            ),
            (E::from(write_failed(libc::EINVAL)), Code::InvalidArgument),
            (E::from(write_failed(libc::ENODEV)), Code::InvalidArgument),
            (E::PermissionDenied("no".into()), Code::PermissionDenied),
            (E::NotFound(id), Code::NotFound),
            (
                E::Unsupported("no cgroups".into()),
                Code::FailedPrecondition,
            ),
            (E::ResourceExhausted("full".into()), Code::ResourceExhausted),
            (
                E::StateDirFull {
                    context: "x".into(),
                },
                Code::ResourceExhausted,
            ),
            (
                E::FailedPrecondition("running".into()),
                Code::FailedPrecondition,
            ),
            (E::from(write_failed(libc::ENOSPC)), Code::Internal),
            (E::from(write_failed(libc::EIO)), Code::Internal),
            (E::from(CgroupError::NoHierarchy), Code::Internal),
            (
                E::Io {
                    context: "cannot prepare job".into(),
                    source: io::Error::from_raw_os_error(libc::EIO),
                },
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let shown = format!("{e:?}");
            assert_eq!(error(e).code(), code, "{shown}");
        }
    }

    #[test]
    fn a_refused_limit_names_the_file_and_the_value() {
        let status = error(worker::Error::from(write_failed(libc::EINVAL)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("\"7:0 rbps=1048576 wbps=max\" to /sys/fs/cgroup/jobd/jobs/x/io.max"),
            "{}",
            status.message()
        );
    }
}
