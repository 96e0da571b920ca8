//! One job: its immutable description, its changing state, and the channels that tell
//! waiters when it ends and readers how much output is stored.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::cgroup::Usage;
use crate::error::Error;
use crate::processes::Processes;
use crate::spawn::ExitStatus;
use crate::spec::{JobId, JobSpec};
use crate::status::{JobInfo, JobState};
use crate::subscribe::LogReader;

/// How much of the job's log is committed, and whether the writer has finished.
/// Readers never read past `committed`, so they never see a half-written record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub committed: u64,
    pub done: bool,
}

#[derive(Debug)]
struct RunState {
    state: JobState,
    ended_at: Option<SystemTime>,
    stop_requested: bool,
    output_error: Option<String>,
    /// Final resource usage, read from the cgroup when the job ended.
    usage: Usage,
    /// False once the leader is reaped: from then on its pid may belong to someone else,
    /// so nothing may be signalled through it.
    reapable: bool,
}

/// A job known to the worker. Shared by the capture thread, stop calls and readers.
#[derive(Debug)]
pub struct Job {
    id: JobId,
    spec: JobSpec,
    pid: i32,
    started_at: SystemTime,
    log_path: PathBuf,
    processes: Processes,
    run: Mutex<RunState>,
    ended: watch::Sender<bool>,
    progress: watch::Sender<Progress>,
}

impl Job {
    pub(crate) fn new(
        id: JobId,
        spec: JobSpec,
        pid: i32,
        log_path: PathBuf,
        processes: Processes,
        committed: u64,
    ) -> Self {
        Job {
            id,
            spec,
            pid,
            started_at: SystemTime::now(),
            log_path,
            processes,
            run: Mutex::new(RunState {
                state: JobState::Running,
                ended_at: None,
                stop_requested: false,
                output_error: None,
                usage: Usage::default(),
                reapable: true,
            }),
            ended: watch::Sender::new(false),
            progress: watch::Sender::new(Progress {
                committed,
                done: false,
            }),
        }
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    pub fn owner(&self) -> &str {
        &self.spec.owner
    }

    fn run(&self) -> MutexGuard<'_, RunState> {
        // The state stays consistent even if a holder panicked: every update is one store.
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn info(&self) -> JobInfo {
        let run = self.run();
        let usage = if run.reapable {
            self.processes.usage()
        } else {
            run.usage
        };
        JobInfo {
            id: self.id,
            owner: self.spec.owner.clone(),
            argv: self.spec.argv.clone(),
            limits: self.spec.limits.clone(),
            state: run.state,
            pid: self.pid,
            started_at: self.started_at,
            ended_at: run.ended_at,
            stop_requested: run.stop_requested,
            oom_killed: usage.oom_killed,
            cpu_usage_usec: usage.cpu_usage_usec,
            memory_peak_bytes: usage.memory_peak_bytes,
            output_error: run.output_error.clone(),
        }
    }

    /// Stops the job: SIGTERM to every process, up to `grace` for it to end, then SIGKILL.
    /// Returns once the job has ended; stopping an ended job is not an error.
    pub async fn stop(&self, grace: Duration) -> Result<JobInfo, Error> {
        let mut ended = self.ended.subscribe();
        if !self.signal_if_running(libc::SIGTERM, true)? {
            return Ok(self.info());
        }
        if tokio::time::timeout(grace, ended.wait_for(|e| *e))
            .await
            .is_err()
        {
            self.signal_if_running(libc::SIGKILL, true)?;
        }
        // The capture thread always publishes the end; a closed channel means it is gone.
        let _ = ended.wait_for(|e| *e).await;
        Ok(self.info())
    }

    /// Signals every process of the job unless its leader was already reaped.
    /// Returns whether the job was still running.
    fn signal_if_running(&self, signal: i32, as_stop: bool) -> Result<bool, Error> {
        let mut run = self.run();
        if !run.reapable {
            return Ok(false);
        }
        if as_stop {
            run.stop_requested = true;
        }
        self.processes
            .signal(signal)
            .map_err(|e| Error::io(format!("cannot signal job {}", self.id), e))?;
        Ok(true)
    }

    /// Waits until the job has ended.
    pub async fn wait(&self) -> JobInfo {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
        self.info()
    }

    /// A reader of the job's output from the beginning; with `follow`, it also waits for
    /// output still to come until the job has ended and every byte was delivered.
    pub fn logs(&self, follow: bool) -> Result<LogReader, Error> {
        let file = File::open(&self.log_path)
            .map_err(|e| Error::io(format!("cannot open output of job {}", self.id), e))?;
        Ok(LogReader::new(file, self.progress.subscribe(), follow))
    }

    // ---- called by the capture thread ----

    /// Records the leader's exit, once whatever it left behind is gone too.
    pub(crate) fn reap(&self, wait: impl FnOnce() -> std::io::Result<ExitStatus>) {
        let mut run = self.run();
        let ended_at = SystemTime::now();
        let (status, usage) = self.processes.finish(wait);
        let state = match status {
            Ok(ExitStatus::Exited(code)) => JobState::Finished { exit_code: code },
            Ok(ExitStatus::Signaled(signal)) => JobState::Stopped { signal },
            Err(e) => {
                tracing::error!(job = %self.id, error = %e, "cannot reap the job's process");
                JobState::Stopped {
                    signal: libc::SIGKILL,
                }
            }
        };
        run.state = state;
        run.ended_at = Some(ended_at);
        run.usage = usage;
        run.reapable = false;
        drop(run);
        tracing::debug!(job = %self.id, %state, "job ended");
        self.ended.send_replace(true);
    }

    pub(crate) fn set_output_error(&self, message: String) {
        let mut run = self.run();
        if run.output_error.is_none() {
            tracing::error!(job = %self.id, error = %message, "job output is no longer stored");
            run.output_error = Some(message);
        }
    }

    pub(crate) fn publish_committed(&self, committed: u64) {
        self.progress.send_modify(|p| p.committed = committed);
    }

    /// Tells readers that no more output will come, so followers drain and stop.
    pub(crate) fn finish_output(&self) {
        self.progress.send_modify(|p| p.done = true);
    }
}
