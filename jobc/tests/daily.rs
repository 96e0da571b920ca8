//! End to end, the commands of daily work: `run` and `wait` with the job's exit code,
//! logs from a tail, a time or across a restart of jobd, and ids typed short. Real jobd and
//! jobc binaries on loopback.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{failure, output, Background, Server, JOBC_TIMEOUT};

/// `jobc run ARGS` as alice: (exit code, stdout, stderr).
fn run(s: &Server, args: &[&str]) -> (i32, String, String) {
    let out = output(s.jobc_cmd("alice").arg("run").args(args), JOBC_TIMEOUT);
    (
        out.status.code().expect("jobc ended by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The id of alice's only running job.
fn running_job(s: &Server) -> String {
    let mut id = String::new();
    testkit::wait_for("the job of jobc run", Duration::from_secs(10), || {
        let list: serde_json::Value =
            serde_json::from_str(&s.ok("alice", &["list", "-o", "json", "--state", "running"]))
                .unwrap();
        match list.as_array().unwrap().as_slice() {
            [job] => {
                id = job["id"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    id
}

#[test]
fn run_exits_with_the_jobs_exit_code() {
    let s = Server::start();
    assert_eq!(run(&s, &["true"]), (0, String::new(), String::new()));
    assert_eq!(
        run(&s, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
        (3, "out\n".into(), "err\n".into())
    );
    // A signal is 128+N, as shells say it.
    assert_eq!(run(&s, &["sh", "-c", "kill -TERM $$"]).0, 143);
    assert_eq!(run(&s, &["sh", "-c", "kill -KILL $$"]).0, 137);
    // jobc's own failures are not the job's: 125, as docker run.
    let (code, out, err) = run(&s, &["no-such-program"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            125,
            "",
            "jobc: cannot start no-such-program: command not found\n"
        )
    );
    let out = output(
        s.jobc_cmd("alice")
            .env("JOBC_SERVER", "127.0.0.1:1")
            .args(["run", "true"]),
        JOBC_TIMEOUT,
    );
    assert_eq!(failure(&out).0, 125);
    s.shutdown();
}

#[test]
fn run_writes_stdout_and_stderr_in_the_order_the_job_wrote_them() {
    let s = Server::start();
    let script = "for i in 1 2 3 4 5 6; do if [ $((i % 2)) = 0 ]; then echo $i >&2; \
                  else echo $i; fi; sleep 0.05; done";
    // Both of jobc's streams into one pipe: the order across them is kept.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = s
        .jobc_cmd("alice")
        .args(["run", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut both = String::new();
    let mut reader = reader;
    reader.read_to_string(&mut both).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(both, "1\n2\n3\n4\n5\n6\n");
    // Each on its own stream.
    let (code, out, err) = run(&s, &["sh", "-c", script]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "1\n3\n5\n", "2\n4\n6\n")
    );
    s.shutdown();
}

#[test]
fn ctrl_c_interrupts_the_job_and_a_second_stops_it() {
    let s = Server::start();
    // The first Ctrl-C reaches the job as SIGINT; it exits as it likes.
    let mut jobc = Background::spawn(s.jobc_cmd("alice").args([
        "run",
        "sh",
        "-c",
        "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done",
    ]));
    assert_eq!(jobc.line(Duration::from_secs(10)), "ready");
    testkit::signal(&jobc.child, libc::SIGINT);
    assert_eq!(jobc.line(Duration::from_secs(10)), "got INT");
    let (status, rest, err) = jobc.finish(Duration::from_secs(10));
    assert_eq!((status.code(), rest), (Some(7), vec![]), "{err}");
    assert_eq!(
        err,
        "jobc: sent SIGINT to the job; Ctrl-C again to stop it\n"
    );

    // A job that ignores it is stopped by the second: SIGTERM, which sh does not trap.
    jobc = Background::spawn(s.jobc_cmd("alice").args([
        "run",
        "sh",
        "-c",
        "trap 'echo got INT' INT; echo ready; while :; do sleep 0.05; done",
    ]));
    assert_eq!(jobc.line(Duration::from_secs(10)), "ready");
    testkit::signal(&jobc.child, libc::SIGINT);
    assert_eq!(jobc.line(Duration::from_secs(10)), "got INT");
    testkit::signal(&jobc.child, libc::SIGINT);
    let (status, _, err) = jobc.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(
        err.ends_with("jobc: stopping the job; Ctrl-C again to leave it to the server\n"),
        "{err}"
    );
    s.shutdown();
}

#[test]
fn run_rm_removes_the_job_and_a_killed_jobc_leaves_it_running() {
    let s = Server::start();
    assert_eq!(
        run(&s, &["--rm", "sh", "-c", "echo bye"]),
        (0, "bye\n".into(), String::new())
    );
    assert_eq!(s.ok("alice", &["list", "-o", "json"]), "[]\n");

    // The job is jobd's: SIGKILL of jobc leaves it running, even with --rm.
    let jobc = Background::spawn(s.jobc_cmd("alice").args([
        "run",
        "--rm",
        "sh",
        "-c",
        "echo up; exec sleep 60",
    ]));
    assert_eq!(jobc.line(Duration::from_secs(10)), "up");
    let id = running_job(&s);
    testkit::signal(&jobc.child, libc::SIGKILL);
    let (status, _, _) = jobc.finish(Duration::from_secs(10));
    assert_eq!(status.code(), None);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");
    s.ok("alice", &["stop", &id]);
    s.shutdown();
}

#[test]
fn wait_prints_each_status_and_exits_with_the_first_non_zero_code() {
    let s = Server::start();
    let quick = s.start_job("alice", &["true"]);
    let four = s.start_job("alice", &["sh", "-c", "sleep 0.5; exit 4"]);
    let killed = s.start_job("alice", &["sleep", "60"]);
    let out = output(s.jobc_cmd("alice").args(["wait", &quick]), JOBC_TIMEOUT);
    assert_eq!(failure(&out).0, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "finished (exit code: 0)\n"
    );

    let waiting = Background::spawn(s.jobc_cmd("alice").args(["wait", &quick, &four, &killed]));
    s.ok("alice", &["kill", &killed]);
    let (status, lines, err) = waiting.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(4), "{err}");
    assert_eq!(
        lines,
        [
            format!("{quick}: finished (exit code: 0)"),
            format!("{four}: finished (exit code: 4)"),
            format!("{killed}: stopped (signal: 9)"),
        ]
    );
    let out = output(s.jobc_cmd("alice").args(["wait", &killed]), JOBC_TIMEOUT);
    assert_eq!(failure(&out).0, 137);

    // Another user's job is not found: jobc cannot tell its end.
    let out = output(s.jobc_cmd("bob").args(["wait", &quick]), JOBC_TIMEOUT);
    assert_eq!(
        failure(&out),
        (125, format!("jobc: job {quick} not found\n"))
    );
    s.shutdown();
}

/// sha256 of the bytes, by the system's tool.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A follow across a jobd that goes away in its middle (killed, or shut down) and comes
/// back on the same port prints every byte the job's log holds exactly once.
fn a_follow_survives(crash: bool) {
    let mut s = Server::start();
    // About 600 KiB over a few seconds, in lines that say their number.
    let id = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 4000 ]; do \
             printf 'line %05d %0150d\\n' $i 0; i=$((i+1)); \
             [ $((i % 100)) = 0 ] && sleep 0.05; done; echo end",
        ],
    );
    let follower = Background::spawn(s.jobc_cmd("alice").args(["logs", "--raw", &id]));
    // Into the middle of it.
    let first = follower.line(Duration::from_secs(10));
    assert!(first.starts_with("line 00000 "), "{first}");
    for _ in 0..500 {
        follower.line(Duration::from_secs(10));
    }
    s.restart_on_the_same_port(crash);
    let (status, rest, err) = follower.finish(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{err}");
    let note = if crash {
        "jobc: the server went away; resuming the output\n"
    } else {
        "jobc: the server went away: the server is shutting down; resuming the output\n"
    };
    assert_eq!(err, note);
    assert_eq!(err.lines().count(), 1, "{err}");

    // What the follower printed is the stored log, byte for byte.
    let mut printed = Vec::new();
    for line in std::iter::once(first).chain((1..=500).map(|i| format!("line {i:05} {:0150}", 0))) {
        printed.extend_from_slice(line.as_bytes());
        printed.push(b'\n');
    }
    for line in &rest {
        printed.extend_from_slice(line.as_bytes());
        printed.push(b'\n');
    }
    let stored = output(
        s.jobc_cmd("alice")
            .args(["logs", "--raw", "--no-follow", &id]),
        JOBC_TIMEOUT,
    )
    .stdout;
    assert!(stored.len() > 501 * 157, "{} bytes stored", stored.len());
    assert_eq!(sha256(&printed), sha256(&stored));
    // Numbered lines, each once, in order.
    let numbers: Vec<usize> = String::from_utf8(stored)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.get(..5)?.parse().ok())
        .collect();
    assert!(
        numbers.iter().enumerate().all(|(i, n)| i == *n),
        "{numbers:?}"
    );
    s.shutdown();
}

#[test]
fn a_follow_survives_a_jobd_killed_in_its_middle() {
    a_follow_survives(true);
}

#[test]
fn a_follow_survives_a_jobd_shut_down_in_its_middle() {
    a_follow_survives(false);
}

#[test]
fn logs_start_at_a_tail_or_at_a_time() {
    let s = Server::start();
    let id = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo $i; done; sleep 1.2; echo late >&2; sleep 0.2; \
             printf unfinished",
        ],
    );
    s.wait_status("alice", &id, "finished (exit code: 0)");
    let logs = |extra: &[&str]| {
        let mut args = vec!["logs", "--raw", "--no-follow"];
        args.extend_from_slice(extra);
        args.push(&id);
        let out = output(s.jobc_cmd("alice").args(&args), JOBC_TIMEOUT);
        assert!(out.status.success(), "{extra:?}: {out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    assert_eq!(logs(&["--tail", "1"]), ("unfinished".into(), String::new()));
    assert_eq!(
        logs(&["--tail", "2"]),
        ("unfinished".into(), "late\n".into())
    );
    assert_eq!(
        logs(&["--tail", "3"]),
        ("5\nunfinished".into(), "late\n".into())
    );
    assert_eq!(logs(&["--tail", "0"]), (String::new(), String::new()));
    assert_eq!(
        logs(&["--tail", "100"]),
        ("1\n2\n3\n4\n5\nunfinished".into(), "late\n".into())
    );
    // A follow of an ended job starts where asked and ends.
    let out = output(
        s.jobc_cmd("alice").args(["logs", "--tail", "1", &id]),
        JOBC_TIMEOUT,
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["log"], "unfinished");

    // --since: the JSON lines say when each record was read.
    let json = s.ok("alice", &["logs", "--no-follow", &id]);
    let late_time = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["log"] == "late")
        .unwrap()["time"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        logs(&["--since", &late_time]),
        ("unfinished".into(), "late\n".into())
    );
    assert_eq!(
        logs(&["--since", "1h"]),
        ("1\n2\n3\n4\n5\nunfinished".into(), "late\n".into())
    );
    assert_eq!(
        logs(&["--since", "2999-01-01T00:00:00Z"]),
        (String::new(), String::new())
    );
    s.shutdown();
}

/// A copy of an ended job's folder under another id (and owner), as if jobd had given it
/// that id: ids are random, and a test of prefixes needs ids that share one.
fn clone_job(state: &std::path::Path, from: &str, id: &str) {
    let jobs = state.join("jobs");
    let to = jobs.join(id);
    std::fs::create_dir(&to).unwrap();
    for file in ["job.json", "output.log"] {
        std::fs::copy(jobs.join(from).join(file), to.join(file)).unwrap();
    }
    let record = std::fs::read_to_string(to.join("job.json")).unwrap();
    std::fs::write(to.join("job.json"), record.replace(from, id)).unwrap();
}

#[test]
fn ids_may_be_typed_short_among_the_jobs_the_caller_may_see() {
    let mut s = Server::start();
    let alices = s.start_job("alice", &["echo", "alice"]);
    let bobs = s.start_job("bob", &["echo", "bob"]);
    s.wait_status("alice", &alices, "finished (exit code: 0)");
    s.wait_status("bob", &bobs, "finished (exit code: 0)");
    // A unique prefix works for every command that takes an id.
    let short = &alices[..8];
    assert_eq!(
        s.ok("alice", &["status", short]),
        "finished (exit code: 0)\n"
    );
    assert_eq!(
        s.ok("alice", &["logs", "--raw", "--no-follow", &alices[..4]]),
        "alice\n"
    );
    assert_eq!(
        s.ok("alice", &["wait", &alices[..13]]),
        "finished (exit code: 0)\n"
    );

    // Jobs whose ids share a prefix: two of alice's and one of bob's.
    let state = s.dir.path().join("state");
    s.jobd.terminate();
    let (a1, a2, b1) = (
        "abcd0000-0000-4000-8000-000000000001",
        "abcd0000-0000-4000-8000-000000000002",
        "abcd1111-0000-4000-8000-000000000003",
    );
    clone_job(&state, &alices, a1);
    clone_job(&state, &alices, a2);
    clone_job(&state, &bobs, b1);
    s.jobd = s.spawn_second().expect("jobd restarts");

    // Ambiguous for alice, among her own jobs only; bob's never makes it so.
    let (code, err) = failure(&s.jobc("alice", &["status", "abcd"]));
    assert_eq!(
        (code, err),
        (
            1,
            format!("jobc: job id prefix abcd is ambiguous: it matches 2 jobs: {a1}, {a2}\n")
        )
    );
    // For bob the same prefix is his one job.
    assert_eq!(
        s.ok("bob", &["logs", "--raw", "--no-follow", "abcd"]),
        "bob\n"
    );
    // Alice's longer prefix is unique; bob's job never matches hers.
    assert_eq!(
        s.ok("alice", &["status", "abcd0000-0000-4000-8000-000000000002"]),
        "finished (exit code: 0)\n"
    );
    let (code, err) = failure(&s.jobc("alice", &["status", "abcd1"]));
    assert_eq!(
        (code, err),
        (1, "jobc: no job with an id that starts with abcd1\n".into())
    );
    // An admin sees all three.
    let (_, err) = failure(&s.jobc("admin", &["rm", "ABCD"]));
    assert!(err.contains("matches 3 jobs"), "{err}");
    // Too short, or not an id at all.
    let (code, err) = failure(&s.jobc("alice", &["stop", "abc"]));
    assert_eq!(
        (code, err),
        (
            1,
            "jobc: job id prefix \"abc\" is too short: give at least 4 characters of the id\n"
                .into()
        )
    );
    s.ok("alice", &["rm", &a1[..36]]);
    assert_eq!(
        s.ok("alice", &["status", "abcd"]),
        "finished (exit code: 0)\n"
    );
    s.shutdown();
}

#[test]
fn a_wait_survives_a_jobd_killed_while_it_waits() {
    let mut s = Server::start();
    let quick = s.start_job("alice", &["true"]);
    s.wait_status("alice", &quick, "finished (exit code: 0)");
    let id = s.start_job("alice", &["sleep", "60"]);
    let waiting = Background::spawn(s.jobc_cmd("alice").args(["wait", &quick, &id[..8]]));
    // Both waits are asked at once: the first one's answer says the second is in flight.
    assert_eq!(
        waiting.line(Duration::from_secs(10)),
        format!("{quick}: finished (exit code: 0)")
    );
    s.restart_on_the_same_port(true);
    // The next jobd found the job killed in the crash: that is its end.
    let (status, lines, err) = waiting.finish(Duration::from_secs(40));
    assert_eq!(status.code(), Some(137), "{err}");
    assert_eq!(lines, [format!("{id}: stopped (signal: 9)")]);
    assert_eq!(err, "jobc: the server went away; resuming the wait\n");
    assert_eq!(s.status_json("alice", &id)["server_lost"], true);
    s.shutdown();
}
