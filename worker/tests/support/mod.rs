//! What the worker's integration tests share: a worker that cleans up after its test, the
//! `sh -c` job most tests run, and one way to read a job's output to its end. Each test
//! file uses a part of it.
#![allow(dead_code)]

use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use worker::{Config, JobSpec, JobState, LogReader, Stream, Worker};

/// Stops every job still running and waits until each has written its final record.
/// A job's end is visible before its record is synced, so deleting the state dir right
/// after a job ended races that write and can leave a stray folder behind; a test that
/// fails midway would leave its jobs running. `Worker::shutdown` is async, and this runs
/// in `Drop` inside the test's runtime, so it gets a thread and a runtime of its own.
pub fn settle(worker: &Worker) {
    let worker = worker.clone();
    let settled = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(worker.shutdown()))
    })
    .join();
    if !matches!(settled, Ok(Ok(()))) {
        eprintln!("the test's worker could not be shut down: it may leave jobs or files");
    }
}

/// A worker that settles (see [`settle`]) when it is dropped, also when its test fails.
pub struct Settling(pub Worker);

impl Deref for Settling {
    type Target = Worker;

    fn deref(&self) -> &Worker {
        &self.0
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        settle(&self.0);
    }
}

/// A state dir laid out as jobd lays out `/var/lib/jobworker`: a not-yet-existing child
/// of a 0755 parent, so whoever opens it first (a `Worker::new`) creates it with the
/// process umask, as jobd does. A bare `tempdir()` is 0700 and would hide a file or
/// folder that is too open. Dropping it removes the parent and everything under it.
pub struct StateDir {
    parent: tempfile::TempDir,
    state: PathBuf,
}

impl StateDir {
    pub fn new() -> StateDir {
        StateDir::around(tempfile::tempdir().expect("a scratch dir"))
    }

    /// As [`StateDir::new`], under the build's target dir instead of `/tmp`: a job with a
    /// mount namespace gets a `/tmp` of its own, where a state dir in the host's `/tmp`
    /// is not there to be attacked at all.
    pub fn outside_tmp() -> StateDir {
        StateDir::around(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a scratch dir"))
    }

    fn around(parent: tempfile::TempDir) -> StateDir {
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 of the scratch dir");
        let state = parent.path().join("state");
        StateDir { parent, state }
    }

    /// The state dir: absent until a worker (or the test) creates it.
    pub fn path(&self) -> &Path {
        &self.state
    }

    /// The scratch dir around the state dir, for a test's own files.
    pub fn scratch(&self) -> &Path {
        self.parent.path()
    }
}

/// A worker on a state dir of its own (see [`StateDir`]), deleted once the worker has
/// settled and its threads are gone.
pub struct TestWorker {
    // Fields drop in this order: the worker first, then the dir.
    worker: Settling,
    dir: StateDir,
}

impl TestWorker {
    pub fn new() -> TestWorker {
        TestWorker::with(|_| {})
    }

    /// The state dir and its scratch dir are outside `/tmp`, so that a job with a mount
    /// namespace (and so a `/tmp` of its own) finds the files a test leaves it there.
    pub fn with(tune: impl FnOnce(&mut Config)) -> TestWorker {
        let dir = StateDir::outside_tmp();
        let mut config = Config::new(dir.path());
        // Most tests exercise the worker's mechanics on a host without cgroups, where a
        // job is refused unless a PID namespace holds it; they run their jobs as the
        // process groups they are. Tests of that refusal turn it back on in `tune`.
        config.allow_unheld_jobs = true;
        tune(&mut config);
        let worker = Worker::new(config).expect("a worker on a fresh state dir");
        TestWorker {
            worker: Settling(worker),
            dir,
        }
    }

    /// The state dir, which the worker created.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The scratch dir around the state dir: a test keeps its own files here.
    pub fn scratch(&self) -> &Path {
        self.dir.scratch()
    }
}

impl Deref for TestWorker {
    type Target = Worker;

    fn deref(&self) -> &Worker {
        &self.worker
    }
}

/// `fut`'s output, or a panic naming `what` if it takes longer than `limit`: no wait in a
/// test is unbounded.
pub async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    what: &str,
    fut: F,
) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not within {limit:?}"),
    }
}

/// The start time of process `pid` in clock ticks since boot, if it is alive (not a
/// zombie): with its pid, it names one process even if the pid is reused later.
pub fn live_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The pid of the job's program: the first child of the job's init where it has one (a
/// PID namespace), else the job's own pid.
pub fn program_pid(job: &worker::JobInfo) -> i32 {
    let leader = job.pid;
    if !job.isolation.pid {
        return leader;
    }
    std::fs::read_to_string(format!("/proc/{leader}/task/{leader}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(leader)
}

/// A job running `sh -c script` for alice, with the worker's default isolation.
pub fn sh(script: &str) -> JobSpec {
    JobSpec::new("alice", vec!["sh".into(), "-c".into(), script.into()])
}

/// How long a job may stay silent before a test that reads its output gives up.
const SILENCE: Duration = Duration::from_secs(60);

/// Everything a reader delivered, as runs of one stream each, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub runs: Vec<(Stream, Vec<u8>)>,
}

impl Output {
    /// All bytes of `stream`, in order.
    pub fn bytes(&self, stream: Stream) -> Vec<u8> {
        let of_stream = self.runs.iter().filter(|(s, _)| *s == stream);
        of_stream
            .flat_map(|(_, data)| data.iter().copied())
            .collect()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.bytes(Stream::Stdout)).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.bytes(Stream::Stderr)).into_owned()
    }

    /// Stdout and stderr, for a test that expects no note from the worker.
    pub fn streams(self) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(
            self.notes(),
            Vec::<String>::new(),
            "the worker noted lost output"
        );
        (self.bytes(Stream::Stdout), self.bytes(Stream::Stderr))
    }

    /// The worker's own notes in the log (output lost or cut), which most tests never expect.
    pub fn notes(&self) -> Vec<String> {
        let notes = self.runs.iter().filter(|(s, _)| *s == Stream::System);
        notes
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
            .collect()
    }
}

/// Everything `reader` delivers until the output ends (for a following reader: until the
/// job has ended and its pipes are drained).
pub async fn collect(mut reader: LogReader) -> Output {
    let mut out = Output::default();
    while let Some(batch) = within(SILENCE, "the job's next output", reader.next_batch())
        .await
        .expect("the job's output is readable")
    {
        for r in batch {
            match out.runs.last_mut() {
                Some((stream, data)) if *stream == r.stream => data.extend_from_slice(&r.data),
                _ => out.runs.push((r.stream, r.data.to_vec())),
            }
        }
    }
    out
}

/// Starts `spec`, reads its output to the end and waits for its end: its state, stdout
/// and stderr. A note from the worker in the output fails the test: each caller expects
/// every byte the job wrote.
pub async fn run(w: &Worker, spec: JobSpec) -> (JobState, String, String) {
    let job = w.start(spec).await.expect("the job starts");
    let out = collect(job.logs(true).expect("a running job's log opens")).await;
    let state = within(SILENCE, "the job's end", job.wait()).await.state;
    assert_eq!(
        out.notes(),
        Vec::<String>::new(),
        "the worker noted lost output"
    );
    (state, out.stdout(), out.stderr())
}
