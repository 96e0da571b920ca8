//! The start path, from a request to a running, recorded, captured job, in three steps:
//!
//! 1. [`Worker::prepare`] checks the request and resolves it against the server's policy
//!    (limits, isolation, root, the program's path) without changing anything.
//! 2. [`Worker::provision`] takes what the job holds on the host: its running slot and
//!    quota, its uid, a network namespace, its folder, its pipes and its cgroup. Until the
//!    job is registered, one guard ([`Provisioned`]) undoes all of it if the start fails.
//! 3. [`Worker::launch`] clones the process and records it before it may exec.
//!
//! Every feature a job gets at its start (an identity, limits, namespaces) is a field of
//! the [`Plan`] resolved in step 1 and, if it holds something on the host, of
//! [`Provisioned`].

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::job::Job;
use crate::output::capture::{self, Capture};
use crate::output::logfile;
use crate::process::cgroup::{CgroupLimits, JobCgroup};
use crate::process::members::Processes;
use crate::process::spawn::{self, Credentials, SpawnError, Stage};
use crate::quota::{KeptQuota, RunningQuota};
use crate::spec::{JobId, JobSpec};
use crate::state::durable;
use crate::state::folder::{self, Folder};
use crate::state::record::{self, JobRecord};
use crate::table::{RunningSlot, Worker};
use common::inert::Brief;

/// The search path jobs get unless the server's configuration or the job says otherwise.
pub const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The size of a job's private `/tmp` (and `/var/tmp`) when it has no memory limit. With
/// one, the limit bounds them instead: tmpfs pages are charged to the job's memory cgroup.
pub const PRIVATE_TMP_BYTES: u64 = 64 * 1024 * 1024;

/// Pipe capacity asked for per stream: fewer wake-ups for chatty jobs. Best effort.
const PIPE_CAPACITY: usize = 1024 * 1024;

/// Stack of a capture thread: it runs the clone and a read loop, nothing deep.
const CAPTURE_STACK_BYTES: usize = 256 * 1024;

/// A request checked and resolved against the server's policy; nothing taken yet.
pub(crate) struct Plan {
    spec: JobSpec,
    /// Whether the job runs as root rather than as its owner's uid.
    as_root: bool,
    /// Whether it gets a network namespace (one made ahead, if any is ready).
    net: bool,
    cgroup_limits: Option<CgroupLimits>,
    /// Everything the child needs but its uid and network namespace, taken in provision.
    command: spawn::Command,
}

/// What a starting job holds on the host. Dropped before the job is registered, it gives
/// everything back: [`Rollback`] removes the folder and the cgroup, the slot and the
/// quota free themselves.
pub(crate) struct Provisioned {
    id: JobId,
    credentials: Option<Credentials>,
    slot: RunningSlot,
    running_quota: RunningQuota,
    kept_quota: KeptQuota,
    netns: Option<OwnedFd>,
    folder: Folder,
    pipes: Pipes,
    rollback: Rollback,
}

/// The job's folder and cgroup, removed on drop unless [`Rollback::disarm`] hands them
/// to the job.
struct Rollback {
    dir: Option<PathBuf>,
    cgroup: Option<JobCgroup>,
}

impl Rollback {
    fn dir(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("only disarm empties the rollback, and it consumes it")
    }

    fn disarm(mut self) -> (PathBuf, Option<JobCgroup>) {
        let dir = self
            .dir
            .take()
            .expect("only disarm empties the rollback, and it consumes it");
        (dir, self.cgroup.take())
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(c) = &self.cgroup {
            let _ = c.remove();
        }
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Worker {
    /// Starts a job and returns once its program has been exec'd. On failure nothing of
    /// the job is left: no process, no files, no table entry.
    pub async fn start(&self, spec: JobSpec) -> Result<Arc<Job>, Error> {
        let plan = self.prepare(spec)?;
        let timeout = plan.spec.timeout;
        let provisioned = self.provision(&plan)?;
        let job = self.launch(plan, provisioned).await?;
        if let Some(limit) = timeout {
            tokio::spawn(Arc::clone(&job).enforce_time_limit(limit, self.config.default_grace));
        }
        Ok(job)
    }

    /// Step 1: checks `spec` and resolves it against the server's policy.
    fn prepare(&self, mut spec: JobSpec) -> Result<Plan, Error> {
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
        if spec.as_root && !self.config.allow_root {
            return Err(Error::PermissionDenied(
                "this server does not run jobs as root".into(),
            ));
        }
        spec.env = self.environment(&spec)?;
        spec.timeout = self.time_limit(spec.timeout)?;
        let working_dir = spec.working_dir.get_or_insert_with(|| "/".into()).clone();
        let search = spec
            .env
            .iter()
            .rev()
            .find_map(|v| v.strip_prefix("PATH="))
            .unwrap_or("");
        let program = resolve_program(&spec.argv[0], search, Path::new(&working_dir))?;
        let command = spawn::Command::new(
            cstring(program.as_os_str().as_encoded_bytes())?,
            spec.argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            spec.env
                .iter()
                .map(|v| cstring(v.as_bytes()))
                .collect::<Result<_, _>>()?,
            cstring(working_dir.as_bytes())?,
        )
        .namespaces(isolation)
        .init(Arc::clone(&self.init))
        .private_tmp(
            isolation
                .mount
                .then(|| spec.limits.memory_bytes.unwrap_or(PRIVATE_TMP_BYTES)),
        );
        Ok(Plan {
            as_root: spec.as_root,
            net: isolation.net,
            spec,
            cgroup_limits,
            command,
        })
    }

    /// The whole environment of a job: its identity, then the server's base environment,
    /// then what the job asked for, a later variable replacing an earlier one of its name.
    fn environment(&self, spec: &JobSpec) -> Result<Vec<String>, Error> {
        let (user, home) = if spec.as_root {
            ("root", "/root")
        } else {
            (spec.owner.as_str(), "/")
        };
        let identity = [
            format!("HOME={home}"),
            format!("USER={user}"),
            format!("LOGNAME={user}"),
        ];
        // One pass with an index by name: an environment of many thousand small variables
        // is within the size cap, and must not cost a start quadratic time.
        let mut slots: Vec<Option<&String>> = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for var in identity.iter().chain(&self.config.env).chain(&spec.env) {
            let name = var.split_once('=').map_or(var.as_str(), |(name, _)| name);
            if let Some(earlier) = by_name.insert(name, slots.len()) {
                slots[earlier] = None;
            }
            slots.push(Some(var));
        }
        let env: Vec<String> = slots.into_iter().flatten().cloned().collect();
        let bytes = common::env::size(&env);
        if bytes > common::env::MAX_ENV_BYTES {
            return Err(Error::InvalidArgument(
                common::env::EnvError::TooLarge(bytes).to_string(),
            ));
        }
        Ok(env)
    }

    /// The time limit a job gets: what it asked for, within the server's maximum, or the
    /// server's default.
    fn time_limit(&self, asked: Option<Duration>) -> Result<Option<Duration>, Error> {
        let (default, max) = (self.config.default_timeout, self.config.max_timeout);
        match (asked, max) {
            (Some(asked), Some(max)) if asked > max => Err(Error::InvalidArgument(format!(
                "a timeout of {} is longer than this server allows ({})",
                seconds(asked),
                seconds(max)
            ))),
            (Some(asked), _) => Ok(Some(asked)),
            (None, Some(max)) => Ok(Some(default.map_or(max, |d| d.min(max)))),
            (None, None) => Ok(default),
        }
    }

    /// Step 2: takes what the job holds on the host, behind one guard.
    fn provision(&self, plan: &Plan) -> Result<Provisioned, Error> {
        let slot = RunningSlot::take(&self.running, self.config.max_running_jobs)?;
        let (running_quota, kept_quota) = self.quotas.reserve(&plan.spec.owner)?;
        let credentials = match &self.users {
            Some(_) if plan.as_root => Some(Credentials { uid: 0, gid: 0 }),
            Some(users) => Some(users.credentials(&plan.spec.owner)?),
            None => None,
        };
        let id = JobId::new();
        let dir = self.config.state_dir.join("jobs").join(id.to_string());
        let made = self
            .job_folder(&dir)
            .and_then(|folder| Ok((folder, Pipes::new()?)));
        let (folder, pipes) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(Error::storage(format!("cannot prepare job {id}"), e));
            }
        };
        let mut rollback = Rollback {
            dir: Some(dir),
            cgroup: None,
        };
        if let (Some(cgroups), Some(limits)) = (&self.cgroups, &plan.cgroup_limits) {
            // The caller's if the kernel refused one of its limits.
            let cgroup = cgroups.create_job(&id.to_string(), limits)?;
            rollback.cgroup = Some(cgroup);
        }
        let netns = self
            .netns
            .as_ref()
            .filter(|_| plan.net)
            .and_then(|pool| pool.take());
        Ok(Provisioned {
            id,
            credentials,
            slot,
            running_quota,
            kept_quota,
            netns,
            folder,
            pipes,
            rollback,
        })
    }

    /// A new folder at `dir` for a job, made ahead if one is ready.
    fn job_folder(&self, dir: &Path) -> io::Result<Folder> {
        match self.folders.as_ref().and_then(|pool| pool.take()) {
            Some(spare) => spare.claim(dir),
            None => folder::create(dir),
        }
    }

    /// Step 3: clones the job's process on a capture thread of its own, records the job
    /// while the child sets itself up, and lets it exec.
    ///
    /// The clone runs on the capture thread, not here, because the child shares the
    /// memory and `errno` of the thread that clones it until it execs: that thread may
    /// make no system call that could fail meanwhile, which a tokio worker cannot promise
    /// and a thread that only waits for the child's report can. The same thread then
    /// owns the job's pidfd and pipes for the job's whole life (see [`crate::output::capture`]).
    /// This task, on its own `errno`, writes the record as soon as the pid is known.
    async fn launch(&self, plan: Plan, mut provisioned: Provisioned) -> Result<Arc<Job>, Error> {
        let Plan { spec, command, .. } = plan;
        let command = command
            .netns(provisioned.netns.take())
            .credentials(provisioned.credentials);
        // The record but for what only the clone tells, so the child's set-up is all it
        // has to overlap.
        let mut record = durable::first_record(
            provisioned.id,
            &spec,
            provisioned.credentials,
            0,
            0,
            provisioned
                .rollback
                .cgroup
                .as_ref()
                .map(|c| c.path().to_path_buf()),
            SystemTime::UNIX_EPOCH,
        );
        let record_file = provisioned
            .folder
            .first_record
            .try_clone()
            .map_err(|e| Error::storage(format!("cannot prepare job {}", provisioned.id), e))?;
        let record_dir = provisioned.rollback.dir().to_path_buf();
        let program = spec.argv[0].clone();
        let (cloned_tx, cloned_rx) = oneshot::channel::<(i32, spawn::Gate)>();
        let (recorded_tx, recorded_rx) = mpsc::sync_channel::<JobRecord>(1);
        let (started_tx, started_rx) = oneshot::channel();
        let capture = CaptureThread {
            worker: self.clone(),
            spec,
            command,
            provisioned,
            cloned: cloned_tx,
            recorded: recorded_rx,
            started: started_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("job-{}", &record.id.to_string()[..8]))
            .stack_size(CAPTURE_STACK_BYTES)
            .spawn(move || capture.run());
        if let Err(e) = thread {
            return Err(Error::io("cannot start a capture thread", e));
        }
        // No await between the pid's arrival and the gate's release or refusal: a
        // cancelled Start cannot leave a child waiting at its gate. The record's sender
        // is gone once this is done: the capture thread, which waits for it, then knows
        // that nothing more is written into the job's folder.
        let cloned = cloned_rx.await;
        if let Ok((pid, gate)) = cloned {
            record.pid = pid;
            record.start_ticks = record::process_start_ticks(pid).unwrap_or(0);
            record.started_at_unix_nanos = logfile::to_unix_nanos(SystemTime::now());
            match durable::write_first(&record_dir, &record_file, &record) {
                Ok(()) => {
                    let _ = recorded_tx.send(record);
                    gate.release();
                }
                Err(e) => {
                    drop((gate, recorded_tx));
                    // The capture thread gives back what was provisioned for the job.
                    let _ = started_rx.await;
                    return Err(Error::storage(
                        format!("cannot start {}", Brief(&program)),
                        e,
                    ));
                }
            }
        } else {
            drop(recorded_tx);
        }
        started_rx
            .await
            .map_err(|_| Error::io("job start failed", io::Error::other("capture thread died")))?
    }
}

/// What the capture thread of a starting job gets, and how it talks back to the start.
struct CaptureThread {
    worker: Worker,
    spec: JobSpec,
    command: spawn::Command,
    provisioned: Provisioned,
    /// The child's pid and gate, for the start to record the job and release it.
    cloned: oneshot::Sender<(i32, spawn::Gate)>,
    /// The record, sent before the gate's release: a child that exec'd has one.
    recorded: mpsc::Receiver<JobRecord>,
    started: oneshot::Sender<Result<Arc<Job>, Error>>,
}

impl CaptureThread {
    fn run(self) {
        let CaptureThread {
            worker,
            spec,
            command,
            provisioned,
            cloned,
            recorded,
            started,
        } = self;
        let p = &provisioned;
        let stdio = spawn::Stdio {
            stdin: p.pipes.devnull.as_fd(),
            stdout: p.pipes.stdout.1.as_fd(),
            stderr: p.pipes.stderr.1.as_fd(),
            cgroup: p.rollback.cgroup.as_ref().and_then(|c| c.dir_fd()),
        };
        let spawned = spawn::spawn(&command, &stdio, |pid, gate| {
            let _ = cloned.send((pid, gate));
        })
        .and_then(|child| match recorded.recv() {
            Ok(first) => Ok((child, first)),
            // A child that died at its gate unreleased, say by a SIGKILL from outside.
            Err(_) => {
                let _ = spawn::wait(child.pidfd.as_fd());
                Err(SpawnError::Refused)
            }
        });
        let (child, first) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                // The folder and the cgroup go before the start hears of its failure: a
                // caller that looks right after a refused Start finds nothing of it. A
                // child that failed before its gate may still be being recorded: the
                // folder goes once the record is written, or will never be.
                let _ = recorded.recv();
                drop(provisioned);
                let _ = started.send(Err(spawn_error(&spec.argv[0], e)));
                return;
            }
        };
        let (
            Kept {
                slot,
                running_quota,
                kept_quota,
                log,
                stdout,
                stderr,
            },
            job,
        ) = provisioned.into_job(spec, child.pid, &first);
        // Registered before the caller hears of it, so a cancelled Start call cannot
        // leave a running job that nobody can see or stop.
        worker
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.id(), Arc::clone(&job));
        kept_quota.keep();
        job.hold_until_end(running_quota);
        let _ = started.send(Ok(Arc::clone(&job)));
        // Counted as running until this thread has reaped it.
        let _slot = slot;
        capture::run(
            &job,
            Capture {
                child,
                stdout,
                stderr,
                log,
                max_output: worker.config.max_output_bytes,
            },
        );
        // No other worker may open the state dir while this job's final record is
        // unwritten: the state lock goes only once it is.
        let state_lock = Arc::clone(&worker.state_lock);
        job.settle(&worker.retries, || drop(state_lock));
    }
}

/// What the capture thread keeps of a job's provisioning; the rest is the job's.
struct Kept {
    slot: RunningSlot,
    running_quota: RunningQuota,
    kept_quota: KeptQuota,
    log: File,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Provisioned {
    /// Hands the folder and the cgroup to the job, disarming the rollback. The pipes'
    /// write ends close here: end of file comes when the job's side closes.
    fn into_job(self, spec: JobSpec, pid: i32, first: &JobRecord) -> (Kept, Arc<Job>) {
        let Provisioned {
            id,
            credentials,
            slot,
            running_quota,
            kept_quota,
            folder,
            pipes,
            rollback,
            ..
        } = self;
        let (dir, cgroup) = rollback.disarm();
        // Every job with a PID namespace has the init as its leader.
        let init = spec.isolation.is_some_and(|i| i.pid);
        let processes = match cgroup {
            Some(cgroup) => Processes::cgroup(pid, init, cgroup),
            None => Processes::group(pid, init),
        };
        let job = Arc::new(Job::new(
            id,
            spec,
            credentials,
            pid,
            first.start_ticks,
            logfile::from_unix_nanos(first.started_at_unix_nanos),
            dir,
            processes,
            logfile::FILE_HEADER_LEN,
        ));
        let Pipes {
            stdout: (stdout, _),
            stderr: (stderr, _),
            ..
        } = pipes;
        let kept = Kept {
            slot,
            running_quota,
            kept_quota,
            log: folder.log,
            stdout,
            stderr,
        };
        (kept, job)
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
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // The job's end must block like any ordinary stdout.
    fcntl_setfl(&w, fcntl_getfl(&w)? - OFlags::NONBLOCK)?;
    let _ = fcntl_setpipe_size(&r, PIPE_CAPACITY);
    Ok((r, w))
}

/// Finds the program as `execvp` would (in [`JOB_PATH`] when the name has no `/`), so a
/// missing or non-executable program is a clear error before anything is created.
fn resolve_program(name: &str, search: &str, working_dir: &Path) -> Result<PathBuf, Error> {
    let exec_error = |reason: &str| Error::Exec {
        program: name.to_string(),
        reason: reason.to_string(),
    };
    let is_executable = |m: &fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    if name.contains('/') {
        // A relative path is the job's, from its working directory; it is exec'd as given.
        return match fs::metadata(working_dir.join(name)) {
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
    for dir in search.split(':').filter(|d| !d.is_empty()) {
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

fn spawn_error(program: &str, e: SpawnError) -> Error {
    let shown = Brief(program);
    match e {
        // The start says why it could not record the job; this is what is left.
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
        // The caller's directory: missing, not a directory, or closed to the job's user.
        SpawnError::Child {
            stage: Stage::Chdir,
            error,
        } => Error::InvalidArgument(format!(
            "cannot start {shown}: cannot enter its working directory: {error}"
        )),
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

/// `90s`, `1.5s`: a duration as the user wrote it.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
