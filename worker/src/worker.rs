//! The job table and the start path: from a validated spec to a running, captured job.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::ahead::Ahead;
use crate::capture::{self, Capture};
use crate::cgroup::{self, CgroupLimits, CgroupMode, Cgroups};
use crate::durable::{self, Retries};
use crate::error::Error;
use crate::folder::{self, Spare};
use crate::job::Job;
use crate::limits::LimitPolicy;
use crate::logfile;
use crate::netns;
use crate::page::{self, ListQuery, Page};
use crate::private;
use crate::processes::Processes;
use crate::quota::Quotas;
use crate::restore;
use crate::spawn::{self, Credentials, SpawnError, Stage};
use crate::spec::{Isolation, JobId, JobSpec};
use crate::status::JobInfo;
use crate::store::{self, JobRecord, StateLock};
use crate::users::{JobUsers, UidRange};

/// The search path and the whole environment a job gets: like systemd services, jobs do
/// not inherit the server's environment.
pub const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Network namespaces kept ready for starts: enough for a burst of starts, while each idle
/// one holds a little kernel memory.
const SPARE_NETNS: usize = 8;

/// Job folders kept ready for starts.
const SPARE_FOLDERS: usize = 8;

/// The size of a job's private `/tmp` (and `/var/tmp`) when it has no memory limit. With
/// one, the limit bounds them instead: tmpfs pages are charged to the job's memory cgroup.
pub const PRIVATE_TMP_BYTES: u64 = 64 * 1024 * 1024;

/// Pipe capacity asked for per stream: fewer wake-ups for chatty jobs. Best effort.
const PIPE_CAPACITY: libc::c_int = 1024 * 1024;

/// The state dir when none is configured: the system location as root, else the user's
/// (`$XDG_STATE_HOME/jobworker` or `~/.local/state/jobworker`). jobc uses it to find the
/// development PKI that jobd creates there.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/jobworker");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("jobworker")
}

/// How the worker is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where job records and output logs live.
    pub state_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when a stop does not say otherwise.
    pub default_grace: Duration,
    /// Whether jobs get cgroups (and so limits).
    pub cgroups: CgroupMode,
    /// The cgroup to put jobd's subtree under; default: the one this process runs in.
    pub cgroup_root: Option<PathBuf>,
    /// Move this process into `<root>/jobd/server`, as the no-internal-processes rule
    /// requires when it runs in the cgroup whose controllers it delegates.
    pub move_into_cgroup: bool,
    /// Defaults and maxima for job limits.
    pub limits: LimitPolicy,
    /// How long ended jobs and their output are kept; `None`: forever.
    pub retention: Option<Duration>,
    /// Most output bytes stored per job; `None`: all of it. Past the cap the job keeps
    /// running, its further output is discarded, and its log says so.
    pub max_output_bytes: Option<u64>,
    /// Namespaces a job gets when it does not say; those the kernel refuses are dropped
    /// from this default (with a warning) but refused when a job asks for them.
    pub isolation: Isolation,
    /// Where each owner's own uid (and gid) for their jobs comes from; `None`: jobs run as
    /// the worker's own user. Ignored, with a warning, when the worker is not root.
    pub job_uids: Option<UidRange>,
    /// Whether a job may ask to run as root instead of its owner's uid.
    pub allow_root: bool,
    /// Most jobs running at once; past it, starts fail with `ResourceExhausted`.
    pub max_running_jobs: usize,
    /// Whether to run a job that neither a cgroup nor a PID namespace holds. Such a job is
    /// only its process group, which a `setsid` leaves: what it starts that way outlives
    /// it. Off (refused with `FailedPrecondition`) unless set; jobd never sets it.
    pub allow_unheld_jobs: bool,
    /// Most jobs one owner may have running at once (`ResourceExhausted` past it).
    pub max_running_jobs_per_user: usize,
    /// Most jobs, running or ended, kept for one owner (`ResourceExhausted` past it).
    pub max_kept_jobs_per_user: usize,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            default_grace: Duration::from_secs(5),
            cgroups: CgroupMode::Auto,
            cgroup_root: None,
            move_into_cgroup: true,
            limits: LimitPolicy::default(),
            retention: None,
            max_output_bytes: None,
            isolation: Isolation::NONE,
            job_uids: None,
            allow_root: false,
            max_running_jobs: 4096,
            allow_unheld_jobs: false,
            max_running_jobs_per_user: 256,
            max_kept_jobs_per_user: 10_000,
        }
    }
}

type JobTable = RwLock<HashMap<JobId, Arc<Job>>>;

/// The worker: owns every job. Cheap to clone; clones share the same jobs.
#[derive(Clone)]
pub struct Worker {
    config: Arc<Config>,
    /// `config.isolation` less what the kernel refused.
    default_isolation: Isolation,
    jobs: Arc<JobTable>,
    cgroups: Option<Arc<Cgroups>>,
    /// Jobs started and not yet reaped, counted without walking the table.
    running: Arc<AtomicUsize>,
    /// Each owner's running and kept jobs, against the per-user quotas.
    quotas: Arc<Quotas>,
    /// Held by each capture thread too, until its job's final record is written.
    state_lock: Arc<StateLock>,
    /// Network namespaces made ahead, when jobs get one by default.
    netns: Option<Arc<Ahead<OwnedFd>>>,
    /// Job folders made ahead.
    folders: Option<Arc<Ahead<Spare>>>,
    /// Tells capture threads retrying a final record that the worker shuts down.
    retries: Arc<Retries>,
    /// Each owner's uid, when jobs get one.
    users: Option<Arc<JobUsers>>,
}

impl Worker {
    pub fn new(config: Config) -> Result<Self, Error> {
        let jobs_dir = config.state_dir.join("jobs");
        private::create_dir_all(&jobs_dir)
            .map_err(|e| Error::io(format!("cannot create {}", jobs_dir.display()), e))?;
        let lock = StateLock::acquire(&config.state_dir)?;
        make_private(&config.state_dir)?;
        let users = job_users(&config)?.map(Arc::new);
        // Cgroups first: their set-up kills what an earlier jobd left running.
        let cgroups = setup_cgroups(&config)?.map(Arc::new);
        let restored = restore::restore_jobs(&jobs_dir);
        if !restored.is_empty() {
            tracing::info!(jobs = restored.len(), "restored jobs from the state dir");
        }
        let table: HashMap<JobId, Arc<Job>> = restored
            .into_iter()
            .map(|job| (job.id(), Arc::new(job)))
            .collect();
        let quotas = Quotas::new(
            config.max_running_jobs_per_user,
            config.max_kept_jobs_per_user,
            table.values().map(|job| job.owner()),
        );
        let default_isolation = supported_isolation(config.isolation);
        if cgroups.is_none() && !default_isolation.pid && !config.allow_unheld_jobs {
            tracing::warn!("neither cgroups nor PID namespaces by default: every job that does not ask for a PID namespace is refused");
        }
        let netns = default_isolation
            .net
            .then(|| netns::pool(SPARE_NETNS))
            .and_then(|pool| made_ahead("network namespaces", pool));
        let folders = made_ahead(
            "job folders",
            folder::spares(&config.state_dir, SPARE_FOLDERS),
        );
        let worker = Worker {
            netns,
            folders,
            users,
            default_isolation,
            config: Arc::new(config),
            jobs: Arc::new(RwLock::new(table)),
            cgroups,
            running: Arc::new(AtomicUsize::new(0)),
            quotas,
            state_lock: Arc::new(lock),
            retries: Arc::new(Retries::default()),
        };
        if let Some(retention) = worker.config.retention {
            worker.prune(retention);
        }
        Ok(worker)
    }

    /// Deletes an ended job and its output.
    pub async fn remove(&self, id: &JobId) -> Result<(), Error> {
        let job = self.job(id)?;
        if job.is_running() {
            return Err(Error::FailedPrecondition(format!(
                "job {id} is still running: stop it first"
            )));
        }
        // An ended job's capture thread may still be writing its final record, or
        // retrying it: the job is going away, so that may stop.
        job.discard();
        self.retries.wake();
        job.settled().await;
        self.delete(&job)
    }

    /// Forgets an ended, settled job and deletes its folder.
    fn delete(&self, job: &Job) -> Result<(), Error> {
        let id = job.id();
        let removed = self
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if removed.is_some() {
            self.quotas.forget(job.owner());
        }
        fs::remove_dir_all(job.dir())
            .map_err(|e| Error::io(format!("cannot delete the files of job {id}"), e))
    }

    /// Deletes ended jobs that ended longer than `retention` ago; returns how many.
    pub fn prune(&self, retention: Duration) -> usize {
        let now = std::time::SystemTime::now();
        // Ids only: a copy of every job (and its argv) would cost what the table holds.
        let expired: Vec<JobId> = self
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|j| {
                j.ended_at()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > retention)
            })
            .map(|j| j.id())
            .collect();
        let mut removed = 0;
        for id in expired {
            // A job that ended moments ago may not be settled yet: the next round takes it.
            let Ok(job) = self.job(&id) else { continue };
            if !job.is_settled() {
                continue;
            }
            match self.delete(&job) {
                Ok(()) => removed += 1,
                Err(e) => tracing::error!(job = %id, error = %e, "cannot delete an expired job"),
            }
        }
        if removed > 0 {
            tracing::info!(jobs = removed, "deleted jobs past their retention");
        }
        removed
    }

    /// The isolation a job gets when it does not ask for any.
    pub fn default_isolation(&self) -> Isolation {
        self.default_isolation
    }

    /// The isolation a job that asks for `asked` gets: the one place the server's default
    /// is applied (jobd calls it too, to judge a request against the default before it
    /// starts anything).
    pub fn isolation(&self, asked: Option<Isolation>) -> Isolation {
        asked.unwrap_or(self.default_isolation)
    }

    /// Where job cgroups are created, when cgroups are in use.
    pub fn cgroup_jobs_dir(&self) -> Option<PathBuf> {
        self.cgroups.as_ref().map(|c| c.jobs_dir())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts a job and returns once its program has been exec'd. On failure nothing of
    /// the job is left: no process, no files, no table entry.
    pub async fn start(&self, mut spec: JobSpec) -> Result<Arc<Job>, Error> {
        spec.validate()?;
        let cgroup_limits = match &self.cgroups {
            Some(_) => {
                spec.limits = self.config.limits.resolve(&spec.limits)?;
                Some(CgroupLimits::from_limits(&spec.limits)?)
            }
            None if !spec.limits.is_empty() => {
                return Err(Error::Unsupported(
                    "resource limits need cgroup v2 with the cpu, memory, io and pids \
                     controllers, which this server does not have"
                        .into(),
                ))
            }
            None => None,
        };
        let isolation = self.isolation(spec.isolation);
        spec.isolation = Some(isolation);
        if self.cgroups.is_none() && !isolation.pid && !self.config.allow_unheld_jobs {
            return Err(Error::FailedPrecondition(
                "without cgroups a job needs a PID namespace to hold its processes".into(),
            ));
        }
        let slot = RunningSlot::take(&self.running, self.config.max_running_jobs)?;
        let (running_quota, kept_quota) = self.quotas.reserve(&spec.owner)?;
        let credentials = match (spec.as_root, &self.users) {
            (true, _) if !self.config.allow_root => {
                return Err(Error::PermissionDenied(
                    "this server does not run jobs as root".into(),
                ))
            }
            (true, Some(_)) => Some(Credentials { uid: 0, gid: 0 }),
            (false, Some(users)) => Some(users.credentials(&spec.owner)?),
            (_, None) => None,
        };
        let program = resolve_program(&spec.argv[0])?;
        let command = spawn::Command::new(
            cstring(program.as_os_str().as_encoded_bytes())?,
            spec.argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            vec![cstring(format!("PATH={JOB_PATH}").as_bytes())?],
            cstring(b"/")?,
        )
        .namespaces(isolation)
        .netns(
            self.netns
                .as_ref()
                .filter(|_| isolation.net)
                .and_then(|pool| pool.take()),
        )
        .credentials(credentials)
        .private_tmp(
            isolation
                .mount
                .then(|| spec.limits.memory_bytes.unwrap_or(PRIVATE_TMP_BYTES)),
        );

        let id = JobId::new();
        let dir = self.config.state_dir.join("jobs").join(id.to_string());
        let prepared = self
            .job_folder(&dir)
            .and_then(|folder| Ok((folder, Pipes::new()?)));
        let (folder::Folder { log, first_record }, pipes) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(Error::storage(format!("cannot prepare job {id}"), e));
            }
        };
        let cgroup = match (&self.cgroups, &cgroup_limits) {
            (Some(cgroups), Some(limits)) => match cgroups.create_job(&id.to_string(), limits) {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    // The caller's if the kernel refused one of its limits.
                    return Err(Error::from(e));
                }
            },
            _ => None,
        };

        // The record, but for what only the clone tells: written while the child sets up.
        let mut record = durable::first_record(
            id,
            &spec,
            credentials,
            0,
            0,
            cgroup.as_ref().map(|c| c.path().to_path_buf()),
            SystemTime::UNIX_EPOCH,
        );
        let record_dir = dir.clone();
        let (cloned_tx, cloned_rx) = oneshot::channel::<(i32, spawn::Gate)>();
        let (recorded_tx, recorded_rx) = std::sync::mpsc::sync_channel::<JobRecord>(1);
        let (tx, rx) = oneshot::channel();
        let jobs = Arc::clone(&self.jobs);
        let max_output = self.config.max_output_bytes;
        let program_name = spec.argv[0].clone();
        let spec_program = program_name.clone();
        // No other worker may open the state dir while this job's final record is unwritten.
        let state_lock = Arc::clone(&self.state_lock);
        let retries = Arc::clone(&self.retries);
        let thread = std::thread::Builder::new()
            .name(format!("job-{}", &id.to_string()[..8]))
            .stack_size(256 * 1024)
            .spawn(move || {
                let stdio = spawn::Stdio {
                    stdin: pipes.devnull.as_fd(),
                    stdout: pipes.stdout.1.as_fd(),
                    stderr: pipes.stderr.1.as_fd(),
                    cgroup: cgroup.as_ref().and_then(|c| c.dir_fd()),
                };
                // The caller records the job and releases the exec gate (see
                // `record_and_release`): a jobd killed at any moment leaves a record of
                // every job whose program runs.
                let spawned = spawn::spawn(&command, &stdio, |pid, gate| {
                    let _ = cloned_tx.send((pid, gate));
                });
                // The record comes before the release, so a child that exec'd has one; a
                // child that died at the gate may have none.
                let spawned = spawned.and_then(|child| match recorded_rx.recv() {
                    Ok(first) => Ok((child, first)),
                    Err(_) => {
                        let _ = spawn::wait(child.pidfd.as_fd());
                        Err(SpawnError::Refused)
                    }
                });
                let (child, first) = match spawned {
                    Ok(spawned) => spawned,
                    Err(e) => {
                        if let Some(c) = &cgroup {
                            let _ = c.remove();
                        }
                        let _ = fs::remove_dir_all(&dir);
                        let _ = tx.send(Err(spawn_error(&program_name, e)));
                        return;
                    }
                };
                let Pipes {
                    stdout: (stdout, _),
                    stderr: (stderr, _),
                    ..
                } = pipes; // the write ends close here: EOF comes when the job's side closes
                let processes = match cgroup {
                    Some(cgroup) => Processes::Cgroup { cgroup },
                    None => Processes::Group { pgid: child.pid },
                };
                let job = Arc::new(Job::new(
                    id,
                    spec,
                    credentials,
                    child.pid,
                    first.start_ticks,
                    logfile::from_unix_nanos(first.started_at_unix_nanos),
                    dir,
                    processes,
                    logfile::FILE_HEADER_LEN,
                ));
                // Registered before the caller hears of it, so a cancelled Start call
                // cannot leave a running job that nobody can see or stop.
                jobs.write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, Arc::clone(&job));
                kept_quota.keep();
                job.hold_until_end(running_quota);
                let _ = tx.send(Ok(Arc::clone(&job)));
                // Counted as running until the capture thread has reaped it.
                let _slot = slot;
                capture::run(
                    &job,
                    Capture {
                        child,
                        stdout,
                        stderr,
                        log,
                        max_output,
                    },
                );
                job.settle(&retries, || drop(state_lock));
            });
        if let Err(e) = thread {
            return Err(Error::io("cannot start a capture thread", e));
        }
        // No await between the pid's arrival and the gate's release or refusal: a
        // cancelled Start cannot leave a child waiting at its gate.
        if let Ok((pid, gate)) = cloned_rx.await {
            record.pid = pid;
            record.start_ticks = store::process_start_ticks(pid).unwrap_or(0);
            record.started_at_unix_nanos = logfile::to_unix_nanos(SystemTime::now());
            match durable::write_first(&record_dir, &first_record, &record) {
                Ok(()) => {
                    let _ = recorded_tx.send(record);
                    gate.release();
                }
                Err(e) => {
                    drop((gate, recorded_tx));
                    // The capture thread removes what was made for the job.
                    let _ = rx.await;
                    let shown = crate::inert::Brief(&spec_program);
                    return Err(Error::storage(format!("cannot start {shown}"), e));
                }
            }
        }
        rx.await
            .map_err(|_| Error::io("job start failed", io::Error::other("capture thread died")))?
    }

    /// A new folder at `dir` for a job, made ahead if one is ready.
    fn job_folder(&self, dir: &Path) -> io::Result<folder::Folder> {
        match self.folders.as_ref().and_then(|pool| pool.take()) {
            Some(spare) => spare.claim(dir),
            None => folder::create(dir),
        }
    }

    /// The job with this id.
    pub fn job(&self, id: &JobId) -> Result<Arc<Job>, Error> {
        self.jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or(Error::NotFound(*id))
    }

    /// One page of the list (see [`crate::page`]): only the jobs on it are touched, so a
    /// page costs the same however many jobs, and argv bytes, the server keeps.
    pub fn page(&self, query: &ListQuery) -> Page {
        let jobs = self.jobs.read().unwrap_or_else(PoisonError::into_inner);
        page::select(jobs.values(), query)
    }

    /// Snapshots of all jobs, or of one owner's, oldest first. Copies every job: for
    /// small tables and tests; callers that serve requests use [`Worker::page`].
    pub fn list(&self, owner: Option<&str>) -> Vec<JobInfo> {
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|j| owner.is_none_or(|o| j.owner() == o))
            .cloned()
            .collect();
        let mut infos: Vec<JobInfo> = jobs.iter().map(|j| j.info()).collect();
        infos.sort_by_key(|i| (i.started_at, i.id));
        infos
    }

    /// Stops every running job, each with the default grace period, concurrently, and
    /// returns once every job's final record is written, so a restart finds them ended.
    pub async fn shutdown(&self) {
        // A final record that cannot be stored now is tried once more, then given up.
        self.retries.shut_down();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let grace = self.config.default_grace;
        let mut stops = tokio::task::JoinSet::new();
        for job in jobs {
            stops.spawn(async move {
                if let Err(e) = job.stop(grace).await {
                    tracing::error!(job = %job.id(), error = %e, "cannot stop job at shutdown");
                    return;
                }
                job.settled().await;
            });
        }
        while stops.join_next().await.is_some() {}
    }
}

/// Makes the state dir and everything in it private to the server (0700 folders, 0600
/// files), saying once what an older server left wider.
fn make_private(state_dir: &Path) -> Result<(), Error> {
    let repaired = private::repair(state_dir).map_err(|e| {
        Error::io(
            format!("cannot make the state dir {} private", state_dir.display()),
            e,
        )
    })?;
    if repaired.count > 0 {
        tracing::warn!(
            paths = repaired.count,
            "the state dir was readable by others: made private (folders 0700, files 0600): {}",
            repaired.describe()
        );
    }
    Ok(())
}

/// The mapping of owners to uids, when jobs get uids of their own and this process can
/// switch to them.
fn job_users(config: &Config) -> Result<Option<JobUsers>, Error> {
    let Some(range) = config.job_uids else {
        return Ok(None);
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        tracing::warn!(
            uid = euid,
            "not running as root: every job runs as this server's own user, so the host does not keep tenants apart (any job can read, signal and trace every other job, the server and its state)"
        );
        return Ok(None);
    }
    JobUsers::open(&config.state_dir, range).map(Some)
}

/// The pool, or `None` (and a warning) if it cannot work here: starts then make their own.
fn made_ahead<T: Send>(what: &str, pool: io::Result<Ahead<T>>) -> Option<Arc<Ahead<T>>> {
    match pool {
        Ok(pool) => Some(Arc::new(pool)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make {what} ahead: each start makes its own");
            None
        }
    }
}

/// One running job counted against `max_running_jobs`; dropping it frees the slot.
struct RunningSlot(Arc<AtomicUsize>);

impl RunningSlot {
    fn take(running: &Arc<AtomicUsize>, max: usize) -> Result<RunningSlot, Error> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|n| {
                Error::ResourceExhausted(format!(
                    "the server already runs {n} jobs, its maximum; try again later"
                ))
            })?;
        Ok(RunningSlot(Arc::clone(running)))
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sets up jobd's cgroup subtree as the mode says; `auto` falls back to no cgroups
/// (and so no limits), saying why once.
fn setup_cgroups(config: &Config) -> Result<Option<Cgroups>, Error> {
    if config.cgroups == CgroupMode::Off {
        tracing::info!("cgroups are off: jobs run without resource limits");
        return Ok(None);
    }
    let attempt = match &config.cgroup_root {
        Some(root) => Ok(root.clone()),
        None => cgroup::default_base(),
    }
    .and_then(|base| Cgroups::setup(&base, config.move_into_cgroup).map(|c| (base, c)));
    match (attempt, config.cgroups) {
        (Ok((base, cgroups)), _) => {
            tracing::info!(base = %base.display(), "cgroups on: every job gets its own cgroup with cpu, io, memory and pids control");
            Ok(Some(cgroups))
        }
        (Err(e), CgroupMode::Required) => Err(Error::Unsupported(format!(
            "cgroups are required but unusable: {e}"
        ))),
        (Err(e), _) => {
            tracing::warn!(reason = %e, "cgroups unusable: jobs run without resource limits, and jobs that ask for limits are refused");
            Ok(None)
        }
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, Error> {
    CString::new(bytes)
        .map_err(|_| Error::InvalidArgument("arguments cannot contain NUL bytes".into()))
}

/// The job's three standard streams: /dev/null and two pipes (read end, write end).
struct Pipes {
    devnull: File,
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
}

impl Pipes {
    fn new() -> io::Result<Self> {
        Ok(Pipes {
            devnull: File::open("/dev/null")?,
            stdout: output_pipe()?,
            stderr: output_pipe()?,
        })
    }
}

/// A pipe whose read end is ours (non-blocking, so draining never waits) and whose write
/// end becomes the job's stdout or stderr.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded and we are the only owner of both descriptors.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    // The job's end must block like any ordinary stdout.
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY);
    }
    Ok((r, w))
}

/// Finds the program as `execvp` would (in [`JOB_PATH`] when the name has no `/`), so a
/// missing or non-executable program is a clear error before anything is created.
fn resolve_program(name: &str) -> Result<PathBuf, Error> {
    let exec_error = |reason: &str| Error::Exec {
        program: name.to_string(),
        reason: reason.to_string(),
    };
    let is_executable = |m: &fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    if name.contains('/') {
        return match fs::metadata(name) {
            Ok(m) if is_executable(&m) => Ok(PathBuf::from(name)),
            Ok(m) if m.is_dir() => Err(exec_error("is a directory")),
            Ok(_) => Err(exec_error("permission denied (not executable)")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(exec_error("no such file or directory"))
            }
            Err(e) => Err(exec_error(&e.to_string())),
        };
    }
    let mut found_unexecutable = false;
    for dir in JOB_PATH.split(':') {
        let candidate = Path::new(dir).join(name);
        if let Ok(m) = fs::metadata(&candidate) {
            if is_executable(&m) {
                return Ok(candidate);
            }
            found_unexecutable |= m.is_file();
        }
    }
    if found_unexecutable {
        Err(exec_error("permission denied (not executable)"))
    } else {
        Err(exec_error("command not found"))
    }
}

/// Keeps the namespaces of `wanted` that the kernel lets this process create.
fn supported_isolation(wanted: Isolation) -> Isolation {
    let mut got = wanted;
    for (asked, ns, name) in [
        (
            &mut got.pid,
            Isolation {
                pid: true,
                ..Isolation::NONE
            },
            "pid",
        ),
        (
            &mut got.mount,
            Isolation {
                mount: true,
                ..Isolation::NONE
            },
            "mount",
        ),
        (
            &mut got.net,
            Isolation {
                net: true,
                ..Isolation::NONE
            },
            "net",
        ),
    ] {
        if *asked {
            if let Err(e) = spawn::probe(ns) {
                tracing::warn!(namespace = name, error = %e, "the kernel refuses this namespace: jobs run without it");
                *asked = false;
            }
        }
    }
    got
}

fn spawn_error(program: &str, e: SpawnError) -> Error {
    let shown = crate::inert::Brief(program);
    match e {
        // The caller never learns this job's id: name its program.
        // The caller reports why it could not record the job; this is what is left.
        SpawnError::Refused => Error::io(
            format!("cannot start {shown}"),
            io::Error::other("the job could not be recorded"),
        ),
        SpawnError::Child {
            stage: Stage::Exec,
            error,
        } => Error::Exec {
            program: program.to_string(),
            reason: error.to_string(),
        },
        SpawnError::Child { stage, error } => {
            Error::Unsupported(format!("cannot start {shown}: cannot {stage}: {error}"))
        }
        SpawnError::Namespaces(error) => Error::Unsupported(format!(
            "cannot start {shown}: the kernel refused the job's namespaces: {error}"
        )),
        SpawnError::Clone(error) => {
            Error::io(format!("cannot start {shown}: clone3 failed"), error)
        }
    }
}
