//! Jobs in their own PID, mount and network namespaces, as an unprivileged user. These run
//! on any host where the tests run as root (namespaces need CAP_SYS_ADMIN); the one test
//! that needs a kernel refusing a namespace changes a global sysctl and runs in the VM
//! (see tests/cgroups.rs).

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use worker::{Error, Isolation, JobSpec, JobState, UidRange};

mod support;
use support::{live_start_ticks, run, sh, within, TestWorker};

/// Jobs isolated as jobd isolates them; with `uids`, each owner's under a uid of their own,
/// else as root (the test's own user).
fn worker(uids: Option<UidRange>) -> TestWorker {
    TestWorker::with(|config| {
        config.isolation = Isolation::ALL;
        config.job_uids = uids;
    })
}

const PER_USER: Option<UidRange> = Some(UidRange::DYNAMIC_USER);

#[tokio::test]
async fn an_isolated_job_runs_under_its_init_and_sees_only_its_own_processes() {
    let w = worker(PER_USER);
    let (state, out, err) = run(
        &w,
        // The init may still be starting when the program does: its name shows once it runs.
        sh("sleep 100 & echo $$; \
            for i in $(seq 100); do [ \"$(cat /proc/1/comm)\" = jobworker-init ] && break; sleep 0.02; done; \
            cat /proc/1/comm; ps -e -o pid= | wc -l; ls -d /proc/[0-9]* | wc -l; kill $!"),
    )
    .await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    // The program is the init's first child.
    assert_eq!(lines[..2], ["2", "jobworker-init"], "{out}");
    // The init, sh, sleep and ps (or ls) itself: nothing of the host.
    let ps: u32 = lines[2].parse().unwrap();
    let procs: u32 = lines[3].parse().unwrap();
    assert!(ps <= 5 && procs <= 5, "{out}");
}

#[tokio::test]
async fn an_isolated_job_has_only_loopback_and_cannot_reach_the_host() {
    let w = worker(PER_USER);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, out, _) = run(
        &w,
        sh(&format!(
            "ls /sys/class/net; ip -o link | cut -d: -f2; \
             if bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null; then echo reached; else echo unreachable; fi"
        )),
    )
    .await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, vec!["lo", "lo", "unreachable"], "{out}");
}

/// More jobs than the server keeps network namespaces ready for, all alive at once (so no
/// namespace number can be reused): those made ahead and those made by `clone3` alike are
/// each a job's own, new, with `lo` up.
#[tokio::test]
async fn every_job_gets_a_new_network_namespace_with_loopback_up() {
    let w = worker(PER_USER);
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    let mut jobs = Vec::new();
    for _ in 0..20 {
        let script = "readlink /proc/self/ns/net; cat /sys/class/net/lo/flags; exec sleep 60";
        jobs.push(w.start(sh(script)).await.unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    for job in &jobs {
        let mut reader = job.logs(true).unwrap();
        let mut out = Vec::new();
        while out.iter().filter(|&&b| b == b'\n').count() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(30), reader.next_batch())
                .await
                .unwrap()
                .unwrap()
                .expect("the job ended before printing its namespace");
            batch.iter().for_each(|r| out.extend_from_slice(&r.data));
        }
        let out = String::from_utf8(out).unwrap();
        let (netns, flags) = out.trim().split_once('\n').unwrap();
        assert_ne!(
            netns,
            host.to_str().unwrap(),
            "a job shares the server's namespace"
        );
        assert!(seen.insert(netns.to_string()), "two jobs share {netns}");
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(
            flags & libc::IFF_UP as u32,
            1,
            "lo is down in {netns}: flags {flags:#x}"
        );
    }
    for job in &jobs {
        // sleep as PID 1 ignores SIGTERM: straight to SIGKILL.
        within(
            Duration::from_secs(20),
            "the stop",
            job.stop(Duration::ZERO),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn host_network_reaches_the_host_loopback() {
    let w = worker(PER_USER);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = sh(&format!(
        "echo hello > /dev/tcp/127.0.0.1/{port} && echo reached"
    ));
    let spec = JobSpec {
        argv: vec!["bash".into(), "-c".into(), spec.argv[2].clone()],
        ..spec
    }
    .with_isolation(Isolation {
        net: false,
        ..Isolation::ALL
    });
    let job = w.start(spec).await.unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the job never connected");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).unwrap();
    assert_eq!(got, "hello\n");
    let info = within(Duration::from_secs(10), "the job's end", job.wait()).await;
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert!(!job.info().isolation.net && job.info().isolation.pid);
}

#[tokio::test]
async fn mounts_made_by_a_job_stay_in_its_namespace() {
    // Outside /tmp, which the job's mount namespace replaces with a tmpfs of its own.
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Root inside the job, to be allowed to mount at all.
    let w = worker(None);
    let t = target.path().display();
    let (state, out, err) = run(
        &w,
        sh(&format!("mount -t tmpfs jobtmp {t} && touch {t}/inside && ls {t} && grep -c ' {t} ' /proc/self/mountinfo")),
    )
    .await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    assert_eq!(out, "inside\n1\n");
    assert!(!target.path().join("inside").exists());
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(&format!(" {t} ")),
        "the job's mount leaked to the host"
    );
}

#[tokio::test]
async fn jobs_run_as_their_owners_uid_without_groups_or_new_privileges() {
    let w = worker(PER_USER);
    let (_, out, _) = run(
        &w,
        sh("id -u; id -g; grep -E '^(Groups|NoNewPrivs):' /proc/self/status"),
    )
    .await;
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let job = w.start(sh("true")).await.unwrap();
    let info = within(Duration::from_secs(20), "the job's end", job.wait()).await;
    let uid = info.uid.expect("the job ran under a uid of its owner's");
    let range = UidRange::DYNAMIC_USER;
    assert!(
        (range.first()..=range.last()).contains(&uid),
        "uid {uid} is outside {range}"
    );
    assert_eq!(info.gid, Some(uid));
    assert_eq!(
        lines,
        vec![
            uid.to_string(),
            uid.to_string(),
            "Groups:".into(),
            "NoNewPrivs: 1".into()
        ],
        "{out}"
    );
    assert_eq!(info.isolation, Isolation::ALL);
}

#[tokio::test]
async fn root_jobs_are_refused_unless_the_server_allows_them() {
    let w = worker(PER_USER);
    let mut spec = sh("id -u");
    spec.as_root = true;
    let err = w.start(spec.clone()).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");

    let w = TestWorker::with(|config| {
        config.isolation = Isolation::ALL;
        config.job_uids = PER_USER;
        config.allow_root = true;
    });
    let (_, out, _) = run(&w, spec).await;
    assert_eq!(out, "0\n");
}

/// One process as `/proc/<pid>/stat` shows it to this (the host's) PID namespace.
struct Proc {
    pid: i32,
    ppid: i32,
    session: i32,
    start_ticks: u64,
    comm: String,
}

fn host_processes() -> Vec<Proc> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f.len() > 19 && f[0] != "Z").then(|| Proc {
                pid,
                ppid: f[1].parse().unwrap(),
                session: f[3].parse().unwrap(),
                start_ticks: f[19].parse().unwrap(),
                comm: head.split_once('(').unwrap().1.to_string(),
            })
        })
        .collect()
}

/// Live descendants of `pid`, found by their parents (which works whether or not they
/// share a namespace with it).
fn descendants(pid: i32) -> Vec<Proc> {
    let all = host_processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            found.push(Proc {
                comm: p.comm.clone(),
                ..*p
            });
        }
    }
    found
}

/// Whether `pid` ignores SIGTERM.
fn ignores_sigterm(pid: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
}

/// The job's children escape a SIGTERM two ways: one ignores it, one left the job's
/// session. Both die with the job's init all the same, because the kernel ends a PID
/// namespace when its init exits. They are named by pid and start time, taken
/// while the job runs, so a later process reusing a pid is not taken for a survivor.
#[tokio::test]
async fn stopping_an_isolated_job_ends_its_whole_pid_namespace() {
    let w = worker(PER_USER);
    let job = w
        .start(sh(
            "(trap '' TERM; exec sleep 1000) & setsid sleep 1000 & wait",
        ))
        .await
        .unwrap();
    let leader = job.info().pid;
    let leader_ticks = live_start_ticks(leader).expect("the job's leader runs");
    // Both children have exec'd sleep, one ignoring SIGTERM, one in a session of its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    let children = loop {
        let children = descendants(leader);
        let sleeping = children.iter().filter(|p| p.comm == "sleep").count();
        if sleeping == 2
            && children.iter().any(|p| ignores_sigterm(p.pid))
            && children.iter().any(|p| p.session != leader)
        {
            break children;
        }
        assert!(Instant::now() < deadline, "the job's children never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut members: Vec<(i32, u64)> = children.iter().map(|p| (p.pid, p.start_ticks)).collect();
    members.push((leader, leader_ticks));

    let info = within(
        Duration::from_secs(10),
        "the stop",
        job.stop(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let survivors: Vec<i32> = members
            .iter()
            .filter(|&&(pid, ticks)| live_start_ticks(pid) == Some(ticks))
            .map(|&(pid, _)| pid)
            .collect();
        if survivors.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for &pid in &survivors {
                // SAFETY: kill has no memory-safety preconditions; each pid was checked
                // against its start time just above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("processes of the job survived its stop: {survivors:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The program (sh, in `wait`) dies of the SIGTERM; the init then exits, and the
    // kernel takes what is left of the namespace: the job's end is the program's own.
    assert_eq!(info.state, JobState::Stopped { signal: 15 });
    assert!(info.stop_requested);
}

#[tokio::test]
async fn a_program_with_a_sigterm_handler_stops_gracefully() {
    let w = worker(PER_USER);
    let job = w
        .start(sh(
            "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    let mut reader = job.logs(true).unwrap();
    within(Duration::from_secs(10), "ready", reader.next_batch())
        .await
        .unwrap()
        .expect("the job ended before it was ready");
    let started = Instant::now();
    let info = within(
        Duration::from_secs(10),
        "the stop",
        job.stop(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A worker without cgroups that refuses jobs nothing holds, as jobd's is.
fn cgroupless(default: Isolation) -> TestWorker {
    TestWorker::with(|config| {
        config.cgroups = worker::CgroupMode::Off;
        config.isolation = default;
        config.job_uids = PER_USER;
        config.allow_unheld_jobs = false;
    })
}

/// Without cgroups only a PID namespace holds a job's processes (a `setsid` leaves its
/// process group): a job without one is refused before anything of it exists, whether
/// it asks for less or the server's default has none; a job with one runs.
#[tokio::test]
async fn without_cgroups_a_job_without_a_pid_namespace_is_refused() {
    let w = cgroupless(Isolation::ALL);
    for asked in [
        Isolation::NONE,
        Isolation {
            pid: false,
            ..Isolation::ALL
        },
    ] {
        let err = w
            .start(sh("true").with_isolation(asked))
            .await
            .expect_err("a job that nothing holds was started");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "without cgroups a job needs a PID namespace to hold its processes"
        );
    }
    assert!(w.list(None).is_empty());
    assert_eq!(fs::read_dir(w.path().join("jobs")).unwrap().count(), 0);
    let held = w
        .start(sh("true").with_isolation(Isolation {
            pid: true,
            ..Isolation::NONE
        }))
        .await
        .unwrap();
    let ended = within(Duration::from_secs(10), "the job's end", held.wait()).await;
    assert_eq!(ended.state, JobState::Finished { exit_code: 0 });

    let w = cgroupless(Isolation::NONE);
    let err = w.start(sh("true")).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert!(w.list(None).is_empty());
}

/// The escape that a job without cgroups or PID namespace gets away with today does not
/// survive a job held by its PID namespace: a `setsid` daemon dies when the job's main
/// process exits by itself.
#[tokio::test]
async fn without_cgroups_a_setsid_daemon_dies_when_its_job_ends() {
    let w = cgroupless(Isolation::ALL);
    let go = w.scratch().join("go");
    let job = w
        .start(sh(&format!(
            "setsid sleep 3009 & while [ ! -e {} ]; do sleep 0.05; done",
            go.display()
        )))
        .await
        .unwrap();
    let leader = job.info().pid;
    // The daemon has exec'd sleep in a session of its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    let daemon = loop {
        if let Some(p) = descendants(leader)
            .into_iter()
            .find(|p| p.comm == "sleep" && p.session != leader)
        {
            break (p.pid, p.start_ticks);
        }
        assert!(Instant::now() < deadline, "the job's daemon never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    fs::write(&go, "").unwrap();
    let info = within(Duration::from_secs(10), "the job's end", job.wait()).await;
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_start_ticks(daemon.0) == Some(daemon.1) {
        if Instant::now() > deadline {
            // SAFETY: kill has no memory-safety preconditions; the pid was checked against
            // its start time just above.
            unsafe { libc::kill(daemon.0, libc::SIGKILL) };
            panic!("the job's setsid daemon {} outlived it", daemon.0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
