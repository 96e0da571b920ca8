//! A job's state as people and programs read it.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::process::spawn::Credentials;
use crate::spec::{Isolation, JobId, JobSpec, Limits};

/// Where a job is in its life. The `Display` forms are part of the product's interface.
///
/// Job records store it as it is (`"state": "finished", "exit_code": 3`, flattened into
/// the record): a change here is a change of the record format (see
/// [`crate::state::record::RECORD_VERSION`]), which the store's tests pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobState {
    Running,
    /// The process exited on its own with this code.
    Finished {
        exit_code: i32,
    },
    /// The process was killed by this signal (by a stop, the kernel or anyone else).
    Stopped {
        signal: i32,
    },
}

impl JobState {
    pub fn is_running(&self) -> bool {
        matches!(self, JobState::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Running => f.write_str("running"),
            JobState::Finished { exit_code } => write!(f, "finished (exit code: {exit_code})"),
            JobState::Stopped { signal } => write!(f, "stopped (signal: {signal})"),
        }
    }
}

/// A snapshot of everything known about a job.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    pub owner: String,
    pub argv: Vec<String>,
    pub limits: Limits,
    /// The namespaces the job actually got.
    pub isolation: Isolation,
    /// The user and group it runs as; `None`: the server's own.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub state: JobState,
    pub pid: i32,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub stop_requested: bool,
    pub oom_killed: bool,
    pub cpu_usage_usec: u64,
    pub memory_peak_bytes: u64,
    /// The job was still running when the previous jobd went away, and was killed when
    /// jobd started again.
    pub server_lost: bool,
    /// Set when output could not be stored (e.g. the disk is full); the job keeps running.
    pub output_error: Option<String>,
    /// Set while the job's final record cannot be stored (it is retried): until it is, a
    /// restart would find the job running, and so report it lost.
    pub record_error: Option<String>,
    /// The whole environment the job got, as `KEY=VALUE`.
    pub env: Vec<String>,
    pub working_dir: String,
    /// The time limit the job got, if any.
    pub timeout: Option<Duration>,
    /// The job was stopped because it ran past its time limit.
    pub timed_out: bool,
}

impl JobInfo {
    /// A job whose process has just started: the one place a job's description is taken
    /// from its spec.
    pub(crate) fn started(
        id: JobId,
        spec: &JobSpec,
        credentials: Option<Credentials>,
        pid: i32,
        started_at: SystemTime,
    ) -> JobInfo {
        JobInfo {
            id,
            owner: spec.owner.clone(),
            argv: spec.argv.clone(),
            limits: spec.limits.clone(),
            isolation: spec.isolation.unwrap_or_default(),
            uid: credentials.map(|c| c.uid),
            gid: credentials.map(|c| c.gid),
            state: JobState::Running,
            pid,
            started_at,
            ended_at: None,
            stop_requested: false,
            oom_killed: false,
            cpu_usage_usec: 0,
            memory_peak_bytes: 0,
            server_lost: false,
            output_error: None,
            record_error: None,
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone().unwrap_or_else(|| "/".into()),
            timeout: spec.timeout,
            timed_out: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms_are_exact() {
        assert_eq!(JobState::Running.to_string(), "running");
        assert_eq!(
            JobState::Finished { exit_code: 0 }.to_string(),
            "finished (exit code: 0)"
        );
        assert_eq!(
            JobState::Stopped { signal: 9 }.to_string(),
            "stopped (signal: 9)"
        );
    }
}
