//! One job: its immutable description, its changing state, and the channels that tell
//! waiters when it ends and readers how much output is stored.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::error::Error;
use crate::output::reader::{LogReader, Progress};
use crate::output::seek::{self, LogStart};
use crate::process::cgroup::Usage;
use crate::process::members::{Processes, Recipients};
use crate::process::spawn::{Credentials, ExitStatus};
use crate::quota::RunningQuota;
use crate::spec::{JobId, JobSpec};
use crate::state::durable::{self, Retries};
use crate::state::record::{self, JobRecord};
use crate::status::{JobInfo, JobState};

#[derive(Debug)]
struct RunState {
    state: JobState,
    ended_at: Option<SystemTime>,
    stop_requested: bool,
    output_error: Option<String>,
    /// Final resource usage, read from the cgroup when the job ended.
    usage: Usage,
    /// Killed at start-up because it was running when the previous jobd went away.
    server_lost: bool,
    /// False once the leader is reaped: from then on its pid may belong to someone else,
    /// so nothing may be signalled through it.
    reapable: bool,
    /// How and when the leader ended, from its reaping until the output is complete.
    pending_end: Option<(JobState, SystemTime)>,
    /// The stop sequence under way, if one was started.
    stopping: Option<StopSequence>,
    /// Why the final record is not stored yet (it is being retried); `None` once it is.
    record_error: Option<String>,
    /// The owner's running-job quota slot, freed when the end is shown.
    running_quota: Option<RunningQuota>,
    /// Stopped by its time limit.
    timed_out: bool,
}

/// One TERM → grace → KILL sequence, run by a task of its own so that it completes
/// whatever becomes of the requests that asked for it; each request only awaits the end.
#[derive(Debug)]
struct StopSequence {
    /// When SIGKILL is due; a later stop with a shorter grace moves it earlier.
    kill_at: watch::Sender<tokio::time::Instant>,
    /// Set once the task has sent SIGKILL, or failed to.
    /// The error is shared by every stop waiting on the sequence, hence the `Arc`.
    outcome: watch::Sender<Option<Result<(), Arc<Error>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StopSequence {
    /// A sequence whose task is gone without an outcome (its runtime was shut down) no
    /// longer holds the job: the next stop starts a new one.
    fn is_live(&self) -> bool {
        !self.task.is_finished() || self.outcome.borrow().is_some()
    }
}

/// A job known to the worker. Shared by the capture thread, stop calls and readers.
#[derive(Debug)]
pub struct Job {
    id: JobId,
    spec: JobSpec,
    pid: i32,
    /// Who the job runs as; `None`: the server's own user.
    credentials: Option<Credentials>,
    /// The leader's start time in clock ticks, recorded to recognise it after a restart.
    start_ticks: u64,
    started_at: SystemTime,
    /// The job's folder in the state dir: its record and its output log.
    dir: PathBuf,
    processes: Processes,
    run: Mutex<RunState>,
    ended: watch::Sender<bool>,
    /// True once the capture thread is done with the job's folder (final record written):
    /// only then may the folder be deleted.
    settled: watch::Sender<bool>,
    progress: watch::Sender<Progress>,
    /// Set when the job is removed: a final record still being retried is given up.
    discarded: AtomicBool,
}

impl Job {
    /// `spec` carries the isolation the job actually got; `start_ticks` and `started_at`
    /// are those of its first record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: JobId,
        spec: JobSpec,
        credentials: Option<Credentials>,
        pid: i32,
        start_ticks: u64,
        started_at: SystemTime,
        dir: PathBuf,
        processes: Processes,
        committed: u64,
    ) -> Self {
        Job {
            id,
            spec,
            credentials,
            pid,
            start_ticks,
            started_at,
            dir,
            processes,
            run: Mutex::new(RunState {
                state: JobState::Running,
                ended_at: None,
                stop_requested: false,
                output_error: None,
                usage: Usage::default(),
                server_lost: false,
                reapable: true,
                pending_end: None,
                stopping: None,
                record_error: None,
                running_quota: None,
                timed_out: false,
            }),
            ended: watch::Sender::new(false),
            settled: watch::Sender::new(false),
            progress: watch::Sender::new(Progress {
                committed,
                done: false,
            }),
            discarded: AtomicBool::new(false),
        }
    }

    /// A job of an earlier jobd, from its record; it has ended and its log is complete.
    pub(crate) fn restored(record: JobRecord, dir: PathBuf, committed: u64) -> Self {
        let start_ticks = record.start_ticks;
        let info = record.into_info();
        let state = match info.state {
            // Restoring records it as killed; a record that still says running was not.
            JobState::Running => JobState::Stopped {
                signal: libc::SIGKILL,
            },
            ended => ended,
        };
        Job {
            id: info.id,
            spec: JobSpec {
                owner: info.owner,
                argv: info.argv,
                limits: info.limits,
                isolation: Some(info.isolation),
                as_root: info.uid == Some(0),
                env: info.env,
                working_dir: Some(info.working_dir),
                timeout: info.timeout,
            },
            credentials: info
                .uid
                .zip(info.gid)
                .map(|(uid, gid)| Credentials { uid, gid }),
            pid: info.pid,
            start_ticks,
            started_at: info.started_at,
            dir,
            processes: Processes::gone(info.pid),
            run: Mutex::new(RunState {
                state,
                ended_at: info.ended_at,
                stop_requested: info.stop_requested,
                output_error: info.output_error,
                usage: Usage {
                    oom_killed: info.oom_killed,
                    cpu_usage_usec: info.cpu_usage_usec,
                    memory_peak_bytes: info.memory_peak_bytes,
                },
                server_lost: info.server_lost,
                reapable: false,
                pending_end: None,
                stopping: None,
                record_error: None,
                running_quota: None,
                timed_out: info.timed_out,
            }),
            ended: watch::Sender::new(true),
            settled: watch::Sender::new(true),
            progress: watch::Sender::new(Progress {
                committed,
                done: true,
            }),
            discarded: AtomicBool::new(false),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record that describes the job now.
    pub(crate) fn record(&self) -> JobRecord {
        JobRecord::new(self.info(), self.start_ticks, self.processes.cgroup_path())
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    pub fn owner(&self) -> &str {
        &self.spec.owner
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The state as [`Job::info`] shows it, without copying the rest.
    pub fn state(&self) -> JobState {
        self.run().state
    }

    /// When the job was shown as ended; `None` while it runs.
    pub fn ended_at(&self) -> Option<SystemTime> {
        self.run().ended_at
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
            state: run.state,
            ended_at: run.ended_at,
            stop_requested: run.stop_requested,
            oom_killed: usage.oom_killed,
            cpu_usage_usec: usage.cpu_usage_usec,
            memory_peak_bytes: usage.memory_peak_bytes,
            server_lost: run.server_lost,
            output_error: run.output_error.clone(),
            record_error: run.record_error.clone(),
            timed_out: run.timed_out,
            ..JobInfo::started(
                self.id,
                &self.spec,
                self.credentials,
                self.pid,
                self.started_at,
            )
        }
    }

    /// Stops the job: SIGTERM to every process, up to `grace` for it to end, then SIGKILL.
    /// Returns once the job has ended; stopping an ended job is not an error.
    ///
    /// The sequence runs in a task of its own, started by the first stop: a caller that
    /// gives up (a client deadline, Ctrl-C) drops only its wait, and the job still ends.
    /// Concurrent stops share that one sequence (one SIGTERM); a stop whose grace ends
    /// sooner than the sequence's brings the SIGKILL forward, one that ends later does not
    /// postpone it: every caller is promised the end within its own grace.
    pub async fn stop(self: &Arc<Self>, grace: Duration) -> Result<JobInfo, Error> {
        let mut ended = self.ended.subscribe();
        let kill_at = tokio::time::Instant::now() + grace;
        let mut outcome = {
            let mut run = self.run();
            if !run.reapable {
                // A job already reaped may still be draining its output: wait for its end.
                None
            } else {
                run.stop_requested = true;
                match run.stopping.as_ref().filter(|s| s.is_live()) {
                    Some(sequence) => {
                        sequence.kill_at.send_if_modified(|at| {
                            let sooner = kill_at < *at;
                            if sooner {
                                *at = kill_at;
                            }
                            sooner
                        });
                        Some(sequence.outcome.subscribe())
                    }
                    None => {
                        self.processes
                            .signal(libc::SIGTERM, Recipients::All)
                            .map_err(|e| Error::io(format!("cannot signal job {}", self.id), e))?;
                        let (kill_tx, kill_rx) = watch::channel(kill_at);
                        let (outcome_tx, outcome_rx) = watch::channel(None);
                        let task = tokio::spawn(Arc::clone(self).kill_after(kill_rx));
                        run.stopping = Some(StopSequence {
                            kill_at: kill_tx,
                            outcome: outcome_tx,
                            task,
                        });
                        Some(outcome_rx)
                    }
                }
            }
        };
        let failed = async {
            let error = match outcome.as_mut() {
                Some(o) => o
                    .wait_for(|o| matches!(o, Some(Err(_))))
                    .await
                    .ok()
                    .and_then(|o| o.clone())
                    .and_then(Result::err),
                None => None,
            };
            match error {
                Some(e) => e,
                // No sequence, or it cannot fail any more: only the end is awaited.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The capture thread always publishes the end; a closed channel means it is gone.
            _ = ended.wait_for(|e| *e) => Ok(self.info()),
            e = failed => Err(Error::io(
                format!("cannot kill job {}", self.id),
                std::io::Error::other(e),
            )),
        }
    }

    /// The rest of a stop sequence after its SIGTERM: SIGKILL at the deadline (which may
    /// move earlier), unless the job ends first.
    async fn kill_after(self: Arc<Self>, mut kill_at: watch::Receiver<tokio::time::Instant>) {
        let mut ended = self.ended.subscribe();
        loop {
            let at = *kill_at.borrow_and_update();
            tokio::select! {
                _ = ended.wait_for(|e| *e) => return,
                _ = tokio::time::sleep_until(at) => break,
                // Dropped only with the job's state, which this task holds: never here.
                Ok(()) = kill_at.changed() => continue,
            }
        }
        let result = self
            .signal_if_running(libc::SIGKILL, Recipients::All)
            .map(|_| ())
            .map_err(Arc::new);
        if let Err(e) = &result {
            tracing::error!(job = %self.id, error = %e, "cannot kill the job at the end of its grace period");
        }
        if let Some(sequence) = &self.run().stopping {
            sequence.outcome.send_replace(Some(result));
        }
    }

    /// Sends `signal` to the job's program, or to all of its processes. A job that has
    /// ended is the caller's mistake (`FailedPrecondition`), as for `kill` of a pid gone.
    pub fn signal(&self, signal: i32, to: Recipients) -> Result<(), Error> {
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidArgument(format!(
                "signal {signal} does not exist: signals are 1 to 64"
            )));
        }
        if self.signal_if_running(signal, to)? {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "job {} has ended: there is nothing to signal",
                self.id
            )))
        }
    }

    /// Stops the job with the normal stop sequence once it has run for `limit`, unless it
    /// has ended by then. Runs as a task of its own for the job's life: the limit lasts as
    /// long as this worker does, as the job does (a restart kills the job).
    pub(crate) async fn enforce_time_limit(self: Arc<Self>, limit: Duration, grace: Duration) {
        let mut ended = self.ended.subscribe();
        tokio::select! {
            _ = ended.wait_for(|e| *e) => return,
            _ = tokio::time::sleep(limit) => {}
        }
        {
            let mut run = self.run();
            if !run.reapable {
                return;
            }
            run.timed_out = true;
        }
        tracing::info!(job = %self.id, limit = ?limit, "job ran past its time limit; stopping it");
        if let Err(e) = self.stop(grace).await {
            tracing::error!(job = %self.id, error = %e, "cannot stop a job past its time limit");
        }
    }

    /// Signals the job's program or all of its processes unless its leader was already
    /// reaped. Returns whether the job was still running.
    fn signal_if_running(&self, signal: i32, to: Recipients) -> Result<bool, Error> {
        let run = self.run();
        if !run.reapable {
            return Ok(false);
        }
        self.processes
            .signal(signal, to)
            .map_err(|e| Error::io(format!("cannot signal job {}", self.id), e))?;
        Ok(true)
    }

    /// Waits until the job has ended.
    pub async fn wait(&self) -> JobInfo {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
        self.info()
    }

    /// Waits until the job's output is complete: it has ended, and every byte it wrote is
    /// in the log and visible to readers. Output can trail the exit by what the pipes held.
    pub async fn output_complete(&self) {
        let mut progress = self.progress.subscribe();
        let _ = progress.wait_for(|p| p.done).await;
    }

    /// A reader of the job's output from the beginning; with `follow`, it also waits for
    /// output still to come until the job has ended and every byte was delivered.
    pub fn logs(&self, follow: bool) -> Result<LogReader, Error> {
        let (file, progress, committed) = self.open_log()?;
        Ok(LogReader::new(
            file,
            progress,
            follow,
            committed,
            seek::Start::BEGINNING,
        ))
    }

    /// Like [`Job::logs`], from `start`. Finding a time or a tail walks the log once,
    /// on the blocking pool; a position that names no record of this job's log is
    /// `InvalidArgument`.
    pub async fn logs_from(&self, follow: bool, start: LogStart) -> Result<LogReader, Error> {
        let (file, progress, committed) = self.open_log()?;
        let id = self.id;
        let (file, found) = tokio::task::spawn_blocking(move || {
            let found = seek::find(&file, start, committed);
            (file, found)
        })
        .await
        .map_err(|e| Error::io("output reader task failed", std::io::Error::other(e)))?;
        let start = found.map_err(|e| match e {
            seek::SeekError::NotARecord { .. } => Error::InvalidArgument(e.to_string()),
            seek::SeekError::Io(e) => Error::io(format!("cannot read output of job {id}"), e),
        })?;
        Ok(LogReader::new(file, progress, follow, committed, start))
    }

    fn open_log(&self) -> Result<(File, watch::Receiver<Progress>, u64), Error> {
        let file = File::open(self.dir.join(record::LOG_FILE))
            .map_err(|e| Error::io(format!("cannot open output of job {}", self.id), e))?;
        let progress = self.progress.subscribe();
        let committed = progress.borrow().committed;
        Ok((file, progress, committed))
    }

    // ---- called by the capture thread ----

    /// Reaps the leader, once whatever it left behind is gone too. The end is kept back
    /// until [`Job::publish_end`], which the capture thread calls once the output is
    /// complete: whoever sees the job ended then also finds all of its output (Docker
    /// likewise waits for a container's streams before it reports the exit).
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
        run.pending_end = Some((state, ended_at));
        run.usage = usage;
        run.reapable = false;
    }

    /// Shows the end that [`Job::reap`] recorded; does nothing before the reaping or after
    /// an earlier call.
    pub(crate) fn publish_end(&self) {
        let mut run = self.run();
        let Some((state, ended_at)) = run.pending_end.take() else {
            return;
        };
        run.state = state;
        run.ended_at = Some(ended_at);
        let quota = run.running_quota.take();
        drop(run);
        // Free before anyone hears of the end: a caller whose Stop returned may start again.
        drop(quota);
        tracing::debug!(job = %self.id, %state, "job ended");
        self.ended.send_replace(true);
    }

    pub fn is_running(&self) -> bool {
        self.run().reapable
    }

    /// Keeps the owner's running-job slot taken until the end is shown.
    pub(crate) fn hold_until_end(&self, quota: RunningQuota) {
        self.run().running_quota = Some(quota);
    }

    /// Writes the final record (retried as [`Job::store_final`] says) and marks the
    /// job's folder as no longer in use. `release` runs in between: the capture thread lets
    /// go of the state dir there, so whoever waits for [`Job::settled`] finds the state dir
    /// free to open again.
    pub(crate) fn settle(&self, retries: &Retries, release: impl FnOnce()) {
        self.store_final(retries);
        release();
        self.settled.send_replace(true);
    }

    pub(crate) fn is_settled(&self) -> bool {
        *self.settled.borrow()
    }

    /// Waits until the capture thread is done with the job's folder.
    pub(crate) async fn settled(&self) {
        let mut settled = self.settled.subscribe();
        let _ = settled.wait_for(|s| *s).await;
    }

    pub(crate) fn set_record_error(&self, message: Option<String>) {
        self.run().record_error = message;
    }

    /// Gives up a final record still being retried: the job is being removed.
    pub(crate) fn discard(&self) {
        self.discarded.store(true, Ordering::Release);
    }

    pub(crate) fn is_discarded(&self) -> bool {
        self.discarded.load(Ordering::Acquire)
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

    /// Writes the job's final record, retrying with backoff until it is stored, the job is
    /// removed, or the worker shuts down; the job's status tells of a record not stored.
    fn store_final(&self, retries: &Retries) {
        let mut pause = durable::FIRST_RETRY;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let e = match durable::write_final(self.dir(), &self.record()) {
                Ok(()) => {
                    if attempts > 1 {
                        self.set_record_error(None);
                        tracing::info!(job = %self.id(), attempts, "stored the job's final record");
                    }
                    return;
                }
                Err(e) => e,
            };
            let why = if durable::is_full(&e) {
                "the state dir is full".to_string()
            } else {
                e.to_string()
            };
            if attempts == 1 {
                tracing::error!(job = %self.id(), error = %e, "cannot store the job's final record; retrying");
                self.set_record_error(Some(format!(
                    "the job's end is not stored yet (retrying): {why}"
                )));
            }
            if self.is_discarded() {
                return;
            }
            let down = retries.pause(pause);
            if self.is_discarded() {
                return;
            }
            if down {
                if let Err(e) = durable::write_final(self.dir(), &self.record()) {
                    tracing::error!(job = %self.id(), error = %e, attempts = attempts + 1, "cannot store the job's final record before shutdown: a restart will show it as lost");
                } else {
                    self.set_record_error(None);
                }
                return;
            }
            pause = (pause * 2).min(durable::MAX_RETRY);
        }
    }
}
