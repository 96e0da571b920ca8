//! What a job asks for besides its command: its environment, its working directory and
//! its time limit, each as the job sees it, and each bad value refused before any job
//! exists.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use worker::{Error, Isolation, JobSpec, JobState, UidRange};

mod support;
use support::{run, sh, within, TestWorker};

fn worker(tune: impl FnOnce(&mut worker::Config)) -> TestWorker {
    TestWorker::with(|config| {
        config.isolation = Isolation::ALL;
        config.job_uids = Some(UidRange::DYNAMIC_USER);
        tune(config);
    })
}

/// How many job folders the state dir holds: none is left by a refused start.
fn folders(w: &TestWorker) -> usize {
    fs::read_dir(w.path().join("jobs")).unwrap().count()
}

#[tokio::test]
async fn a_job_sees_its_identity_the_servers_base_and_its_own_variables() {
    let w = worker(|config| {
        config.env.push("LANG=C.UTF-8".into());
        config.env.push("SITE=base".into());
    });
    let mut spec = sh("env | sort");
    spec.env = vec!["SITE=mine".into(), "FOO=a b=c".into(), "EMPTY=".into()];
    let (state, out, err) = run(&w, spec).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    let mut expected = vec![
        "EMPTY=",
        "FOO=a b=c",
        "HOME=/",
        "LANG=C.UTF-8",
        "LOGNAME=alice",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD=/",
        "SITE=mine",
        "USER=alice",
    ];
    expected.sort();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    // Status tells the whole environment the job got.
    let job = w.start(sh("true")).await.unwrap();
    let env = job.info().env;
    assert!(env.contains(&"USER=alice".to_string()), "{env:?}");
    assert!(env.contains(&"SITE=base".to_string()), "{env:?}");
}

#[tokio::test]
async fn the_programs_search_path_is_the_jobs_own() {
    let w = worker(|_| {});
    let bin = w.scratch().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("hello-job"), "#!/bin/sh\necho found me\n").unwrap();
    fs::set_permissions(bin.join("hello-job"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = JobSpec::new("alice", vec!["hello-job".into()]);
    assert!(matches!(
        w.start(spec.clone()).await,
        Err(Error::Exec { .. })
    ));
    spec.env = vec![format!("PATH={}:/usr/bin:/bin", bin.display())];
    let (state, out, err) = run(&w, spec).await;
    assert_eq!(
        (state, out.as_str()),
        (JobState::Finished { exit_code: 0 }, "found me\n"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_variables_and_oversized_environments_are_refused() {
    let w = worker(|_| {});
    for (env, says) in [
        (vec!["1X=y".to_string()], "is not valid"),
        (vec!["A-B=y".into()], "is not valid"),
        (vec!["NOVALUE".into()], "KEY=VALUE"),
        (vec!["X=a\0b".into()], "NUL byte"),
        (
            vec![format!("BIG={}", "x".repeat(140 * 1024))],
            "at most 131072",
        ),
        (
            (0..2000)
                .map(|i| format!("V{i}={}", "y".repeat(64)))
                .collect(),
            "at most 131072",
        ),
    ] {
        let mut spec = sh("true");
        spec.env = env;
        match w.start(spec).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected InvalidArgument ({says}), got {other:?}"),
        }
    }
    assert_eq!(folders(&w), 0);
}

#[tokio::test]
async fn a_job_runs_in_its_working_directory_as_its_own_user() {
    let w = worker(|_| {});
    let dir = w.scratch().join("app");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("run"), "#!/bin/sh\necho ran in $(pwd)\n").unwrap();
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    // A relative program is the working directory's.
    let mut spec = JobSpec::new("alice", vec!["./run".into()]);
    spec.working_dir = Some(dir.display().to_string());
    let (state, out, err) = run(&w, spec).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    assert_eq!(out, format!("ran in {}\n", dir.display()));
    // The private /tmp of a job with a mount namespace is there to enter.
    let mut spec = sh("pwd");
    spec.working_dir = Some("/tmp".into());
    assert_eq!(run(&w, spec).await.1, "/tmp\n");
}

#[tokio::test]
async fn a_working_directory_that_is_missing_or_closed_to_the_user_fails_the_start() {
    let w = worker(|_| {});
    let closed = w.scratch().join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    let file = w.scratch().join("file");
    fs::write(&file, "").unwrap();
    for (dir, says) in [
        ("/no/such/dir".to_string(), "No such file or directory"),
        (closed.display().to_string(), "Permission denied"),
        (file.display().to_string(), "Not a directory"),
        ("relative/dir".into(), "not an absolute path"),
    ] {
        let mut spec = sh("echo ran");
        spec.working_dir = Some(dir.clone());
        match w.start(spec).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{dir}: {m}"),
            other => panic!("{dir}: expected InvalidArgument ({says}), got {other:?}"),
        }
    }
    assert_eq!(folders(&w), 0, "a refused start left a job behind");
    assert!(w.list(None).is_empty());
}

#[tokio::test]
async fn a_job_past_its_time_limit_is_stopped_and_says_so() {
    let w = worker(|config| config.default_grace = Duration::from_secs(5));
    let mut spec = sh("echo started; exec sleep 60");
    spec.timeout = Some(Duration::from_millis(500));
    let began = Instant::now();
    let job = w.start(spec).await.unwrap();
    let info = within(Duration::from_secs(20), "the time limit", job.wait()).await;
    let took = began.elapsed();
    assert_eq!(info.state, JobState::Stopped { signal: 15 });
    assert!(info.timed_out && info.stop_requested, "{info:?}");
    assert_eq!(info.timeout, Some(Duration::from_millis(500)));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_job_that_ends_within_its_limit_is_not_timed_out() {
    let w = worker(|_| {});
    let mut spec = sh("sleep 0.2; exit 4");
    spec.timeout = Some(Duration::from_secs(30));
    let job = w.start(spec).await.unwrap();
    let info = within(Duration::from_secs(20), "the job", job.wait()).await;
    assert_eq!(info.state, JobState::Finished { exit_code: 4 });
    assert!(!info.timed_out && !info.stop_requested);
}

#[tokio::test]
async fn the_servers_default_and_maximum_time_limits_apply() {
    let w = worker(|config| {
        config.default_timeout = Some(Duration::from_millis(300));
        config.max_timeout = Some(Duration::from_secs(60));
    });
    // The default applies to a job that asks for nothing.
    let job = w.start(sh("exec sleep 60")).await.unwrap();
    let info = within(Duration::from_secs(20), "the default limit", job.wait()).await;
    assert!(info.timed_out, "{info:?}");
    // More than the maximum is the caller's mistake.
    let mut spec = sh("true");
    spec.timeout = Some(Duration::from_secs(61));
    match w.start(spec).await {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains("longer than this server allows (60s)"), "{m}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // With a maximum and no default, every job gets the maximum.
    let capped = worker(|config| config.max_timeout = Some(Duration::from_secs(60)));
    let job = capped.start(sh("true")).await.unwrap();
    assert_eq!(job.info().timeout, Some(Duration::from_secs(60)));
}
