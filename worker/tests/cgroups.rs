//! Resource control under a real cgroup v2 hierarchy with the cpu, io, memory and pids
//! controllers. This host's hierarchy may have none, so these tests are ignored by a plain
//! `cargo test`; `scripts/test-cgroups.sh` runs them with `--include-ignored`, directly
//! where the host can, otherwise inside a VM (`scripts/cgroup-vm/`). They move the test
//! process between cgroups, so they run one at a time (`--test-threads=1`).
//!
//! The last two tests need no controllers and run everywhere.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use worker::{CgroupMode, Config, DeviceRate, Error, JobSpec, JobState, Limits, Stream, Worker};

mod support;

/// A worker whose jobd subtree lives in a fresh cgroup of its own; on drop, its jobs are
/// settled, the test process moves back to the root and every cgroup the test made must
/// be gone.
struct Fixture {
    worker: Worker,
    root: PathBuf,
    base: PathBuf,
    _state: tempfile::TempDir,
}

fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    worker::cgroup::cgroup2_mount(&mountinfo).expect("no cgroup2 mount")
}

impl Fixture {
    fn new(name: &str, tune: impl FnOnce(&mut Config)) -> Fixture {
        let root = cgroup_root();
        fs::write(
            root.join("cgroup.subtree_control"),
            "+cpu +io +memory +pids",
        )
        .unwrap();
        let base = root.join(format!("jobworker-test-{name}"));
        fs::create_dir(&base).unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut config = Config::new(state.path());
        config.cgroups = CgroupMode::Required;
        config.cgroup_root = Some(base.clone());
        tune(&mut config);
        let worker = Worker::new(config).unwrap();
        Fixture {
            worker,
            root,
            base,
            _state: state,
        }
    }

    fn job_cgroup(&self, id: &worker::JobId) -> PathBuf {
        self.worker.cgroup_jobs_dir().unwrap().join(id.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap();
        // After the move: a thread settle starts in the server's cgroup could still be
        // exiting there when that cgroup is removed below.
        support::settle(&self.worker);
        let jobs = self.base.join("jobd/jobs");
        // Job cgroups are the subfolders; the rest are the cgroup's own control files.
        let left: Vec<_> = fs::read_dir(&jobs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        for dir in [
            jobs,
            self.base.join("jobd/server"),
            self.base.join("jobd"),
            self.base.clone(),
        ] {
            let _ = fs::remove_dir(&dir);
        }
        let base_gone = !self.base.exists();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "job cgroups left behind: {left:?}");
            assert!(base_gone, "{} left behind", self.base.display());
        }
    }
}

fn sh(script: &str) -> JobSpec {
    JobSpec::new("alice", vec!["sh".into(), "-c".into(), script.into()])
}

fn limited(spec: JobSpec, f: impl FnOnce(&mut Limits)) -> JobSpec {
    let mut limits = Limits::default();
    f(&mut limits);
    spec.with_limits(limits)
}

async fn output(job: &worker::Job) -> String {
    let mut reader = job.logs(true).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = reader.next_batch().await.unwrap() {
        for r in batch {
            if r.stream == Stream::Stdout {
                out.extend_from_slice(&r.data);
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn the_job_is_in_its_cgroup_from_its_first_instruction() {
    let f = Fixture::new("first", |_| {});
    let job = f
        .worker
        .start(JobSpec::new(
            "alice",
            vec!["cat".into(), "/proc/self/cgroup".into()],
        ))
        .await
        .unwrap();
    let out = output(&job).await;
    let rel = f.job_cgroup(&job.id());
    let rel = rel.strip_prefix(&f.root).unwrap();
    assert_eq!(out, format!("0::/{}\n", rel.display()));
    assert!(
        !f.job_cgroup(&job.id()).exists(),
        "cgroup not removed after the job ended"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn memory_limit_oom_kills_and_says_so() {
    let f = Fixture::new("memory", |_| {});
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "python3".into(),
                "-c".into(),
                "b = b'x' * (100 << 20)".into(),
            ],
        ),
        |l| l.memory_bytes = Some(32 << 20),
    );
    let job = f.worker.start(spec).await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 9 }, "{info:?}");
    assert!(info.oom_killed, "{info:?}");
    assert!(
        info.memory_peak_bytes > 16 << 20 && info.memory_peak_bytes <= 33 << 20,
        "{info:?}"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_job_killed_with_sigkill_by_hand_is_not_reported_as_oom() {
    let f = Fixture::new("notoom", |_| {});
    let spec = limited(
        JobSpec::new("alice", vec!["sleep".into(), "60".into()]),
        |l| l.memory_bytes = Some(32 << 20),
    );
    let job = f.worker.start(spec).await.unwrap();
    // SAFETY: signalling the process this test started, by pid.
    unsafe { libc::kill(job.info().pid, libc::SIGKILL) };
    let info = tokio::time::timeout(Duration::from_secs(30), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(
        !info.oom_killed,
        "exit by SIGKILL must not be guessed to be an OOM kill"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn cpu_limit_throttles_a_busy_loop() {
    let f = Fixture::new("cpu", |_| {});
    // A shell loop rather than an interpreter: in an emulated VM an interpreter's start-up
    // alone would use more CPU time than the bound checked below.
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "timeout".into(),
                "2".into(),
                "sh".into(),
                "-c".into(),
                "while :; do :; done".into(),
            ],
        ),
        |l| l.cpus = Some(0.1),
    );
    let started = Instant::now();
    let job = f.worker.start(spec).await.unwrap();
    let cpu_max = fs::read_to_string(f.job_cgroup(&job.id()).join("cpu.max")).unwrap();
    assert_eq!(cpu_max.trim(), "10000 100000");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stat = fs::read_to_string(f.job_cgroup(&job.id()).join("cpu.stat")).unwrap();
    let info = tokio::time::timeout(Duration::from_secs(60), job.wait())
        .await
        .unwrap();
    assert_eq!(
        info.state,
        JobState::Finished { exit_code: 124 },
        "timeout ends the loop"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(throttled > 0, "{stat}");
    assert!(
        info.cpu_usage_usec <= 350_000,
        "used {} µs of cpu",
        info.cpu_usage_usec
    );
    assert!(info.cpu_usage_usec > 0);
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn pids_limit_contains_a_fork_bomb() {
    let f = Fixture::new("pids", |_| {});
    let spec = limited(sh("bomb() { bomb | bomb & }; bomb; exec sleep 60"), |l| {
        l.pids = Some(8)
    });
    let job = f.worker.start(spec).await.unwrap();
    let cgroup = f.job_cgroup(&job.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let current: u64 = fs::read_to_string(cgroup.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 8, "pids.current {current}");
    let events = fs::read_to_string(cgroup.join("pids.events")).unwrap();
    assert!(
        !events.contains("max 0"),
        "the limit was never hit: {events}"
    );
    // Other jobs still start and run.
    let other = f
        .worker
        .start(JobSpec::new("bob", vec!["echo".into(), "fine".into()]))
        .await
        .unwrap();
    assert_eq!(output(&other).await, "fine\n");
    assert_eq!(
        other.wait().await.state,
        JobState::Finished { exit_code: 0 }
    );
    let info = job.stop(Duration::from_secs(2)).await.unwrap();
    assert!(!info.state.is_running());
    assert!(!cgroup.exists(), "fork bomb cgroup left behind");
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn device_write_limit_slows_direct_writes() {
    let disk = std::env::var("CGVM_DISK")
        .expect("CGVM_DISK names a scratch block device; scripts/test-cgroups.sh sets it");
    let f = Fixture::new("io", |_| {});
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "dd".into(),
                "if=/dev/zero".into(),
                format!("of={disk}"),
                "bs=64k".into(),
                "count=64".into(),
                "oflag=direct".into(),
            ],
        ),
        |l| {
            l.device_write_bps = vec![DeviceRate {
                device: disk.clone(),
                bytes_per_second: 1 << 20,
            }]
        },
    );
    let started = Instant::now();
    let job = f.worker.start(spec).await.unwrap();
    let io_max = fs::read_to_string(f.job_cgroup(&job.id()).join("io.max")).unwrap();
    assert!(io_max.contains("wbps=1048576"), "{io_max}");
    let info = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert!(
        took >= Duration::from_millis(3500),
        "4 MiB at 1 MiB/s took only {took:?}"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn stop_kills_a_daemon_that_escaped_the_process_group() {
    let f = Fixture::new("daemon", |_| {});
    let job = f
        .worker
        .start(sh(
            "(setsid sh -c 'echo $$; exec sleep 1000' &); exec sleep 1000",
        ))
        .await
        .unwrap();
    let mut reader = job.logs(true).unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), reader.next_batch())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let daemon: i32 = String::from_utf8_lossy(&batch[0].data)
        .trim()
        .parse()
        .unwrap();
    // It really left the job's session and process group.
    // (The job is not isolated here: its pids are the host's.)
    let stat = fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_ne!(
        fields[2].parse::<i32>().unwrap(),
        job.info().pid,
        "daemon still in the job's group"
    );
    let cgroup = f.job_cgroup(&job.id());
    job.stop(Duration::from_secs(2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(daemon) {
        assert!(
            Instant::now() < deadline,
            "daemon {daemon} survived the stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cgroup.exists());
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn stale_job_cgroups_are_killed_and_removed_at_start_up() {
    let root = cgroup_root();
    fs::write(
        root.join("cgroup.subtree_control"),
        "+cpu +io +memory +pids",
    )
    .unwrap();
    let base = root.join("jobworker-test-stale");
    let stale = base.join("jobd/jobs/00000000-0000-4000-8000-000000000001");
    fs::create_dir_all(&stale).unwrap();
    fs::create_dir_all(base.join("jobd/server")).unwrap();
    // An "orphan" of an earlier jobd, started by this test.
    let mut orphan = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    fs::write(stale.join("cgroup.procs"), orphan.id().to_string()).unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(base.clone());
    let fixture = Fixture {
        worker: Worker::new(config).unwrap(),
        root,
        base,
        _state: state,
    };
    let status = orphan.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!stale.exists());
    drop(fixture);
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_path_that_is_not_a_block_device_is_refused() {
    let f = Fixture::new("baddev", |_| {});
    let spec = limited(JobSpec::new("alice", vec!["true".into()]), |l| {
        l.device_read_bps = vec![DeviceRate {
            device: "/dev/null".into(),
            bytes_per_second: 1 << 20,
        }]
    });
    let err = f.worker.start(spec).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(err.to_string(), "/dev/null is not a block device");
    assert!(f.worker.list(None).is_empty());
}

// ---- these need no controllers and run everywhere ----

#[tokio::test]
async fn required_cgroups_refuse_to_start_without_a_hierarchy() {
    let state = tempfile::tempdir().unwrap();
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(not_a_cgroup.path().to_path_buf());
    let err = Worker::new(config).err().expect("started without cgroups");
    assert!(
        err.to_string()
            .starts_with("cgroups are required but unusable"),
        "{err}"
    );
}

#[tokio::test]
async fn auto_runs_without_limits_and_refuses_jobs_that_ask_for_them() {
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let worker =
        support::TestWorker::with(|c| c.cgroup_root = Some(not_a_cgroup.path().to_path_buf()));
    assert!(worker.cgroup_jobs_dir().is_none());
    let err = worker
        .start(limited(JobSpec::new("alice", vec!["true".into()]), |l| {
            l.pids = Some(8)
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let job = worker
        .start(JobSpec::new("alice", vec!["true".into()]))
        .await
        .unwrap();
    assert_eq!(job.wait().await.state, JobState::Finished { exit_code: 0 });
}

/// Changes a global sysctl, so it runs only in the VM with the other tests here.
#[tokio::test]
#[ignore = "sets user.max_net_namespaces to 0: run in the VM by scripts/test-cgroups.sh"]
async fn a_namespace_the_kernel_refuses_is_a_clear_start_error() {
    const KNOB: &str = "/proc/sys/user/max_net_namespaces";
    let saved = fs::read_to_string(KNOB).unwrap();
    fs::write(KNOB, "0").unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Off;
    config.isolation = worker::Isolation::ALL;
    let worker = Worker::new(config);
    let result = match &worker {
        Ok(w) => Some((
            w.default_isolation(),
            w.start(
                JobSpec::new("alice", vec!["true".into()]).with_isolation(worker::Isolation::ALL),
            )
            .await,
        )),
        Err(_) => None,
    };
    fs::write(KNOB, saved.trim()).unwrap();
    let (default, started) = result.expect("the worker did not start");
    // The server's default drops what the kernel refuses...
    assert!(default.pid && default.mount && !default.net, "{default:?}");
    // ...but a job that asks for it explicitly gets a clear error, not a job without it.
    let err = started.expect_err("a job started without the namespace it asked for");
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("the kernel refused the job's namespaces"),
        "{err}"
    );
    assert!(worker.unwrap().list(None).is_empty());
}
