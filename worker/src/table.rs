//! The job table: every job the worker owns, and what is done to them once started (see
//! [`crate::start`] for the start path).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::error::Error;
use crate::id::IdPrefix;
use crate::job::Job;
use crate::made_ahead::Ahead;
use crate::page::{self, ListQuery, Page};
use crate::policy::LimitPolicy;
use crate::process::cgroup::{self, CgroupMode, Cgroups};
use crate::process::init::InitProgram;
use crate::process::netns;
use crate::process::spawn;
use crate::process::uids::{JobUsers, UidRange};
use crate::quota::Quotas;
use crate::spec::{Isolation, JobId};
use crate::state::durable::Retries;
use crate::state::folder::{self, Spare};
use crate::state::private;
use crate::state::record::StateLock;
use crate::state::restore;
use crate::status::JobInfo;

/// Network namespaces kept ready for starts: enough for a burst of starts, while each idle
/// one holds a little kernel memory.
const SPARE_NETNS: usize = 8;

/// Job folders kept ready for starts.
const SPARE_FOLDERS: usize = 8;

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
    /// The environment every job starts from (`KEY=VALUE`), over `USER`, `LOGNAME` and
    /// `HOME` for the job's identity and under what the job asks for: like systemd
    /// services, jobs never inherit the server's own environment.
    pub env: Vec<String>,
    /// The time limit of a job that does not ask for one; `None`: no limit.
    pub default_timeout: Option<Duration>,
    /// The longest time limit a job may ask for; with it, every job has a limit (this one
    /// when neither the job nor `default_timeout` gives a shorter one).
    pub max_timeout: Option<Duration>,
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
            env: vec![format!("PATH={}", crate::start::JOB_PATH)],
            default_timeout: None,
            max_timeout: None,
        }
    }
}

type JobTable = RwLock<HashMap<JobId, Arc<Job>>>;

/// The worker: owns every job. Cheap to clone; clones share the same jobs.
#[derive(Clone)]
pub struct Worker {
    pub(crate) config: Arc<Config>,
    /// `config.isolation` less what the kernel refused.
    pub(crate) default_isolation: Isolation,
    pub(crate) jobs: Arc<JobTable>,
    pub(crate) cgroups: Option<Arc<Cgroups>>,
    /// Jobs started and not yet reaped, counted without walking the table.
    pub(crate) running: Arc<AtomicUsize>,
    /// Each owner's running and kept jobs, against the per-user quotas.
    pub(crate) quotas: Arc<Quotas>,
    /// Held by each capture thread too, until its job's final record is written.
    pub(crate) state_lock: Arc<StateLock>,
    /// Network namespaces made ahead, when jobs get one by default.
    pub(crate) netns: Option<Arc<Ahead<OwnedFd>>>,
    /// Job folders made ahead.
    pub(crate) folders: Option<Arc<Ahead<Spare>>>,
    /// Tells capture threads retrying a final record that the worker shuts down.
    pub(crate) retries: Arc<Retries>,
    /// Each owner's uid, when jobs get one.
    pub(crate) users: Option<Arc<JobUsers>>,
    /// The init of jobs with a PID namespace.
    pub(crate) init: Arc<InitProgram>,
}

impl Worker {
    pub fn new(config: Config) -> Result<Self, Error> {
        let jobs_dir = config.state_dir.join("jobs");
        private::create_dir_all(&jobs_dir)
            .map_err(|e| Error::io(format!("cannot create {}", jobs_dir.display()), e))?;
        let lock = StateLock::acquire(&config.state_dir)?;
        make_private(&config.state_dir)?;
        let users = job_users(&config)?.map(Arc::new);
        let init = InitProgram::load().map_err(|e| {
            Error::io(
                "cannot load the job init into a memfd (does vm.memfd_noexec forbid executable memfds?)",
                e,
            )
        })?;
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
            init: Arc::new(init),
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

    /// The job with this id.
    pub fn job(&self, id: &JobId) -> Result<Arc<Job>, Error> {
        self.jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or(Error::NotFound(*id))
    }

    /// The jobs whose id starts with `prefix` among those `visible` allows, by id. Walks
    /// the table: only for ids typed short, a full id is looked up with [`Worker::job`].
    pub fn jobs_with_prefix(
        &self,
        prefix: &IdPrefix,
        visible: impl Fn(&Job) -> bool,
    ) -> Vec<Arc<Job>> {
        let mut found: Vec<Arc<Job>> = self
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(id, job)| prefix.matches(**id) && visible(job))
            .map(|(_, job)| Arc::clone(job))
            .collect();
        found.sort_by_key(|j| j.id());
        found
    }

    /// One page of the list (see `page.rs`): only the jobs on it are touched, so a
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
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        tracing::warn!(
            uid = euid.as_raw(),
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
pub(crate) struct RunningSlot(Arc<AtomicUsize>);

impl RunningSlot {
    pub(crate) fn take(running: &Arc<AtomicUsize>, max: usize) -> Result<RunningSlot, Error> {
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
