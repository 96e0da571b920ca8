//! End to end under a real cgroup v2 hierarchy: the limits a user asks `jobc` for, through
//! jobd's API, enforced by the kernel, and nothing of a job left in the cgroup tree.
//!
//! This host's cgroup v2 has no controllers, so the tests that need them are ignored here
//! and run in the cgroup VM (`scripts/test-cgroups.sh`, part of `.ci/run`), where jobd runs
//! with `--cgroups required`. One test runs everywhere: `--cgroups required` starts where
//! the controllers are and refuses, saying so, where they are not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::Server;

/// The cgroup2 mount, from this process's mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
}

fn has_controllers(base: &Path) -> bool {
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    ["cpu", "io", "memory", "pids"]
        .iter()
        .all(|c| controllers.split_whitespace().any(|have| have == *c))
}

/// A cgroup of its own for one test's jobd, removed (with what jobd made in it) at the end.
struct Base(PathBuf);

impl Base {
    fn new() -> Base {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = mount.join(format!("jobworker-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        Base(path)
    }

    fn jobs(&self) -> PathBuf {
        self.0.join("jobd").join("jobs")
    }

    /// The job cgroups that exist now.
    fn job_cgroups(&self) -> Vec<String> {
        std::fs::read_dir(self.jobs())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        // Deepest first; every one is empty once jobd has exited.
        for dir in [
            self.jobs(),
            self.0.join("jobd/server"),
            self.0.join("jobd"),
            self.0.clone(),
        ] {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// jobd with cgroups required, in a cgroup of its own, allowed to run root jobs (the
/// block device test needs one).
fn server(base: &Base) -> Server {
    let dir = testkit::public_tempdir();
    let config = dir.path().join("jobd.toml");
    std::fs::write(&config, "allow_root_jobs = true\n").unwrap();
    let server = Server::start_with(&[
        "--cgroups",
        "required",
        "--cgroup-root",
        base.0.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    // The config file's folder lives as long as the test.
    std::mem::forget(dir);
    server
}

fn wait_ended(s: &Server, user: &str, id: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let st = s.status_json(user, id);
        if st["state"] != "running" {
            return st;
        }
        assert!(Instant::now() < deadline, "job {id} still running: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cgroups_required_starts_only_where_the_controllers_are() {
    let mount = cgroup2_mount();
    let usable = mount.as_deref().is_some_and(has_controllers) && nix_is_root();
    let dir = testkit::public_tempdir();
    let pki = dir.path().join("pki");
    testkit::pki_init(&pki);
    let started = testkit::Jobd::spawn(
        &dir.path().join("state"),
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
        &["--cgroups", "required"],
    );
    match (usable, started) {
        (true, Ok(mut jobd)) => assert_eq!(jobd.terminate().code(), Some(0)),
        (false, Err((status, log))) => {
            assert_eq!(status.code(), Some(1));
            let said = log.join("\n");
            assert!(said.contains("cgroups are required but unusable"), "{said}");
        }
        (true, Err((status, log))) => {
            panic!("jobd refused cgroups where they are usable: {status:?} {log:#?}")
        }
        (false, Ok(mut jobd)) => {
            jobd.terminate();
            panic!("jobd started with --cgroups required where the controllers are missing")
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
#[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers: run by scripts/test-cgroups.sh"]
fn memory_limit_ends_a_job_with_the_oom_kill_shown_in_its_status() {
    let base = Base::new();
    let s = server(&base);
    let id = s.start_job(
        "alice",
        &[
            "--memory",
            "32M",
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    let st = wait_ended(&s, "alice", &id, Duration::from_secs(60));
    assert_eq!(st["oom_killed"], true, "{st}");
    assert_eq!(st["limits"]["memory_bytes"], 32 << 20, "{st}");
    let peak = st["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak > 16 << 20 && peak <= 32 << 20, "peak {peak}: {st}");
    assert!(!s
        .ok("alice", &["logs", "--raw", "--no-follow", &id])
        .contains("survived"));
    assert_eq!(base.job_cgroups(), Vec::<String>::new());
    s.shutdown();
}

#[test]
#[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers: run by scripts/test-cgroups.sh"]
fn cpu_limit_holds_a_busy_job_to_its_share() {
    let base = Base::new();
    let s = server(&base);
    // Busy for 3 s of wall time at most a fifth of a CPU.
    let id = s.start_job(
        "alice",
        &[
            "--cpus",
            "0.2",
            "timeout",
            "3",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    let st = wait_ended(&s, "alice", &id, Duration::from_secs(60));
    let used = st["cpu_usage_usec"].as_u64().unwrap() as f64 / 1e6;
    assert!(
        used > 0.2 && used < 1.0,
        "{used} s of CPU in 3 s at 0.2 CPU: {st}"
    );
    assert_eq!(base.job_cgroups(), Vec::<String>::new());
    s.shutdown();
}

#[test]
#[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers: run by scripts/test-cgroups.sh"]
fn pids_limit_refuses_the_fork_past_it() {
    let base = Base::new();
    let s = server(&base);
    let forks = |pids: &str| {
        let id = s.start_job(
            "alice",
            &[
                "--pids",
                pids,
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
            ],
        );
        let st = wait_ended(&s, "alice", &id, Duration::from_secs(60));
        let out = testkit::output(
            s.jobc_cmd("alice")
                .args(["logs", "--raw", "--no-follow", &id]),
            testkit::JOBC_TIMEOUT,
        );
        (st, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Eight children fit in 64, not in 4 (the init and the shell take two).
    let (st, err) = forks("64");
    assert_eq!(
        (st["exit_code"].clone(), err.as_str()),
        (0.into(), ""),
        "{st}"
    );
    let (st, err) = forks("4");
    assert!(err.contains("fork"), "no refused fork: {err:?} {st}");
    assert_ne!(st["exit_code"], 0, "{st}");
    assert_eq!(base.job_cgroups(), Vec::<String>::new());
    s.shutdown();
}

#[test]
#[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers: run by scripts/test-cgroups.sh"]
fn device_write_bps_slows_writes_to_the_scratch_disk() {
    let disk = std::env::var("CGVM_DISK").expect("CGVM_DISK names the VM's scratch disk");
    let base = Base::new();
    let s = server(&base);
    // 4 MiB at 1 MiB/s, direct (no page cache to absorb it): about 4 s, never under 2.5.
    let started = Instant::now();
    let id = s.start_job(
        "admin",
        &[
            "--as-root",
            "--device-write-bps",
            &format!("{disk}:1M"),
            "dd",
            "if=/dev/zero",
            &format!("of={disk}"),
            "bs=256K",
            "count=16",
            "oflag=direct",
        ],
    );
    let st = wait_ended(&s, "admin", &id, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(st["exit_code"], 0, "{st}");
    assert!(
        took > Duration::from_millis(2500),
        "4 MiB at 1 MiB/s took {took:?}"
    );
    assert_eq!(base.job_cgroups(), Vec::<String>::new());
    s.shutdown();
}

#[test]
#[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers: run by scripts/test-cgroups.sh"]
fn stop_kills_a_daemon_that_left_the_jobs_process_group() {
    let base = Base::new();
    let s = server(&base);
    // No PID namespace: only the cgroup holds what the job starts (admins may ask).
    let id = s.start_job(
        "admin",
        &[
            "--isolate",
            "none",
            "sh",
            "-c",
            "setsid sh -c 'echo $$; exec sleep 300' & wait; sleep 300",
        ],
    );
    let mut daemon = 0i64;
    testkit::wait_for("the daemon's pid", Duration::from_secs(20), || {
        daemon = s
            .ok("admin", &["logs", "--raw", "--no-follow", &id])
            .trim()
            .parse()
            .unwrap_or(0);
        daemon > 0
    });
    let (started, _) = testkit::start_time(daemon).expect("the daemon runs");
    let cgroup = base.jobs().join(&id);
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == daemon.to_string()), "{procs}");
    s.ok("admin", &["stop", "--grace", "1", &id]);
    testkit::wait_for("the daemon to die", Duration::from_secs(10), || {
        testkit::process_gone(daemon, started)
    });
    assert!(!cgroup.exists(), "the job's cgroup outlived its stop");
    assert_eq!(base.job_cgroups(), Vec::<String>::new());
    assert_eq!(s.status_json("admin", &id)["state"], "stopped");
    s.shutdown();
}
