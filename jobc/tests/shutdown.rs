//! End to end, the README's shutdown promise, on the real jobd binary signalled by PID:
//! on SIGINT or SIGTERM it stops accepting connections, ends log streams (clients see
//! UNAVAILABLE, and jobc's follow resumes with the next jobd), lets in-flight calls finish, stops every running job and exits 0.

use std::time::{Duration, Instant};

use testkit::{failure, output, Background, Server};

fn shuts_down_gracefully_on(signal: i32) {
    // jobd stops what still runs with a grace of 1 s.
    let mut s = Server::start_with(&["--grace", "1"]);
    let sleeper = s.start_job("alice", &["sleep", "300"]);
    let pid = s.status_json("alice", &sleeper)["pid"].as_i64().unwrap();
    let (started, _) = testkit::start_time(pid).expect("the job's process runs");

    // A follower of the sleeping job, its stream open (jobd logs a Logs call once it is).
    let follower = Background::spawn(s.jobc_cmd("alice").args(["logs", &sleeper]));
    s.jobd
        .wait_log("the follower's call", Duration::from_secs(10), |l| {
            l.contains("method=\"Logs\"") && l.contains(&sleeper) && l.contains(" ok ")
        });

    // A job that handles SIGTERM, and a stop of it with a grace of 3 s: in flight once the
    // job says it got the SIGTERM, and for about 3 s after.
    let trapper = s.start_job(
        "bob",
        &[
            "sh",
            "-c",
            "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    );
    testkit::wait_for("the trapper to start", Duration::from_secs(10), || {
        s.ok("bob", &["logs", "--raw", "--no-follow", &trapper]) == "ready\n"
    });
    let stop = Background::spawn(s.jobc_cmd("bob").args(["stop", "--grace", "3", &trapper]));
    testkit::wait_for("the stop's SIGTERM", Duration::from_secs(10), || {
        s.ok("bob", &["logs", "--raw", "--no-follow", &trapper])
            .contains("got TERM")
    });

    let signalled = Instant::now();
    s.jobd.signal(signal);
    s.jobd
        .wait_log("the start of the shutdown", Duration::from_secs(5), |l| {
            l.contains("shutting down")
        });

    // No new connection, while the stop is still in flight: refused by the kernel once
    // the listener is closed (a connection caught just before may be reset instead).
    let mut last = (0, String::new());
    testkit::wait_for("a connection to be refused", Duration::from_secs(1), || {
        last = failure(&output(
            s.jobc_cmd("alice").arg("list"),
            Duration::from_secs(1),
        ));
        last.1.contains("connection refused")
    });
    assert_eq!(
        last,
        (
            3,
            format!(
                "jobc: cannot connect to {}: connection refused\n",
                s.server()
            )
        )
    );
    let mut stop = stop;
    assert!(
        stop.running(),
        "the stop ended before its grace period: {:?}",
        signalled.elapsed()
    );

    // The in-flight stop finishes, successfully, after its grace period.
    let (status, out, err) = stop.finish(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!((out, err), (vec![], String::new()));
    assert!(signalled.elapsed() >= Duration::from_secs(2));

    // jobd stops the sleeping job and exits 0.
    let status = s.jobd.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}: {:#?}", s.jobd.log());
    assert!(
        testkit::process_gone(pid, started),
        "the job's process {pid} outlived jobd"
    );

    // The next jobd, on the same port, finds both jobs stopped by this one, not lost in
    // a crash.
    s.jobd = s.spawn_on_the_same_port();

    // The follower's stream ended with UNAVAILABLE: it said so, connected again to the next
    // jobd, found the job ended with all its output (none) printed, and ended well.
    let (status, lines, err) = follower.finish(Duration::from_secs(30));
    assert_eq!(lines, Vec::<String>::new());
    assert_eq!(
        (status.code(), err.as_str()),
        (
            Some(0),
            "jobc: the server went away: the server is shutting down; resuming the output\n"
        )
    );
    // `sleep` dies of the SIGTERM; the trapper, which outlives it, of the SIGKILL.
    for (user, id, end) in [
        ("alice", &sleeper, "stopped (signal: 15)"),
        ("bob", &trapper, "stopped (signal: 9)"),
    ] {
        let st = s.status_json(user, id);
        assert_eq!(st["status"], end, "{st}");
        assert_eq!(st["server_lost"], false, "{st}");
        assert_eq!(st["stop_requested"], true, "{st}");
    }
    s.shutdown();
}

#[test]
fn sigterm_stops_jobd_gracefully() {
    shuts_down_gracefully_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_jobd_gracefully() {
    shuts_down_gracefully_on(libc::SIGINT);
}
