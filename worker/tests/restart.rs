//! Durable state: what a new worker finds in the state dir an earlier one left, including
//! after a crash; the state-dir lock; the output cap; removal and retention.

use std::fs;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::time::Duration;

use worker::logfile::{self, Stream as LogStream};
use worker::store::{self, JobRecord, StoredState};
use worker::{Config, Error, JobSpec, JobState, Stream, Worker};

mod support;
use support::Settling;

fn config(dir: &Path) -> Config {
    Config::new(dir)
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
        state: StoredState::Running,
        ended_at_unix_nanos: None,
        stop_requested: false,
        oom_killed: false,
        cpu_usage_usec: 0,
        memory_peak_bytes: 0,
        server_lost: false,
        output_error: None,
    }
}

async fn all_output(job: &worker::Job) -> Vec<(Stream, Vec<u8>)> {
    let mut reader = job.logs(false).unwrap();
    let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
    while let Some(batch) = reader.next_batch().await.unwrap() {
        for r in batch {
            match out.last_mut() {
                Some((s, bytes)) if *s == r.stream => bytes.extend_from_slice(&r.data),
                _ => out.push((r.stream, r.data.to_vec())),
            }
        }
    }
    out
}

#[tokio::test]
async fn ended_jobs_and_their_output_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let input = dir.path().join("input");
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
        a.wait().await;
        b.wait().await;
        c.stop(Duration::from_secs(5)).await.unwrap();
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
    while let Some(batch) = follow.next_batch().await.unwrap() {
        n += batch.len();
    }
    assert!(n >= 2);
}

#[tokio::test]
async fn a_second_worker_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let w = Worker::new(config(dir.path())).unwrap();
    let job = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    let id = job.id();
    w.shutdown().await;
    let record = store::read_record(&dir.path().join("jobs").join(id.to_string())).unwrap();
    assert_eq!(record.state, StoredState::Stopped { signal: 15 });
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
    let dir = tempfile::tempdir().unwrap();
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-00000000c0de".parse().unwrap();
    let job_dir = dir.path().join("jobs").join(id.to_string());
    fs::create_dir_all(&job_dir).unwrap();

    // The job ran in a session of its own, as jobs do.
    // SAFETY: pre_exec runs only setsid, which is async-signal-safe.
    let mut orphan = unsafe {
        std::process::Command::new("sleep")
            .arg("1000")
            .pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .spawn()
            .unwrap()
    };
    let pid = orphan.id() as i32;
    let record = running_record(
        id,
        pid,
        store::process_start_ticks(pid).unwrap(),
        vec!["sleep", "1000"],
    );
    store::write_record(&job_dir, &record).unwrap();
    let mut log = fs::File::create(job_dir.join(store::LOG_FILE)).unwrap();
    log.write_all(&logfile::file_header()).unwrap();
    let mut rec = vec![0u8; logfile::RECORD_HEADER_LEN + 6];
    rec[logfile::RECORD_HEADER_LEN..].copy_from_slice(b"whole\n");
    logfile::encode_header(&mut rec, LogStream::Stdout, 1);
    log.write_all(&rec).unwrap();
    let whole = fs::metadata(job_dir.join(store::LOG_FILE)).unwrap().len();
    log.write_all(&rec[..rec.len() - 3]).unwrap(); // the crash tore the second record
    drop(log);

    let w = Worker::new(config(dir.path())).unwrap();
    // The orphan was killed...
    assert_eq!(orphan.wait().unwrap().signal(), Some(libc::SIGKILL));
    // ...and the job is recorded as ended because the server went away.
    let info = w.job(&id).unwrap().info();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(info.server_lost);
    assert!(info.ended_at.is_some());
    assert_eq!(
        store::read_record(&job_dir).unwrap().state,
        StoredState::Stopped { signal: 9 }
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

#[tokio::test]
async fn a_recorded_pid_reused_by_an_older_process_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let id: worker::JobId = "0b7d4a4e-0000-4000-8000-00000000beef".parse().unwrap();
    let job_dir = dir.path().join("jobs").join(id.to_string());
    fs::create_dir_all(&job_dir).unwrap();
    // This test process stands in for an unrelated process that now has the job's pid:
    // it started long before the recorded start time, so it must not be killed.
    let me = std::process::id() as i32;
    let record = running_record(id, me, u64::MAX, vec!["true"]);
    store::write_record(&job_dir, &record).unwrap();
    fs::write(job_dir.join(store::LOG_FILE), logfile::file_header()).unwrap();
    let w = Worker::new(config(dir.path())).unwrap();
    assert!(w.job(&id).unwrap().info().server_lost);
    // Still alive to assert this.
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_with_a_marker_and_the_job_runs_on() {
    let dir = tempfile::tempdir().unwrap();
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
    let info = job.wait().await;
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
    let dir = tempfile::tempdir().unwrap();
    let w = Settling(Worker::new(config(dir.path())).unwrap());
    let running = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    let err = w.remove(&running.id()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    running.stop(Duration::from_secs(5)).await.unwrap();
    w.remove(&running.id()).await.unwrap();
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
    old.wait().await;
    let live = w
        .start(JobSpec::new("alice", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    assert_eq!(w.prune(Duration::from_secs(3600)), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(w.prune(Duration::from_millis(1)), 1);
    assert!(w.job(&old.id()).is_err());
    assert!(w.job(&live.id()).is_ok());
    live.stop(Duration::from_secs(5)).await.unwrap();
}
