//! Durable state: what a new worker finds in the state dir an earlier one left, including
//! after a crash; the state-dir lock; the output cap; removal and retention.

use std::fs;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use worker::disk as logfile;
use worker::disk::{self as store, JobRecord};
use worker::Stream as LogStream;
use worker::{Config, Error, JobSpec, JobState, Stream, Worker};

mod support;
use support::{collect, live_start_ticks, within, Settling, StateDir};

/// A worker that runs jobs without cgroups or PID namespaces, as these tests' jobs are
/// (see `support::TestWorker`).
fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.allow_unheld_jobs = true;
    config
}

/// Opens a worker on a state dir another worker of this process just released. The
/// state lock is an flock, and a child that another test spawns at that moment holds a
/// copy of the lock's descriptor until it execs (a few milliseconds): wait that out.
fn reopen(dir: &Path) -> Worker {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Worker::new(config(dir)) {
            Err(Error::FailedPrecondition(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
}

/// How long any one wait in these tests may take.
const T: Duration = Duration::from_secs(20);

/// A state dir that a worker has laid out and left, as a crashed jobd leaves it.
fn used_state_dir() -> StateDir {
    let dir = StateDir::new();
    drop(Worker::new(config(dir.path())).unwrap());
    dir
}

/// A fake job folder in `dir` for a job that was running when its jobd went away, with
/// an empty log.
fn crashed_job(dir: &Path, record: &JobRecord) -> std::path::PathBuf {
    let job_dir = dir.join("jobs").join(record.id.to_string());
    fs::create_dir(&job_dir).unwrap();
    store::write_record(&job_dir, record).unwrap();
    fs::write(job_dir.join(store::LOG_FILE), logfile::file_header()).unwrap();
    job_dir
}

/// Runs `script` under `sh` in a session of its own, as jobs run.
fn session_leader(script: &str) -> Child {
    // SAFETY: pre_exec runs only setsid, which is async-signal-safe.
    unsafe {
        std::process::Command::new("sh")
            .args(["-c", script])
            .pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .spawn()
            .unwrap()
    }
}

/// Processes this test started, killed by pid (and start time) when it ends, also when
/// it fails.
struct Started {
    leader: Child,
    others: Vec<(i32, u64)>,
}

impl Drop for Started {
    fn drop(&mut self) {
        // While the leader is unreaped its pid, the session's process group, is nobody
        // else's: that reaches the children a failed test never named.
        if matches!(self.leader.try_wait(), Ok(None)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.leader.id() as i32), libc::SIGKILL) };
        }
        for &(pid, ticks) in &self.others {
            if live_start_ticks(pid) == Some(ticks) {
                // SAFETY: kill has no memory-safety preconditions; the pid is checked
                // against its start time just above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.leader.kill();
        let _ = self.leader.wait();
    }
}

/// The command name and the fields after it in `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(String, Vec<String>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    Some((
        head.split_once('(')?.1.to_string(),
        rest.split_whitespace().map(String::from).collect(),
    ))
}

/// Waits until `leader` has exec'd `sleep` and has one child that has too; returns the
/// child's pid. The leader first: it execs only after its other children are reaped.
fn sleeping_child(leader: i32) -> i32 {
    let deadline = Instant::now() + T;
    loop {
        if stat(leader).is_some_and(|(comm, _)| comm == "sleep") {
            let children: Vec<i32> = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| {
                    stat(p).is_some_and(|(comm, f)| {
                        comm == "sleep" && f[0] != "Z" && f[1] == leader.to_string()
                    })
                })
                .collect();
            if let [child] = children[..] {
                return child;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the session's processes never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `child` has exited; returns how.
fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The record of a job that an earlier jobd was running when it went away.
fn running_record(id: worker::JobId, pid: i32, start_ticks: u64, argv: Vec<&str>) -> JobRecord {
    JobRecord {
        version: store::RECORD_VERSION,
        id,
        owner: "alice".into(),
        argv: argv.into_iter().map(String::from).collect(),
        limits: Default::default(),
        isolation: Default::default(),
        uid: None,
        gid: None,
        pid,
        start_ticks,
        cgroup: None,
        started_at_unix_nanos: logfile::now_unix_nanos(),
        state: JobState::Running,
        ended_at_unix_nanos: None,
        stop_requested: false,
        oom_killed: false,
        cpu_usage_usec: 0,
        memory_peak_bytes: 0,
        server_lost: false,
        output_error: None,
        env: Vec::new(),
        working_dir: "/".into(),
        timeout_ms: None,
        timed_out: false,
    }
}

async fn all_output(job: &worker::Job) -> Vec<(Stream, Vec<u8>)> {
    collect(job.logs(false).unwrap()).await.runs
}

#[tokio::test]
async fn ended_jobs_and_their_output_survive_a_restart() {
    let dir = StateDir::new();
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let input = dir.scratch().join("input");
    fs::write(&input, &binary).unwrap();
    let (ids, outputs) = {
        let w = Worker::new(config(dir.path())).unwrap();
        let a = w
            .start(JobSpec::new(
                "alice",
                vec!["cat".into(), input.display().to_string()],
            ))
            .await
            .unwrap();
        let b = w
            .start(JobSpec::new(
                "bob",
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 7".into(),
                ],
            ))
            .await
            .unwrap();
        let c = w
            .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
            .await
            .unwrap();
        within(T, "job a's end", a.wait()).await;
        within(T, "job b's end", b.wait()).await;
        within(T, "job c's stop", c.stop(Duration::from_secs(5)))
            .await
            .unwrap();
        let outputs = [all_output(&a).await, all_output(&b).await];
        ([a.id(), b.id(), c.id()], outputs)
    };
    let w = reopen(dir.path());
    let listed: Vec<_> = w
        .list(None)
        .into_iter()
        .map(|j| (j.id, j.owner, j.state))
        .collect();
    assert_eq!(listed.len(), 3);
    let state = |id| w.job(id).unwrap().info().state;
    assert_eq!(state(&ids[0]), JobState::Finished { exit_code: 0 });
    assert_eq!(state(&ids[1]), JobState::Finished { exit_code: 7 });
    assert_eq!(state(&ids[2]), JobState::Stopped { signal: 15 });
    let c = w.job(&ids[2]).unwrap().info();
    assert!(c.stop_requested && !c.server_lost);
    assert_eq!(w.list(Some("bob")).len(), 1);
    assert_eq!(all_output(&w.job(&ids[0]).unwrap()).await, outputs[0]);
    assert_eq!(outputs[0], vec![(Stream::Stdout, binary)]);
    assert_eq!(all_output(&w.job(&ids[1]).unwrap()).await, outputs[1]);
    // A follower of a restored job ends at once with everything.
    let mut follow = w.job(&ids[1]).unwrap().logs(true).unwrap();
    let mut n = 0;
    while let Some(batch) = within(T, "a follower's batch", follow.next_batch())
        .await
        .unwrap()
    {
        n += batch.len();
    }
    assert!(n >= 2);
}

#[tokio::test]
async fn a_second_worker_on_the_same_state_dir_is_refused() {
    let dir = StateDir::new();
    let first = Worker::new(config(dir.path())).unwrap();
    let err = Worker::new(config(dir.path()))
        .err()
        .expect("two workers share a state dir");
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert!(err.to_string().contains("another jobd"), "{err}");
    drop(first);
    reopen(dir.path());
}

/// A graceful shutdown returns only once every job's final record is on disk, so the next
/// worker finds the jobs ended by the stop, not lost with the server.
#[tokio::test]
async fn shutdown_returns_with_final_records_written() {
    let dir = StateDir::new();
    let w = Worker::new(config(dir.path())).unwrap();
    let job = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    let id = job.id();
    within(T, "the shutdown", w.shutdown()).await;
    let record = store::read_record(&dir.path().join("jobs").join(id.to_string())).unwrap();
    assert_eq!(record.state, JobState::Stopped { signal: 15 });
    assert!(record.stop_requested && !record.server_lost);
    drop((job, w));
    let w = reopen(dir.path());
    let info = w.job(&id).unwrap().info();
    assert_eq!(info.state, JobState::Stopped { signal: 15 });
    assert!(!info.server_lost);
}

/// A job an earlier jobd was running when it was killed: its record says running, its
/// process lives on in its own session, and its log ends in a torn record.
#[tokio::test]
async fn a_job_running_at_a_crash_is_killed_and_recorded_and_its_torn_log_recovers() {
    let dir = used_state_dir();
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-00000000c0de".parse().unwrap();

    // The job ran in a session of its own, as jobs do.
    let mut orphan = Started {
        leader: session_leader("exec sleep 1000"),
        others: Vec::new(),
    };
    let pid = orphan.leader.id() as i32;
    let record = running_record(
        id,
        pid,
        store::process_start_ticks(pid).unwrap(),
        vec!["sleep", "1000"],
    );
    let job_dir = crashed_job(dir.path(), &record);
    let mut log = fs::File::options()
        .append(true)
        .open(job_dir.join(store::LOG_FILE))
        .unwrap();
    let mut rec = vec![0u8; logfile::RECORD_HEADER_LEN + 6];
    rec[logfile::RECORD_HEADER_LEN..].copy_from_slice(b"whole\n");
    logfile::encode_header(&mut rec, LogStream::Stdout, 1);
    log.write_all(&rec).unwrap();
    let whole = fs::metadata(job_dir.join(store::LOG_FILE)).unwrap().len();
    log.write_all(&rec[..rec.len() - 3]).unwrap(); // the crash tore the second record
    drop(log);

    let w = reopen(dir.path());
    // The orphan was killed...
    assert_eq!(exited(&mut orphan.leader).signal(), Some(libc::SIGKILL));
    // ...and the job is recorded as ended because the server went away.
    let info = w.job(&id).unwrap().info();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(info.server_lost);
    assert!(info.ended_at.is_some());
    assert_eq!(
        store::read_record(&job_dir).unwrap().state,
        JobState::Stopped { signal: 9 }
    );
    // The torn record is cut; the whole one is readable.
    assert_eq!(
        fs::metadata(job_dir.join(store::LOG_FILE)).unwrap().len(),
        whole
    );
    assert_eq!(
        all_output(&w.job(&id).unwrap()).await,
        vec![(Stream::Stdout, b"whole\n".to_vec())]
    );
}

/// A session that holds the recorded pid, and a child of it started a moment later, with
/// their start times: (leader pid, leader ticks, child pid, child ticks).
fn foreign_session() -> (Started, [(i32, u64); 2]) {
    // The pause puts clock ticks between the two starts.
    let mut started = Started {
        leader: session_leader("sleep 0.3; sleep 1000 & exec sleep 1000"),
        others: Vec::new(),
    };
    let leader = started.leader.id() as i32;
    let child = sleeping_child(leader);
    let ticks = |pid| live_start_ticks(pid).expect("a process of the session runs");
    let (leader_ticks, child_ticks) = (ticks(leader), ticks(child));
    started.others.push((child, child_ticks));
    assert!(leader_ticks < child_ticks, "{leader_ticks} {child_ticks}");
    (started, [(leader, leader_ticks), (child, child_ticks)])
}

/// Whether both processes of a [`foreign_session`] still run, after a recovery.
fn both_alive(procs: [(i32, u64); 2]) -> [bool; 2] {
    procs.map(|(pid, ticks)| live_start_ticks(pid) == Some(ticks))
}

/// After a reboot, say, the recorded pid belongs to a session leader that started before
/// the job's recorded start: that session is not the job's (while the job's session had a
/// process, its id could not be anyone's pid), so nothing in it is killed, not even a
/// process that started after the recorded time.
#[tokio::test]
async fn a_recorded_pid_reused_by_an_older_process_is_left_alone() {
    let dir = used_state_dir();
    let (_started, procs @ [(leader, _), (_, child_ticks)]) = foreign_session();
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-00000000beef".parse().unwrap();
    // The job started after the leader, as late as the leader's child.
    crashed_job(
        dir.path(),
        &running_record(id, leader, child_ticks, vec!["true"]),
    );
    let w = reopen(dir.path());
    let info = w.job(&id).unwrap().info();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(info.server_lost);
    assert_eq!(both_alive(procs), [true, true], "leader, child");
}

/// The same with a leader that started after the job's recorded start.
#[tokio::test]
async fn a_recorded_pid_reused_by_a_newer_session_leader_is_left_alone() {
    let dir = used_state_dir();
    let (_started, procs @ [(leader, leader_ticks), _]) = foreign_session();
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-00000000fade".parse().unwrap();
    crashed_job(
        dir.path(),
        &running_record(id, leader, leader_ticks - 1, vec!["true"]),
    );
    let w = reopen(dir.path());
    assert!(w.job(&id).unwrap().info().server_lost);
    assert_eq!(both_alive(procs), [true, true], "leader, child");
}

/// The recorded session outlived its leader, whose pid nobody has now, but the process
/// left in it is older than the job: it merely shares the number (a session of another
/// boot, say), so it is left alone.
#[tokio::test]
async fn members_of_the_recorded_session_older_than_the_job_are_left_alone() {
    let dir = used_state_dir();
    let mut started = Started {
        leader: session_leader("sleep 1000 & exit 0"),
        others: Vec::new(),
    };
    let sid = started.leader.id() as i32;
    assert!(exited(&mut started.leader).success());
    let deadline = Instant::now() + T;
    let member = loop {
        let found = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|&p| stat(p).is_some_and(|(comm, f)| comm == "sleep" && f[3] == sid.to_string()));
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "the session's sleep never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    let member_ticks = live_start_ticks(member).unwrap();
    started.others.push((member, member_ticks));
    assert_eq!(
        store::process_start_ticks(sid),
        None,
        "the leader's pid is free"
    );
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-0000000001d5".parse().unwrap();
    crashed_job(
        dir.path(),
        &running_record(id, sid, member_ticks + 1, vec!["true"]),
    );
    let w = reopen(dir.path());
    assert!(w.job(&id).unwrap().info().server_lost);
    assert_eq!(
        live_start_ticks(member),
        Some(member_ticks),
        "the member was killed"
    );
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_with_a_marker_and_the_job_runs_on() {
    let dir = StateDir::new();
    let mut c = config(dir.path());
    c.max_output_bytes = Some(1000);
    let w = Settling(Worker::new(c).unwrap());
    let job = w
        .start(JobSpec::new(
            "alice",
            vec![
                "sh".into(),
                "-c".into(),
                "head -c 5000 /dev/zero | tr '\\0' a; echo; echo still-running >&2; exit 4".into(),
            ],
        ))
        .await
        .unwrap();
    let info = within(T, "the job's end", job.wait()).await;
    assert_eq!(info.state, JobState::Finished { exit_code: 4 });
    let out = all_output(&job).await;
    assert_eq!(out[0], (Stream::Stdout, vec![b'a'; 1000]));
    assert_eq!(out[1].0, Stream::System);
    assert_eq!(
        out[1].1,
        b"output cap of 1000 bytes reached; later output is discarded\n"
    );
    assert_eq!(out.len(), 2);
    assert!(info
        .output_error
        .unwrap()
        .contains("output cap of 1000 bytes"));
}

#[tokio::test]
async fn remove_deletes_ended_jobs_only_and_retention_prunes() {
    let dir = StateDir::new();
    let w = Settling(Worker::new(config(dir.path())).unwrap());
    let running = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    let err = w.remove(&running.id()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    within(T, "the stop", running.stop(Duration::from_secs(5)))
        .await
        .unwrap();
    within(T, "the removal", w.remove(&running.id()))
        .await
        .unwrap();
    assert!(matches!(w.job(&running.id()), Err(Error::NotFound(_))));
    assert!(!dir
        .path()
        .join("jobs")
        .join(running.id().to_string())
        .exists());

    let old = w
        .start(JobSpec::new("alice", vec!["true".into()]))
        .await
        .unwrap();
    within(T, "the job's end", old.wait()).await;
    let live = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    assert_eq!(w.prune(Duration::from_secs(3600)), 0);
    // Pruned once it is older than a millisecond and settled (its final record written).
    let deadline = Instant::now() + T;
    while w.prune(Duration::from_millis(1)) == 0 {
        assert!(Instant::now() < deadline, "the ended job was never pruned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.job(&old.id()).is_err());
    assert!(w.job(&live.id()).is_ok());
    within(T, "the stop", live.stop(Duration::from_secs(5)))
        .await
        .unwrap();
}
