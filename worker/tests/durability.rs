//! Records never lie, even on a full disk: each test runs a worker on a small tmpfs state
//! dir that it mounts, fills and unmounts (also when it fails).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use worker::disk as store;
use worker::{Config, Error, JobInfo, JobSpec, JobState, Worker};

mod support;
use support::{within, Settling, StateDir};

/// How long any one wait in these tests may take.
const T: Duration = Duration::from_secs(20);

/// A tmpfs of `size` mounted at a state dir laid out as jobd's; unmounted when dropped.
struct Tmpfs {
    // Fields drop in order: the mount goes before the dir around it.
    _mount: testkit::Tmpfs,
    dir: StateDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = StateDir::new();
        Tmpfs {
            _mount: testkit::Tmpfs::mount(dir.path(), size),
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn scratch(&self) -> &Path {
        self.dir.scratch()
    }
}

/// A worker's configuration for `dir`. These jobs need nothing to hold their processes
/// (they leave none behind), so they run without cgroups and without namespaces.
fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.allow_unheld_jobs = true;
    config
}

/// Fills the filesystem of `dir` with one file, until the kernel says it is full; returns
/// the file, whose removal frees the space.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    path
}

/// Pids of live processes whose argv ends with `arg`.
fn processes_with_arg(arg: &str) -> Vec<i32> {
    let wanted = format!("\0{arg}\0");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(wanted.as_bytes()))
        })
        .collect()
}

/// Kills, by pid, processes running `sleep <arg>` when dropped.
struct KillByArg(String);

impl Drop for KillByArg {
    fn drop(&mut self) {
        for pid in processes_with_arg(&self.0) {
            // SAFETY: kill has no memory-safety preconditions; the pid runs this test's marker.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn unique_arg() -> String {
    format!(
        "30.{}{:09}",
        std::process::id(),
        Instant::now().elapsed().subsec_nanos()
    )
}

/// A job that waits for `go` to exist, writes more than a page and exits with 7.
fn waiting_job(go: &Path) -> JobSpec {
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; head -c 100000 /dev/zero; exit 7",
        go.display()
    );
    JobSpec::new("alice", vec!["sh".into(), "-c".into(), script])
}

/// Polls the job until `done` holds for its status, up to the deadline.
async fn wait_info(
    worker: &Worker,
    job: &worker::Job,
    what: &str,
    done: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    let deadline = Instant::now() + T;
    loop {
        let info = worker.job(&job.id()).unwrap().info();
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {T:?}; last {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a worker on a state dir an earlier worker of this test just released (its
/// children may hold a copy of the lock for a moment; see tests/restart.rs).
fn reopen(dir: &Path) -> Worker {
    let deadline = Instant::now() + T;
    loop {
        match Worker::new(config(dir)) {
            Err(Error::FailedPrecondition(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
}

fn stored_state(dir: &Path, job: &worker::Job) -> JobState {
    store::read_record(&dir.join("jobs").join(job.id().to_string()))
        .unwrap()
        .state
}

#[tokio::test]
async fn a_start_on_a_full_state_dir_fails_as_full_and_its_program_never_runs() {
    let fs_ = Tmpfs::mount("1m");
    let worker = Settling(Worker::new(config(fs_.path())).unwrap());
    let filler = fill(fs_.path());
    let arg = unique_arg();
    let _cleanup = KillByArg(arg.clone());

    let err = within(
        T,
        "a start on a full disk",
        worker.start(JobSpec::new("alice", vec!["sleep".into(), arg.clone()])),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::StateDirFull { .. }), "{err:?}");
    // The folder made ahead took the start as far as its record (a start that finds no
    // folder says "cannot prepare job"), so the process existed and was held at the gate.
    assert_eq!(err.to_string(), "cannot start sleep: the state dir is full");
    assert_eq!(
        processes_with_arg(&arg),
        Vec::<i32>::new(),
        "the job's program ran"
    );
    assert!(worker.list(None).is_empty());
    assert_eq!(fs::read_dir(fs_.path().join("jobs")).unwrap().count(), 0);

    // With room again, starts work.
    fs::remove_file(filler).unwrap();
    let job = within(
        T,
        "a start",
        worker.start(JobSpec::new("alice", vec!["true".into()])),
    )
    .await
    .unwrap();
    assert_eq!(
        within(T, "the job's end", job.wait()).await.state,
        JobState::Finished { exit_code: 0 }
    );
}

#[tokio::test]
async fn a_job_that_ends_on_a_full_disk_is_finished_after_a_clean_restart() {
    let fs_ = Tmpfs::mount("1m");
    let go = fs_.scratch().join("go");
    let worker = Settling(Worker::new(config(fs_.path())).unwrap());
    let job = within(T, "a start", worker.start(waiting_job(&go)))
        .await
        .unwrap();
    fill(fs_.path());
    fs::write(&go, "").unwrap();

    let info = within(T, "the job's end", job.wait()).await;
    assert_eq!(info.state, JobState::Finished { exit_code: 7 });
    assert_eq!(
        info.output_error.as_deref(),
        Some("output not stored: the state dir is full")
    );
    // A clean restart, the disk still full: the end is stored all the same, in the room
    // the job was given when it started.
    within(T, "shutdown", worker.0.shutdown()).await;
    drop(worker);
    // What the worker's folders made ahead held is free again: fill that too (the same
    // file, made anew).
    let filler = fill(fs_.path());
    let worker = Settling(reopen(fs_.path()));
    let info = worker.job(&job.id()).unwrap().info();
    assert_eq!(info.state, JobState::Finished { exit_code: 7 }, "{info:?}");
    assert!(!info.server_lost, "{info:?}");
    assert_eq!(
        stored_state(fs_.path(), &job),
        JobState::Finished { exit_code: 7 }
    );
    fs::remove_file(filler).unwrap();
}

#[tokio::test]
async fn a_final_record_without_room_is_reported_retried_and_stored_once_there_is_room() {
    let fs_ = Tmpfs::mount("1m");
    let go = fs_.scratch().join("go");
    let worker = Settling(Worker::new(config(fs_.path())).unwrap());
    let job = within(T, "a start", worker.start(waiting_job(&go)))
        .await
        .unwrap();
    let job_dir = fs_.path().join("jobs").join(job.id().to_string());
    // A folder without the room made for its end (as one from before it was made).
    fs::remove_file(job_dir.join("job.json.reserve")).unwrap();
    let filler = fill(fs_.path());
    fs::write(&go, "").unwrap();
    within(T, "the job's end", job.wait()).await;

    let info = wait_info(&worker, &job, "the record error reported", |i| {
        i.record_error.is_some()
    })
    .await;
    assert_eq!(
        info.record_error.as_deref(),
        Some("the job's end is not stored yet (retrying): the state dir is full")
    );
    assert_eq!(info.state, JobState::Finished { exit_code: 7 });
    assert_eq!(stored_state(fs_.path(), &job), JobState::Running);

    fs::remove_file(filler).unwrap();
    wait_info(&worker, &job, "the retried record stored", |i| {
        i.record_error.is_none()
    })
    .await;
    assert_eq!(
        stored_state(fs_.path(), &job),
        JobState::Finished { exit_code: 7 }
    );

    within(T, "shutdown", worker.0.shutdown()).await;
    drop(worker);
    let worker = Settling(reopen(fs_.path()));
    let info = worker.job(&job.id()).unwrap().info();
    assert_eq!(info.state, JobState::Finished { exit_code: 7 }, "{info:?}");
    assert!(!info.server_lost, "{info:?}");
}
