//! End to end, the real `jobd` and `jobc`: what a job's program sees and gets. Signals
//! with `jobc kill`, its environment and working directory from `jobc start`, its time
//! limit, and the init that is PID 1 of its namespace.

use std::time::{Duration, Instant};

use testkit::{failure, public_tempdir, wait_for, Server};

/// The job's output so far, raw.
fn logs(s: &Server, user: &str, id: &str) -> String {
    s.ok(user, &["logs", "--raw", "--no-follow", id])
}

fn wait_for_output(s: &Server, id: &str, text: &str) {
    wait_for(text, Duration::from_secs(10), || {
        logs(s, "alice", id).contains(text)
    });
}

#[test]
fn jobc_kill_sends_any_signal_with_the_rbac_of_stop() {
    let s = Server::start_with(&["--cgroups", "off"]);
    let id = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; echo ready; \
             while :; do sleep 0.1; done",
        ],
    );
    wait_for_output(&s, &id, "ready");
    assert_eq!(s.ok("alice", &["kill", "-s", "HUP", &id]), "");
    wait_for_output(&s, &id, "got HUP");
    assert_eq!(s.ok("alice", &["kill", "--signal", "10", "--all", &id]), "");
    wait_for_output(&s, &id, "got USR1");
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");

    // Another user's job is not there to signal; an admin may signal it.
    assert_eq!(
        failure(&s.jobc("bob", &["kill", "-s", "HUP", &id])),
        (1, format!("jobc: job {id} not found\n"))
    );
    assert_eq!(s.ok("admin", &["kill", "-s", "SIGHUP", &id]), "");
    wait_for("the admin's HUP", Duration::from_secs(10), || {
        logs(&s, "alice", &id).matches("got HUP").count() == 2
    });

    // An unknown signal never leaves jobc; the default is SIGKILL, as for `docker kill`.
    let (code, message) = failure(&s.jobc("alice", &["kill", "-s", "FOO", &id]));
    assert_eq!(code, 2);
    assert!(message.contains("unknown signal \"FOO\""), "{message}");
    assert_eq!(s.ok("alice", &["kill", &id]), "");
    s.wait_status("alice", &id, "stopped (signal: 9)");

    // An ended job has nothing to signal.
    let (code, message) = failure(&s.jobc("alice", &["kill", "-s", "HUP", &id]));
    assert_eq!(code, 1);
    assert!(
        message.contains("has ended: there is nothing to signal"),
        "{message}"
    );
    s.shutdown();
}

#[test]
fn a_signal_from_the_host_to_the_reported_pid_reaches_the_program() {
    let s = Server::start_with(&["--cgroups", "off"]);
    let id = s.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "echo pid $$; trap 'echo got USR2' USR2; while :; do sleep 0.1; done",
        ],
    );
    wait_for_output(&s, &id, "pid");
    // The program is its init's first child: `echo $$` prints 2, no longer 1.
    assert_eq!(logs(&s, "alice", &id), "pid 2\n");
    let pid = s.status_json("alice", &id)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions; `pid` is the running job's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    wait_for_output(&s, &id, "got USR2");
    let began = Instant::now();
    s.ok("alice", &["stop", &id]);
    assert!(began.elapsed() < Duration::from_secs(4));
    assert_eq!(s.ok("alice", &["status", &id]), "stopped (signal: 15)\n");
    s.shutdown();
}

#[test]
fn a_job_gets_its_environment_and_working_directory_and_status_shows_them() {
    let s = Server::start_with(&["--cgroups", "off"]);
    let dir = public_tempdir();
    let env_file = dir.path().join("app.env");
    std::fs::write(&env_file, "# app\nFROM_FILE=file value\nSHARED=file\n").unwrap();
    let id = s.start_job(
        "alice",
        &[
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "SHARED=flag",
            "--env",
            "SPACED=a b",
            "-w",
            "/tmp",
            "sh",
            "-c",
            "echo \"$FROM_FILE|$SHARED|$SPACED|$USER|$HOME\"; pwd",
        ],
    );
    s.wait_status("alice", &id, "finished (exit code: 0)");
    assert_eq!(
        logs(&s, "alice", &id),
        "file value|flag|a b|alice|/\n/tmp\n"
    );
    let json = s.status_json("alice", &id);
    assert_eq!(json["working_dir"], "/tmp");
    let env: Vec<&str> = json["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for var in [
        "SHARED=flag",
        "FROM_FILE=file value",
        "USER=alice",
        "LOGNAME=alice",
    ] {
        assert!(env.contains(&var), "{var} not in {env:?}");
    }
    assert!(env.iter().any(|v| v.starts_with("PATH=")), "{env:?}");
    assert!(!env.contains(&"SHARED=file"), "{env:?}");
    s.shutdown();
}

#[test]
fn bad_environments_and_working_directories_are_refused_and_leave_no_job() {
    let s = Server::start_with(&["--cgroups", "off"]);
    let dir = public_tempdir();
    let bad_file = dir.path().join("bad.env");
    std::fs::write(&bad_file, "OK=1\nNOT OK=2\n").unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let missing = dir.path().join("missing");
    for (args, code, says) in [
        (vec!["-e", "1X=y", "true"], 2, "is not valid"),
        (vec!["-w", "relative", "true"], 2, "not an absolute path"),
        (
            vec!["--env-file", bad_file, "true"],
            1,
            "bad.env: line 2: environment variable name",
        ),
        (
            vec!["-w", missing.to_str().unwrap(), "true"],
            1,
            "cannot enter its working directory: No such file or directory",
        ),
        (vec!["-w", "/etc/passwd", "true"], 1, "Not a directory"),
        (vec!["-w", "/root", "true"], 1, "Permission denied"),
    ] {
        let mut argv = vec!["start"];
        argv.extend(&args);
        let (got, message) = failure(&s.jobc("alice", &argv));
        assert_eq!(got, code, "{args:?}: {message}");
        assert!(message.contains(says), "{args:?}: {message}");
    }
    // An oversized environment, which only the server can tell.
    let big = dir.path().join("big.env");
    let vars: String = (0..2000)
        .map(|i| format!("V{i}={}\n", "y".repeat(64)))
        .collect();
    std::fs::write(&big, vars).unwrap();
    let big = big.to_str().unwrap();
    let (code, message) = failure(&s.jobc("alice", &["start", "--env-file", big, "true"]));
    assert_eq!(code, 1);
    assert!(message.contains("at most 131072 are allowed"), "{message}");
    assert_eq!(
        s.ok("alice", &["list", "-o", "json"]).trim(),
        "[]",
        "a refused start left a job"
    );
    s.shutdown();
}

#[test]
fn a_timeout_stops_the_job_and_status_says_it_timed_out() {
    let s = Server::start_with(&["--cgroups", "off"]);
    let slow = s.start_job("alice", &["--timeout", "1s", "sleep", "60"]);
    let quick = s.start_job("alice", &["--timeout", "1m", "sh", "-c", "exit 5"]);
    s.wait_status("alice", &quick, "finished (exit code: 5)");
    wait_for("the time limit", Duration::from_secs(10), || {
        s.status_json("alice", &slow)["status"] == "stopped (signal: 15)"
    });
    assert_eq!(
        s.ok("alice", &["status", &slow]),
        "stopped (signal: 15)\ntimed out: stopped after its time limit of 1 s\n"
    );
    let json = s.status_json("alice", &slow);
    assert_eq!(
        (json["timed_out"].clone(), json["timeout_seconds"].clone()),
        (true.into(), 1.into())
    );
    let json = s.status_json("alice", &quick);
    assert_eq!(
        (json["timed_out"].clone(), json["timeout_seconds"].clone()),
        (false.into(), 60.into())
    );
    s.shutdown();
}

#[test]
fn the_servers_maximum_time_limit_is_enforced() {
    let dir = public_tempdir();
    let config = dir.path().join("jobd.toml");
    std::fs::write(&config, "default_timeout = \"1s\"\nmax_timeout = \"1h\"\n").unwrap();
    let s = Server::start_with(&["--cgroups", "off", "--config", config.to_str().unwrap()]);
    let (code, message) = failure(&s.jobc("alice", &["start", "--timeout", "2h", "true"]));
    assert_eq!(code, 1);
    assert!(
        message.contains("a timeout of 7200s is longer than this server allows (3600s)"),
        "{message}"
    );
    let id = s.start_job("alice", &["sleep", "60"]);
    wait_for("the default time limit", Duration::from_secs(10), || {
        s.status_json("alice", &id)["timed_out"] == true
    });
    assert_eq!(
        s.status_json("alice", &id)["status"],
        "stopped (signal: 15)"
    );
    s.shutdown();
}
