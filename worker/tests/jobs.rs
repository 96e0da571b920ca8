//! The worker with real processes: lifecycle, signals, process trees and output capture.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker::{Error, Job, JobSpec, JobState, Stream, Worker};

mod support;
use support::{collect, sh, within, TestWorker};

fn spec(argv: &[&str]) -> JobSpec {
    JobSpec::new("alice", argv.iter().map(|s| s.to_string()).collect())
}

async fn run_to_end(w: &Worker, spec: JobSpec) -> (Arc<Job>, JobState) {
    let job = w.start(spec).await.unwrap();
    let state = tokio::time::timeout(Duration::from_secs(30), job.wait())
        .await
        .expect("job did not end")
        .state;
    (job, state)
}

/// Whether a process is gone (or a zombie waiting for its new parent to reap it).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A job seen ended has all of its output readable: the end is shown only once the pipes
/// are drained, so a non-following read right after `wait()` (or a Status saying
/// "finished") misses nothing, even when the job exits with its pipe full.
#[tokio::test]
async fn a_job_is_shown_ended_only_once_all_its_output_is_stored() {
    let w = TestWorker::new();
    for _ in 0..10 {
        let (job, state) = run_to_end(&w, spec(&["head", "-c", "3000000", "/dev/zero"])).await;
        assert_eq!(state, JobState::Finished { exit_code: 0 });
        let (out, _) = collect(job.logs(false).unwrap()).await.streams();
        assert_eq!(out.len(), 3_000_000);
    }
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let w = TestWorker::new();
    for code in [0, 1, 42, 255] {
        let (_, state) = run_to_end(&w, sh(&format!("exit {code}"))).await;
        assert_eq!(state, JobState::Finished { exit_code: code });
    }
    let (job, _) = run_to_end(&w, spec(&["true"])).await;
    assert_eq!(job.info().state.to_string(), "finished (exit code: 0)");
    assert!(job.info().ended_at.is_some());
}

#[tokio::test]
async fn death_by_signal_is_stopped() {
    let w = TestWorker::new();
    let (job, state) = run_to_end(&w, sh("kill -SEGV $$")).await;
    assert_eq!(state, JobState::Stopped { signal: 11 });
    assert_eq!(job.info().state.to_string(), "stopped (signal: 11)");
    assert!(!job.info().stop_requested);
}

#[tokio::test]
async fn a_job_killed_from_outside_is_seen_at_once() {
    let w = TestWorker::new();
    let job = w.start(spec(&["sleep", "60"])).await.unwrap();
    assert_eq!(job.info().state, JobState::Running);
    // SAFETY: signalling the process this test started, by pid.
    assert_eq!(unsafe { libc::kill(job.info().pid, libc::SIGKILL) }, 0);
    let info = tokio::time::timeout(Duration::from_secs(5), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state.to_string(), "stopped (signal: 9)");
    assert!(!info.stop_requested);
}

#[tokio::test]
async fn stop_terminates_and_stopping_again_is_fine() {
    let w = TestWorker::new();
    let job = w.start(spec(&["sleep", "60"])).await.unwrap();
    let info = within(
        Duration::from_secs(20),
        "the stop",
        job.stop(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 15 });
    assert!(info.stop_requested);
    let again = within(
        Duration::from_secs(20),
        "the stop",
        job.stop(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(again.state, JobState::Stopped { signal: 15 });
}

#[tokio::test]
async fn a_job_that_traps_sigterm_is_killed_after_the_grace_period() {
    let w = TestWorker::new();
    let job = w
        .start(sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"))
        .await
        .unwrap();
    wait_for_output(&job, b"ready").await;
    let t0 = Instant::now();
    let info = within(
        Duration::from_secs(20),
        "the stop",
        job.stop(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}

/// The stop sequence belongs to the job, not to the request: a caller that gives up
/// right after the SIGTERM (a client deadline, Ctrl-C) still leaves a job that ends by
/// SIGKILL when the grace period is over.
#[tokio::test]
async fn a_stop_whose_caller_gives_up_still_kills_after_the_grace_period() {
    let w = TestWorker::new();
    let job = w
        .start(sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"))
        .await
        .unwrap();
    wait_for_output(&job, b"ready").await;
    let t0 = Instant::now();
    let abandoned =
        tokio::time::timeout(Duration::from_millis(100), job.stop(Duration::from_secs(1))).await;
    assert!(abandoned.is_err(), "the stop ended before its grace period");
    assert!(job.info().stop_requested);
    let info = within(Duration::from_secs(5), "the job's end", job.wait()).await;
    assert_eq!(info.state.to_string(), "stopped (signal: 9)");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// Concurrent stops share one sequence: one SIGTERM (the job counts them), and the
/// shorter grace of the later stop brings the SIGKILL forward for both callers.
#[tokio::test]
async fn concurrent_stops_share_one_sequence_and_the_shorter_grace_wins() {
    let w = TestWorker::new();
    let job = w
        .start(sh("n=0; trap 'n=$((n+1)); echo term $n' TERM; \
                   echo ready; while :; do sleep 0.05; done"))
        .await
        .unwrap();
    wait_for_output(&job, b"ready").await;
    let t0 = Instant::now();
    let first = tokio::spawn({
        let job = Arc::clone(&job);
        async move { job.stop(Duration::from_secs(60)).await }
    });
    // The first SIGTERM handled, so that a second one could not merge with it.
    wait_for_output(&job, b"term 1").await;
    let second = within(
        Duration::from_secs(10),
        "the second stop",
        job.stop(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert_eq!(second.state.to_string(), "stopped (signal: 9)");
    let first = within(Duration::from_secs(5), "the first stop", first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state, second.state);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (out, _) = collect(job.logs(false).unwrap()).await.streams();
    assert_eq!(String::from_utf8(out).unwrap(), "ready\nterm 1\n");
}

async fn wait_for_output(job: &Job, needle: &[u8]) {
    let mut reader = job.logs(true).unwrap();
    let mut seen = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(10), reader.next_batch())
        .await
        .expect("no output in time")
        .unwrap()
    {
        for r in batch {
            seen.extend_from_slice(&r.data);
        }
        if seen.windows(needle.len()).any(|w| w == needle) {
            return;
        }
    }
    panic!("output ended without {:?}", String::from_utf8_lossy(needle));
}

#[tokio::test]
async fn stop_kills_background_children_of_the_process_group() {
    let w = TestWorker::new();
    let job = w
        .start(sh("sleep 1000 & echo $!; sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    // Wait until both children have printed their pids.
    let mut reader = job.logs(true).unwrap();
    let mut text = String::new();
    while text.lines().count() < 2 {
        let batch = within(
            Duration::from_secs(10),
            "the children's pids",
            reader.next_batch(),
        )
        .await
        .unwrap()
        .expect("the job ended before printing both pids");
        for r in batch {
            text.push_str(std::str::from_utf8(&r.data).unwrap());
        }
    }
    let pids: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.iter().all(|&p| !gone(p)));
    within(
        Duration::from_secs(20),
        "the stop",
        job.stop(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    // The children die with SIGTERM at once; allow a moment for the kernel to finish.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|&p| gone(p)) {
        assert!(Instant::now() < deadline, "children survived: {pids:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn children_left_behind_die_when_the_main_process_exits() {
    let w = TestWorker::new();
    let (job, state) = run_to_end(&w, sh("sleep 1000 & echo $!")).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 });
    let (out, _) = collect(job.logs(false).unwrap()).await.streams();
    let pid: i32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        assert!(Instant::now() < deadline, "orphan {pid} survived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_and_labelled() {
    let w = TestWorker::new();
    let (job, _) = run_to_end(&w, sh("echo to-out; echo to-err >&2; echo more-out")).await;
    let (out, err) = collect(job.logs(true).unwrap()).await.streams();
    assert_eq!(out, b"to-out\nmore-out\n");
    assert_eq!(err, b"to-err\n");
}

#[tokio::test]
async fn binary_output_and_a_partial_last_line_are_stored_exactly() {
    let w = TestWorker::new();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let input = w.scratch().join("bytes");
    let mut content = all_bytes.repeat(100);
    content.extend_from_slice(b"no newline at the end");
    std::fs::write(&input, &content).unwrap();
    let (job, _) = run_to_end(&w, spec(&["cat", input.to_str().unwrap()])).await;
    let (out, err) = collect(job.logs(false).unwrap()).await.streams();
    assert_eq!(out, content);
    assert!(err.is_empty());
}

#[tokio::test]
async fn a_50_mb_line_is_stored_exactly() {
    let w = TestWorker::new();
    let (job, state) = run_to_end(&w, sh("head -c 52428800 /dev/zero | tr '\\0' x; echo")).await;
    assert_eq!(state, JobState::Finished { exit_code: 0 });
    let (out, _) = collect(job.logs(false).unwrap()).await.streams();
    assert_eq!(out.len(), 50 * 1024 * 1024 + 1);
    assert!(out[..out.len() - 1].iter().all(|&b| b == b'x'));
    assert_eq!(out.last(), Some(&b'\n'));
}

/// Readers are independent: a reader that stops reading holds back neither the job nor
/// the other readers. Here the slow one reads a few MiB, then waits (holding its last
/// batch, as a stuck client's stream would) until the job has ended and both fast readers
/// have read everything; only then does it go on, and it too gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_readers_one_slow_replay_200_mb_exactly() {
    let w = TestWorker::new();
    // Pseudo-random content, so misplaced or repeated chunks cannot compare equal.
    let mut content = vec![0u8; 200 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in content.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let input = w.scratch().join("input");
    std::fs::write(&input, &content).unwrap();
    let content = Arc::new(content);
    // How far the fast readers have read: the slow one starts once they are well ahead,
    // so its one batch is as large as a batch may be, and it is far behind from then on.
    let lead = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const HEAD_START: usize = 32 * 1024 * 1024;

    let job = w
        .start(spec(&["cat", input.to_str().unwrap()]))
        .await
        .unwrap();
    let (stuck_tx, stuck_rx) = tokio::sync::oneshot::channel::<usize>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let mut slow_signals = Some((stuck_tx, go_rx));
    let mut readers = Vec::new();
    for slow in [false, false, true] {
        let reader = job.logs(true).unwrap();
        let expected = Arc::clone(&content);
        let lead = Arc::clone(&lead);
        let mut signals = if slow { slow_signals.take() } else { None };
        readers.push(tokio::spawn(async move {
            let mut reader = reader;
            let mut offset = 0usize;
            if slow {
                let deadline = Instant::now() + Duration::from_secs(20);
                while lead.load(Ordering::SeqCst) < HEAD_START {
                    assert!(
                        Instant::now() < deadline,
                        "the fast readers never got ahead"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            while let Some(batch) = reader.next_batch().await.unwrap() {
                for r in &batch {
                    assert_eq!(r.stream, Stream::Stdout);
                    assert_eq!(&expected[offset..offset + r.data.len()], &r.data[..]);
                    offset += r.data.len();
                }
                if !slow {
                    lead.fetch_max(offset, Ordering::SeqCst);
                }
                if let Some((stuck, go)) = signals.take() {
                    stuck.send(offset).unwrap();
                    go.await.unwrap();
                }
                drop(batch);
            }
            offset
        }));
    }
    let slow = readers.pop().unwrap();
    let slow_at = within(
        Duration::from_secs(20),
        "the slow reader's one batch",
        stuck_rx,
    )
    .await
    .unwrap();
    let info = within(
        Duration::from_secs(20),
        "the job's end while a reader is stuck",
        job.wait(),
    )
    .await;
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    for r in readers {
        let got = within(
            Duration::from_secs(20),
            "a fast reader's end while a reader is stuck",
            r,
        )
        .await
        .unwrap();
        assert_eq!(got, content.len());
    }
    // Still stuck where it stopped: far behind everything the others have read.
    assert!(slow_at < content.len() / 4, "{slow_at}");
    assert!(!slow.is_finished());
    go_tx.send(()).unwrap();
    let got = within(Duration::from_secs(20), "the slow reader's end", slow)
        .await
        .unwrap();
    assert_eq!(got, content.len());
}

#[tokio::test]
async fn a_reader_that_joins_after_the_end_gets_everything() {
    let w = TestWorker::new();
    let (job, _) = run_to_end(&w, sh("for i in 1 2 3; do echo line $i; done")).await;
    let (out, _) = collect(job.logs(true).unwrap()).await.streams();
    assert_eq!(out, b"line 1\nline 2\nline 3\n");
}

/// The follower sees the first line while the job is still running: the job prints it,
/// then waits for a file that the test creates only after the follower delivered that
/// line. Output held back until the end would never let the job end.
#[tokio::test]
async fn a_follower_sees_live_output_and_ends_with_the_job() {
    let w = TestWorker::new();
    let go = w.scratch().join("go");
    let job = w
        .start(sh(&format!(
            "echo first; while [ ! -e {} ]; do sleep 0.01; done; echo second",
            go.display()
        )))
        .await
        .unwrap();
    let mut follower = job.logs(true).unwrap();
    let mut out = Vec::new();
    while out != b"first\n" {
        let batch = within(
            Duration::from_secs(10),
            "the first line while the job runs",
            follower.next_batch(),
        )
        .await
        .unwrap()
        .expect("the follower ended before the job did");
        for r in batch {
            assert_eq!(r.stream, Stream::Stdout);
            out.extend_from_slice(&r.data);
        }
        assert!(b"first\n".starts_with(&out), "{out:?}");
    }
    assert_eq!(job.info().state, JobState::Running);
    // A snapshot taken now holds what was written so far, and no more.
    let (snap_out, _) = within(
        Duration::from_secs(10),
        "a snapshot read",
        collect(job.logs(false).unwrap()),
    )
    .await
    .streams();
    assert_eq!(snap_out, b"first\n");
    std::fs::write(&go, b"").unwrap();
    let (rest, _) = within(
        Duration::from_secs(10),
        "the follower's end with the job",
        collect(follower),
    )
    .await
    .streams();
    assert_eq!(rest, b"second\n");
    assert_eq!(job.info().state, JobState::Finished { exit_code: 0 });
}

#[tokio::test]
async fn failed_starts_are_clear_and_leave_nothing_behind() {
    let w = TestWorker::new();
    let not_exec = w.scratch().join("script");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            spec(&["no-such-program-xyz"]),
            "cannot start no-such-program-xyz: command not found",
        ),
        (
            spec(&["/no/such/file"]),
            "cannot start /no/such/file: no such file or directory",
        ),
        (spec(&[not_exec.to_str().unwrap()]), "permission denied"),
        (spec(&["/tmp"]), "is a directory"),
        (spec(&[]), "the command is empty"),
        (spec(&["echo", "a\0b"]), "NUL byte"),
    ];
    for (spec, message) in cases {
        let err = w.start(spec).await.unwrap_err();
        assert!(
            matches!(err, Error::Exec { .. } | Error::InvalidArgument(_)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(message),
            "{err} does not say {message}"
        );
    }
    assert!(w.list(None).is_empty());
    let left = std::fs::read_dir(w.path().join("jobs")).unwrap().count();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn exec_failure_in_the_child_is_reported() {
    let w = TestWorker::new();
    // Executable bits but no valid format or interpreter: only execve can tell.
    let bad = w.scratch().join("bad-interpreter");
    std::fs::write(&bad, "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = w.start(spec(&[bad.to_str().unwrap()])).await.unwrap_err();
    assert!(matches!(err, Error::Exec { .. }), "{err:?}");
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
    assert!(w.list(None).is_empty());
}

#[tokio::test]
async fn jobs_list_by_owner() {
    let w = TestWorker::new();
    let a = w
        .start(JobSpec::new("alice", vec!["true".into()]))
        .await
        .unwrap();
    let b = w
        .start(JobSpec::new("bob", vec!["true".into()]))
        .await
        .unwrap();
    assert_eq!(w.list(None).len(), 2);
    let alice: Vec<_> = w.list(Some("alice")).into_iter().map(|i| i.id).collect();
    assert_eq!(alice, vec![a.id()]);
    assert_eq!(w.list(Some("bob"))[0].id, b.id());
    assert!(w.list(Some("carol")).is_empty());
    assert!(matches!(
        w.job(&"00000000-0000-4000-8000-000000000000".parse().unwrap()),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn the_job_runs_with_a_clean_environment() {
    let w = TestWorker::new();
    let (job, _) = run_to_end(
        &w,
        sh("env; pwd; cat; grep -E 'SigBlk|SigIgn' /proc/self/status; echo done"),
    )
    .await;
    let (out, _) = collect(job.logs(false).unwrap()).await.streams();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&format!("PATH={}", worker_path())), "{text}");
    assert!(!text.contains("CARGO"), "server environment leaked: {text}");
    assert!(text.contains("\n/\n"), "cwd is not /: {text}");
    assert!(text.ends_with("done\n"), "stdin is not /dev/null: {text}");
    // No signal blocked or ignored: the server's own dispositions do not leak into jobs.
    assert!(text.contains("SigBlk:\t0000000000000000"), "{text}");
    assert!(text.contains("SigIgn:\t0000000000000000"), "{text}");
}

fn worker_path() -> &'static str {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

#[tokio::test]
async fn limits_are_refused_without_cgroups() {
    // Off, not `auto`: on a host with a usable hierarchy `auto` would give cgroups.
    let w = TestWorker::with(|c| c.cgroups = worker::CgroupMode::Off);
    let limited = spec(&["true"]).with_limits(worker::Limits {
        pids: Some(8),
        ..Default::default()
    });
    let err = w.start(limited).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
}

#[tokio::test]
async fn starts_past_the_running_limit_are_refused_until_a_job_ends() {
    let w = TestWorker::with(|c| c.max_running_jobs = 1);
    let first = w.start(spec(&["sleep", "60"])).await.unwrap();
    let err = w.start(spec(&["true"])).await.unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("already runs 1 jobs"), "{err}");
    within(
        Duration::from_secs(20),
        "the stop",
        first.stop(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    // The slot is freed once the job has been reaped and its output closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match w.start(spec(&["true"])).await {
            Ok(_) => break,
            Err(Error::ResourceExhausted(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}
