//! The init that is PID 1 of every job with a PID namespace: stops end at once for
//! programs that never handled a signal, a job's end is its program's own, orphans are
//! reaped, and signals reach the program, whether jobd or the host sends them. Runs as
//! root on any host (PID namespaces need CAP_SYS_ADMIN); no cgroups needed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use worker::{Error, Isolation, Job, JobSpec, JobState, Recipients, UidRange};

mod support;
use support::{collect, program_pid, run, sh, within, TestWorker};

const T: Duration = Duration::from_secs(20);

/// Jobs in every namespace, each owner under a uid of their own, as jobd runs them.
fn worker() -> TestWorker {
    TestWorker::with(|config| {
        config.isolation = Isolation::ALL;
        config.job_uids = Some(UidRange::DYNAMIC_USER);
    })
}

/// Waits until the job has written `text`, so that what it set up (a trap) is in place.
async fn wait_for_output(job: &Job, text: &str) {
    let mut reader = job.logs(true).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(text) {
        let batch = within(T, text, reader.next_batch())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the job ended before it wrote {text:?}"));
        batch.iter().for_each(|r| seen.extend_from_slice(&r.data));
    }
}

/// Stops the job with a long grace and returns its end and how long the stop took.
async fn stop(job: &Arc<Job>) -> (JobState, Duration) {
    let began = Instant::now();
    let info = within(T, "the stop", job.stop(Duration::from_secs(10)))
        .await
        .unwrap();
    (info.state, began.elapsed())
}

#[tokio::test]
async fn programs_that_never_handle_sigterm_stop_at_once_with_sigterm() {
    let w = worker();
    let python = "import time\nprint('ready', flush=True)\ntime.sleep(60)";
    for argv in [
        vec!["sh", "-c", "echo ready; exec sleep 60"],
        vec!["python3", "-c", python],
    ] {
        let job = w
            .start(JobSpec::new(
                "alice",
                argv.iter().map(|a| a.to_string()).collect(),
            ))
            .await
            .unwrap();
        wait_for_output(&job, "ready").await;
        let (state, took) = stop(&job).await;
        assert_eq!(state, JobState::Stopped { signal: 15 }, "{argv:?}");
        assert!(
            took < Duration::from_secs(5),
            "{argv:?}: the stop took {took:?}"
        );
    }
}

#[tokio::test]
async fn a_program_that_traps_sigterm_gets_its_grace_and_the_signal_once() {
    let w = worker();
    let job = w
        .start(sh(
            "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    wait_for_output(&job, "ready").await;
    let began = Instant::now();
    let info = within(T, "the stop", job.stop(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "the grace was cut short"
    );
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    let out = collect(job.logs(false).unwrap()).await.stdout();
    // One SIGTERM: the init does not pass on again what jobd sent every process.
    assert_eq!(out.matches("got TERM").count(), 1, "{out}");
}

#[tokio::test]
async fn a_jobs_end_is_its_programs_own_through_the_init() {
    let w = worker();
    let kill_self = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)";
    for (argv, expected) in [
        (
            vec!["sh", "-c", "exit 3"],
            JobState::Finished { exit_code: 3 },
        ),
        // A code of 128+N is a code, not a signal.
        (
            vec!["sh", "-c", "exit 143"],
            JobState::Finished { exit_code: 143 },
        ),
        (vec!["true"], JobState::Finished { exit_code: 0 }),
        (
            vec!["sh", "-c", "kill -TERM $$; sleep 5"],
            JobState::Stopped { signal: 15 },
        ),
        (
            vec!["sh", "-c", "kill -SEGV $$; sleep 5"],
            JobState::Stopped { signal: 11 },
        ),
        (
            vec!["python3", "-c", kill_self],
            JobState::Stopped { signal: 9 },
        ),
    ] {
        let spec = JobSpec::new("alice", argv.iter().map(|a| a.to_string()).collect());
        let (state, _, err) = run(&w, spec).await;
        assert_eq!(state, expected, "{argv:?}: {err}");
    }
}

#[tokio::test]
async fn the_init_reaps_every_orphan() {
    let w = worker();
    // 100 grandchildren orphaned at once, each exiting soon after; then the zombies left.
    let script = "for i in $(seq 100); do (sleep 0.2 &); done; sleep 2; \
                  echo orphans=$(grep -l '^PPid:[[:space:]]*1$' /proc/[0-9]*/status | wc -l); \
                  echo zombies=$(grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status | wc -l)";
    let (state, out, err) = run(&w, sh(script)).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    // Only the program itself is left a child of the init.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["orphans=1", "zombies=0"],
        "{err}"
    );
}

#[tokio::test]
async fn a_signal_from_the_host_to_the_reported_pid_reaches_the_program() {
    let w = worker();
    let job = w
        .start(sh(
            "trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    wait_for_output(&job, "ready").await;
    let pid = job.info().pid;
    assert_ne!(
        program_pid(&job.info()),
        pid,
        "the job has no init to pass the signal on"
    );
    // SAFETY: kill has no memory-safety preconditions; `pid` is the running job's leader.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for_output(&job, "got USR1").await;
    assert!(job.is_running());
    stop(&job).await;
}

#[tokio::test]
async fn signals_through_the_api_go_to_the_program_or_to_every_process() {
    let w = worker();
    // The program and its child each log the signals they get.
    let job = w
        .start(sh("trap 'echo got HUP' HUP; trap 'echo got USR2' USR2; \
                   sh -c 'trap \"echo child got HUP\" HUP; trap \"echo child got USR2\" USR2; \
                          while :; do sleep 0.1; done' & \
                   echo ready; while :; do sleep 0.1; done"))
        .await
        .unwrap();
    wait_for_output(&job, "ready").await;
    job.signal(libc::SIGHUP, Recipients::Program).unwrap();
    wait_for_output(&job, "got HUP").await;
    job.signal(libc::SIGUSR2, Recipients::All).unwrap();
    wait_for_output(&job, "child got USR2").await;
    wait_for_output(&job, "\ngot USR2").await;
    // SIGKILL and SIGSTOP cannot be caught by the init, yet still reach the program.
    job.signal(libc::SIGSTOP, Recipients::Program).unwrap();
    job.signal(libc::SIGKILL, Recipients::Program).unwrap();
    let info = within(T, "the job's end", job.wait()).await;
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    let out = collect(job.logs(false).unwrap()).await.stdout();
    assert_eq!(out.matches("got HUP").count(), 1, "{out}");
    assert!(
        !out.contains("child got HUP"),
        "a signal for the program reached its child: {out}"
    );
    // Ended: nothing to signal; an impossible signal: the caller's mistake.
    assert!(matches!(
        job.signal(libc::SIGHUP, Recipients::Program),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        job.signal(65, Recipients::Program),
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn without_a_pid_namespace_signals_go_straight_to_the_program() {
    let w = worker();
    let spec = sh("trap 'echo got HUP' HUP; echo ready; while :; do sleep 0.1; done")
        .with_isolation(Isolation::NONE);
    let job = w.start(spec).await.unwrap();
    wait_for_output(&job, "ready").await;
    assert_eq!(program_pid(&job.info()), job.info().pid);
    job.signal(libc::SIGHUP, Recipients::Program).unwrap();
    wait_for_output(&job, "got HUP").await;
    let (state, _) = stop(&job).await;
    assert_eq!(state, JobState::Stopped { signal: 15 });
}

#[tokio::test]
async fn a_job_cannot_trace_its_init() {
    let w = worker();
    // PTRACE_ATTACH (16) to PID 1, by the job's own user: refused, so no job can stop
    // its init before it reports or make it report an end that did not happen.
    let script = r#"my $r = syscall(101, 16, 1, 0, 0); print $r == -1 ? "refused: $!\n" : "attached\n";
                    open(my $m, "<", "/proc/1/mem") ? print "mem opened\n" : print "mem: $!\n";"#;
    let spec = JobSpec::new("alice", vec!["perl".into(), "-e".into(), script.into()]);
    let (state, out, err) = run(&w, spec).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 }, "{err}");
    assert_eq!(
        out, "refused: Operation not permitted\nmem: Permission denied\n",
        "{err}"
    );
}
