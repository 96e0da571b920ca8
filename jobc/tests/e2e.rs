//! End to end: the real `jobd` and `jobc` binaries, certificates from `jobd pki init`,
//! a server on 127.0.0.1 port 0. Covers the seed's CLI examples, RBAC between users and
//! the errors people see.

use std::process::Command;
use std::time::Duration;

use testkit::{failure, jobc_bin, output, Background, Server, JOBC_TIMEOUT};

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

#[test]
fn the_seed_examples() {
    let s = Server::start_with(&["--cgroups", "off"]);
    // $ jobc start sleep 60 → an id and nothing else
    let out = s.ok("alice", &["start", "sleep", "60"]);
    let id = out.trim_end().to_string();
    assert!(is_uuid(&id) && out == format!("{id}\n"), "{out:?}");
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");
    // The server's default: all three namespaces, and so the job's init as PID 1.
    assert_eq!(
        s.status_json("alice", &id)["isolation"],
        serde_json::json!(["pid", "mount", "net"])
    );
    // $ jobc stop ID → nothing. `sleep` dies of the SIGTERM the init passes on.
    assert_eq!(s.ok("alice", &["stop", &id]), "");
    assert_eq!(s.ok("alice", &["status", &id]), "stopped (signal: 15)\n");

    // Less isolation than the server's default is an admin's to ask for; and without
    // cgroups (pinned off here) nothing but a PID namespace would hold the job's
    // processes, so even an admin's job without one is refused.
    assert_eq!(
        failure(&s.jobc("alice", &["start", "--isolate", "none", "sleep", "60"])),
        (
            1,
            "jobc: this server does not let you start a job without a PID namespace or \
             without a mount namespace or with the host's network: that is less isolation \
             than its default\n"
                .into()
        )
    );
    assert_eq!(
        failure(&s.jobc("admin", &["start", "--isolate", "none", "sleep", "60"])),
        (
            1,
            "jobc: without cgroups a job needs a PID namespace to hold its processes\n".into()
        )
    );

    let ok = s.start_job("alice", &["true"]);
    s.wait_status("alice", &ok, "finished (exit code: 0)");
    let failing = s.start_job("alice", &["sh", "-c", "exit 3"]);
    s.wait_status("alice", &failing, "finished (exit code: 3)");

    let json = s.status_json("alice", &failing);
    assert_eq!(json["status"], "finished (exit code: 3)");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["owner"], "alice");
    assert_eq!(json["argv"], serde_json::json!(["sh", "-c", "exit 3"]));
    assert!(json["ended_at"].is_string());
    s.shutdown();
}

#[test]
fn logs_print_history_then_follow_live_output() {
    let s = Server::start();
    // The job prints its history, then waits for the test to let it go on: whatever the
    // follower prints after that was live output, not history.
    let gate = testkit::public_tempdir();
    let go = gate.path().join("go");
    let script = format!(
        "echo one; echo oops >&2; while [ ! -e {} ]; do sleep 0.02; done; echo two; printf tail",
        go.display()
    );
    let id = s.start_job("alice", &["sh", "-c", &script]);
    let follower = Background::spawn(s.jobc_cmd("alice").args(["logs", &id]));
    let history = [
        follower.line(Duration::from_secs(10)),
        follower.line(Duration::from_secs(10)),
    ];
    // The job is still waiting, so a follower that stopped at the history would be wrong.
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");
    std::fs::write(&go, "").unwrap();
    let (status, live, err) = follower.finish(Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(err, "");

    let lines: Vec<serde_json::Value> = history
        .iter()
        .chain(&live)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["stream"].as_str().unwrap(), l["log"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("stdout", "one"),
            ("stderr", "oops"),
            ("stdout", "two"),
            ("stdout", "tail")
        ]
    );
    for l in &lines {
        let time = l["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 30, "{time}");
        assert_eq!(l.as_object().unwrap().len(), 3);
    }

    // --no-follow on a finished job: the same history; --raw: the exact bytes per stream.
    let all: String = history
        .iter()
        .chain(&live)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(s.ok("alice", &["logs", "--no-follow", &id]), all);
    let raw = s.jobc("alice", &["logs", "--raw", &id]);
    assert_eq!(raw.stdout, b"one\ntwo\ntail");
    assert_eq!(raw.stderr, b"oops\n");
    s.shutdown();
}

#[test]
fn a_closed_stdout_pipe_is_not_an_error() {
    let s = Server::start();
    let id = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done",
        ],
    );
    s.wait_status("alice", &id, "finished (exit code: 0)");
    let mut follower = Background::spawn(s.jobc_cmd("alice").args(["logs", &id]));
    let first = follower.line(Duration::from_secs(10));
    // The reader is gone (like `| head -1`).
    follower.close_stdout();
    let (status, _, err) = follower.finish(Duration::from_secs(20));
    assert!(first.contains("line 0"), "{first}");
    assert!(status.success(), "exit {status:?}: {err}");
    assert_eq!(err, "");
    s.shutdown();
}

#[test]
fn users_cannot_reach_each_others_jobs() {
    let s = Server::start();
    let id = s.ok("alice", &["start", "sleep", "60"]).trim().to_string();
    for args in [vec!["status", &id], vec!["stop", &id], vec!["logs", &id]] {
        let (code, err) = failure(&s.jobc("bob", &args));
        assert_eq!(
            (code, err),
            (1, format!("jobc: job {id} not found\n")),
            "bob {args:?}"
        );
    }
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");
    assert!(!s.ok("bob", &["list"]).contains(&id));
    assert!(s.ok("alice", &["list"]).contains(&id));
    // The admin sees and stops it.
    let list: serde_json::Value =
        serde_json::from_str(&s.ok("admin", &["list", "-o", "json"])).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    s.ok("admin", &["stop", "--grace", "1", &id]);
    // `sleep` dies of the SIGTERM, which the job's init passes on.
    assert_eq!(s.ok("alice", &["status", &id]), "stopped (signal: 15)\n");
    s.shutdown();
}

#[test]
fn errors_are_one_clear_line() {
    let s = Server::start();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["status", "12z4"],
            1,
            "jobc: malformed job id \"12z4\": expected a UUID or the start of one\n",
        ),
        (
            vec!["status", "00000000-0000-4000-8000-000000000000"],
            1,
            "jobc: job 00000000-0000-4000-8000-000000000000 not found\n",
        ),
        (
            vec!["start", "no-such-program"],
            1,
            "jobc: cannot start no-such-program: command not found\n",
        ),
        (vec!["start", "--memory", "0", "true"], 2, ""),
        (vec!["start", "--cpus", "NaN", "true"], 2, ""),
    ];
    for (args, code, message) in cases {
        let (got_code, err) = failure(&s.jobc("alice", &args));
        assert_eq!(got_code, code, "{args:?}: {err}");
        if !message.is_empty() {
            assert_eq!(err, message, "{args:?}");
        } else {
            assert!(err.lines().next().unwrap().starts_with("error:"), "{err}");
        }
    }

    // Nobody listens there.
    let (_held, port) = testkit::port_without_listener();
    let out = output(
        s.jobc_cmd("alice")
            .env("JOBC_SERVER", format!("127.0.0.1:{port}"))
            .arg("list"),
        JOBC_TIMEOUT,
    );
    assert_eq!(
        failure(&out),
        (
            3,
            format!("jobc: cannot connect to 127.0.0.1:{port}: connection refused\n")
        )
    );

    // A server that accepts and never answers: jobc gives up at its connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = output(
        s.jobc_cmd("alice")
            .env("JOBC_SERVER", format!("127.0.0.1:{silent_port}"))
            .env("JOBC_CONNECT_TIMEOUT", "300ms")
            .arg("list"),
        JOBC_TIMEOUT,
    );
    assert_eq!(
        failure(&out),
        (
            3,
            format!(
                "jobc: cannot connect to 127.0.0.1:{silent_port}: no TLS handshake within \
                 300ms (--connect-timeout)\n"
            )
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(silent);

    // A huge job id full of terminal escapes comes back short and inert.
    let hostile = "\u{1b}[2J".repeat(2500);
    let (code, err) = failure(&s.jobc("alice", &["status", &hostile]));
    assert_eq!(code, 1, "{err}");
    assert!(err.len() < 320, "{} bytes: {err}", err.len());
    assert!(!err.contains('\u{1b}'), "{err}");
    assert!(
        err.starts_with("jobc: malformed job id \"\\u{1b}[2J")
            && err.ends_with("(10000 bytes): expected a UUID or the start of one\n"),
        "{err}"
    );

    // A certificate from another CA of the same name.
    let other = tempfile::tempdir().unwrap();
    testkit::pki_init(other.path());
    let out = output(
        s.jobc_cmd("alice")
            .env("JOBC_CERT", other.path().join("alice.pem"))
            .env("JOBC_KEY", other.path().join("alice-key.pem"))
            .arg("list"),
        JOBC_TIMEOUT,
    );
    assert_eq!(
        failure(&out),
        (
            3,
            "jobc: server refused this certificate: its signature does not verify with a CA the \
             server trusts\n"
                .into()
        )
    );

    // A missing certificate file.
    let out = output(
        s.jobc_cmd("alice")
            .env("JOBC_CERT", "/no/such.pem")
            .arg("list"),
        JOBC_TIMEOUT,
    );
    let (code, err) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("jobc: cannot read the certificate /no/such.pem"),
        "{err}"
    );
    s.shutdown();
}

#[test]
fn completions_and_help() {
    let out = output(
        Command::new(jobc_bin()).args(["completions", "bash"]),
        JOBC_TIMEOUT,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("jobc"));
    let out = output(Command::new(jobc_bin()).arg("--help"), JOBC_TIMEOUT);
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["start", "stop", "status", "logs", "list"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn a_crash_of_jobd_loses_no_history_and_leaves_no_process() {
    let mut s = Server::start();

    // A second jobd on the same state dir is refused while the first runs.
    let (status, log) = s.spawn_second().err().expect("a second jobd started");
    assert_eq!(status.code(), Some(1));
    assert!(
        log.iter()
            .any(|l| l.contains("another jobd (pid ") && l.contains("is using the state dir")),
        "{log:?}"
    );

    let finished = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/urandom; echo; echo done >&2",
        ],
    );
    s.wait_status("alice", &finished, "finished (exit code: 0)");
    let before = s.jobc("alice", &["logs", "--raw", &finished]);
    assert_eq!(before.stdout.len(), 3_000_001);
    let sleeper = s.start_job("alice", &["sleep", "1000"]);
    // About 100 MB over several seconds: jobd dies in the middle of it.
    let writer = s.start_job(
        "bob",
        &["sh", "-c", "i=0; while [ $i -lt 100 ]; do head -c 1048576 /dev/zero | tr '\\0' y; i=$((i+1)); sleep 0.03; done"],
    );
    let processes: Vec<(&str, &String, i64, u64)> = [("alice", &sleeper), ("bob", &writer)]
        .into_iter()
        .map(|(user, id)| {
            let pid = s.status_json(user, id)["pid"].as_i64().unwrap();
            let (started, _) = testkit::start_time(pid).expect("the job's process runs");
            (user, id, pid, started)
        })
        .collect();
    testkit::wait_for(
        "the writer's first megabytes",
        Duration::from_secs(20),
        || {
            s.jobc("bob", &["logs", "--raw", "--no-follow", &writer])
                .stdout
                .len()
                > 1_100_000
        },
    );
    assert_eq!(s.ok("bob", &["status", &writer]), "running\n");
    s.crash_and_restart();

    // Every job is there, with the right status.
    let list: serde_json::Value =
        serde_json::from_str(&s.ok("admin", &["list", "-o", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(
        s.ok("alice", &["status", &finished]),
        "finished (exit code: 0)\n"
    );
    for (user, id, pid, started) in processes {
        let st = s.status_json(user, id);
        assert_eq!(st["state"], "stopped", "{st}");
        assert_eq!(st["server_lost"], true, "{st}");
        assert!(st["ended_at"].is_string());
        assert!(
            testkit::process_gone(pid, started),
            "process {pid} of job {id} survived the crash"
        );
    }
    // Finished output is byte-exact; the interrupted log is readable up to the crash.
    assert_eq!(
        s.jobc("alice", &["logs", "--raw", &finished]).stdout,
        before.stdout
    );
    assert_eq!(
        s.jobc("alice", &["logs", "--raw", &finished]).stderr,
        b"done\n"
    );
    let partial = s.jobc("bob", &["logs", "--raw", &writer]).stdout;
    assert!(partial.len() > 1_000_000, "only {} bytes", partial.len());
    assert!(partial.iter().all(|&b| b == b'y'));

    // rm: only the owner or an admin, only ended jobs.
    let (code, err) = failure(&s.jobc("bob", &["rm", &finished]));
    assert_eq!(
        (code, err),
        (1, format!("jobc: job {finished} not found\n"))
    );
    let running = s.start_job("alice", &["sleep", "60"]);
    let (code, err) = failure(&s.jobc("alice", &["rm", &running]));
    assert_eq!(
        (code, err),
        (
            1,
            format!("jobc: job {running} is still running: stop it first\n")
        )
    );
    s.ok("alice", &["stop", "--grace", "1", &running]);
    assert_eq!(s.ok("alice", &["rm", &finished]), "");
    assert_eq!(s.ok("admin", &["rm", &writer]), "");
    let (code, _) = failure(&s.jobc("alice", &["status", &finished]));
    assert_eq!(code, 1);
    s.shutdown();
}
