//! End to end: the real `jobd` and `jobc` binaries, certificates from `jobd pki init`,
//! a server on 127.0.0.1 port 0. Covers the seed's CLI examples, RBAC between users and
//! the errors people see.
//!
//! `jobd` is looked up beside `jobc` in the target folder; `cargo test --workspace` (the
//! README's test command) builds both.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn jobc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobc"))
}

fn jobd_bin() -> PathBuf {
    let path = jobc_bin().with_file_name("jobd");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p jobd, or cargo test --workspace)",
        path.display()
    );
    path
}

struct Server {
    child: Child,
    port: u16,
    pki: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let out = Command::new(jobd_bin())
            .args(["pki", "init", "--out"])
            .arg(&pki)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = dir.path().join("state");
        let mut child = Self::spawn_jobd(&state, &pki);
        let port = Self::wait_listening(&mut child).expect("jobd did not start");
        Server {
            child,
            port,
            pki,
            dir,
        }
    }

    fn spawn_jobd(state: &std::path::Path, pki: &std::path::Path) -> Child {
        Command::new(jobd_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server-key.pem"))
            .env("JOBD_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Reads jobd's log until it names the address it bound (or it exits); keeps
    /// draining the log afterwards so jobd never blocks on it. Returns the port, or the
    /// log lines if jobd exited first.
    fn wait_listening(child: &mut Child) -> Result<u16, Vec<String>> {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let port = addr
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .rsplit(':')
                        .next()
                        .unwrap();
                    let _ = tx.send(Ok(port.parse::<u16>().unwrap()));
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("jobd said nothing")
    }

    /// Kills jobd with SIGKILL, as a crash would, and starts a new one on the same state.
    fn crash_and_restart(&mut self) {
        // SAFETY: signalling the jobd process this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
        let mut child = Self::spawn_jobd(&self.dir.path().join("state"), &self.pki);
        self.port = Self::wait_listening(&mut child).expect("jobd did not restart");
        self.child = child;
    }

    fn jobc(&self, user: &str, args: &[&str]) -> Output {
        self.jobc_cmd(user).args(args).output().unwrap()
    }

    fn jobc_cmd(&self, user: &str) -> Command {
        let mut cmd = Command::new(jobc_bin());
        cmd.env("JOBC_SERVER", format!("localhost:{}", self.port))
            .env("JOBC_CA", self.pki.join("ca.pem"))
            .env("JOBC_CERT", self.pki.join(format!("{user}.pem")))
            .env("JOBC_KEY", self.pki.join(format!("{user}-key.pem")));
        cmd
    }

    /// Runs jobc and expects success; returns stdout.
    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.jobc(user, args);
        assert!(
            out.status.success(),
            "jobc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_status(&self, user: &str, id: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.ok(user, &["status", id]);
            if got == format!("{expected}\n") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "status stayed {got:?}, expected {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the jobd process this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

fn failure(out: &Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_seed_examples() {
    let s = Server::start();
    // $ jobc start sleep 60 → an id and nothing else
    let out = s.ok("alice", &["start", "sleep", "60"]);
    let id = out.trim_end().to_string();
    assert!(is_uuid(&id) && out == format!("{id}\n"), "{out:?}");
    assert_eq!(s.ok("alice", &["status", &id]), "running\n");
    // $ jobc stop ID → nothing
    assert_eq!(s.ok("alice", &["stop", &id]), "");
    let status = s.ok("alice", &["status", &id]);
    assert!(
        status == "stopped (signal: 15)\n" || status == "stopped (signal: 9)\n",
        "{status:?}"
    );

    let ok = s.ok("alice", &["start", "true"]).trim().to_string();
    s.wait_status("alice", &ok, "finished (exit code: 0)");
    let failing = s
        .ok("alice", &["start", "sh", "-c", "exit 3"])
        .trim()
        .to_string();
    s.wait_status("alice", &failing, "finished (exit code: 3)");

    let json: serde_json::Value =
        serde_json::from_str(&s.ok("alice", &["status", "-o", "json", &failing])).unwrap();
    assert_eq!(json["status"], "finished (exit code: 3)");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["owner"], "alice");
    assert_eq!(json["argv"], serde_json::json!(["sh", "-c", "exit 3"]));
    assert!(json["ended_at"].is_string());
}

#[test]
fn logs_print_history_then_follow_live_output() {
    let s = Server::start();
    let id = s
        .ok(
            "alice",
            &[
                "start",
                "sh",
                "-c",
                "echo one; echo oops >&2; sleep 1; echo two; printf tail",
            ],
        )
        .trim()
        .to_string();
    let t0 = Instant::now();
    let out = s.ok("alice", &["logs", &id]);
    // It followed until the job ended, about a second after it started.
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
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
    assert_eq!(s.ok("alice", &["logs", "--no-follow", &id]), out);
    let raw = s.jobc("alice", &["logs", "--raw", &id]);
    assert_eq!(raw.stdout, b"one\ntwo\ntail");
    assert_eq!(raw.stderr, b"oops\n");
}

#[test]
fn a_closed_stdout_pipe_is_not_an_error() {
    let s = Server::start();
    let id = s
        .ok(
            "alice",
            &[
                "start",
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done",
            ],
        )
        .trim()
        .to_string();
    s.wait_status("alice", &id, "finished (exit code: 0)");
    let mut child = s
        .jobc_cmd("alice")
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (like `| head -1`).
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(first.contains("line 0"));
    assert!(status.success(), "exit {status:?}: {err}");
    assert_eq!(err, "");
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
    // `sleep` is PID 1 of its PID namespace and has no SIGTERM handler, so the kernel
    // drops the SIGTERM and the stop ends with SIGKILL (as `docker stop` would).
    assert_eq!(s.ok("alice", &["status", &id]), "stopped (signal: 9)\n");
}

#[test]
fn errors_are_one_clear_line() {
    let s = Server::start();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["status", "1234"],
            1,
            "jobc: malformed job id \"1234\": expected a UUID\n",
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
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = s
        .jobc_cmd("alice")
        .env("JOBC_SERVER", format!("127.0.0.1:{port}"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        failure(&out),
        (
            3,
            format!("jobc: cannot connect to 127.0.0.1:{port}: connection refused\n")
        )
    );

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let made = Command::new(jobd_bin())
        .args(["pki", "init", "--out"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = s
        .jobc_cmd("alice")
        .env("JOBC_CERT", other.path().join("alice.pem"))
        .env("JOBC_KEY", other.path().join("alice-key.pem"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        failure(&out),
        (3, "jobc: server refused this certificate\n".into())
    );

    // A missing certificate file.
    let out = s
        .jobc_cmd("alice")
        .env("JOBC_CERT", "/no/such.pem")
        .arg("list")
        .output()
        .unwrap();
    let (code, err) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("jobc: cannot read the certificate /no/such.pem"),
        "{err}"
    );
}

#[test]
fn completions_and_help() {
    let out = Command::new(jobc_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("jobc"));
    let out = Command::new(jobc_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["start", "stop", "status", "logs", "list"] {
        assert!(help.contains(cmd), "{help}");
    }
}

fn status_json(s: &Server, user: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&s.ok(user, &["status", "-o", "json", id])).unwrap()
}

fn process_gone(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_crash_of_jobd_loses_no_history_and_leaves_no_process() {
    let mut s = Server::start();

    // A second jobd on the same state dir is refused while the first runs.
    let mut second = Server::spawn_jobd(&s.dir.path().join("state"), &s.pki);
    let log = Server::wait_listening(&mut second).expect_err("a second jobd started");
    assert!(second.wait().unwrap().code() == Some(1));
    assert!(
        log.iter()
            .any(|l| l.contains("another jobd (pid ") && l.contains("is using the state dir")),
        "{log:?}"
    );

    let finished = s
        .ok(
            "alice",
            &[
                "start",
                "sh",
                "-c",
                "head -c 3000000 /dev/urandom; echo; echo done >&2",
            ],
        )
        .trim()
        .to_string();
    s.wait_status("alice", &finished, "finished (exit code: 0)");
    let before = s.jobc("alice", &["logs", "--raw", &finished]);
    assert_eq!(before.stdout.len(), 3_000_001);
    let sleeper = s
        .ok("alice", &["start", "sleep", "1000"])
        .trim()
        .to_string();
    let sleeper_pid = status_json(&s, "alice", &sleeper)["pid"].as_i64().unwrap();
    // About 100 MB over several seconds: jobd dies in the middle of it.
    let writer = s
        .ok(
            "bob",
            &["start", "sh", "-c", "i=0; while [ $i -lt 100 ]; do head -c 1048576 /dev/zero | tr '\\0' y; i=$((i+1)); sleep 0.03; done"],
        )
        .trim()
        .to_string();
    let writer_pid = status_json(&s, "bob", &writer)["pid"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.crash_and_restart();

    // Every job is there, with the right status.
    let list: serde_json::Value =
        serde_json::from_str(&s.ok("admin", &["list", "-o", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(
        s.ok("alice", &["status", &finished]),
        "finished (exit code: 0)\n"
    );
    for (user, id, pid) in [
        ("alice", &sleeper, sleeper_pid),
        ("bob", &writer, writer_pid),
    ] {
        let st = status_json(&s, user, id);
        assert_eq!(st["state"], "stopped", "{st}");
        assert_eq!(st["server_lost"], true, "{st}");
        assert!(st["ended_at"].is_string());
        assert!(
            process_gone(pid),
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
    let running = s.ok("alice", &["start", "sleep", "60"]).trim().to_string();
    let (code, err) = failure(&s.jobc("alice", &["rm", &running]));
    assert_eq!(
        (code, err),
        (
            1,
            format!("jobc: job {running} is still running: stop it first\n")
        )
    );
    s.ok("alice", &["stop", &running]);
    assert_eq!(s.ok("alice", &["rm", &finished]), "");
    assert_eq!(s.ok("admin", &["rm", &writer]), "");
    let (code, _) = failure(&s.jobc("alice", &["status", &finished]));
    assert_eq!(code, 1);
}
