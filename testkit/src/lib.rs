//! What jobworker's end-to-end tests and its benchmark share: the real `jobd` and `jobc`
//! binaries run as child processes with a deadline on every wait, a PKI made by `jobd pki
//! init` (and extra certificates from its CA made here with rcgen), scratch dirs laid out
//! as production's, a tmpfs that unmounts itself, and the clean-up of a failed test's jobs.
//!
//! jobd says where it listens in an address file (`serve --address-file`), never in words
//! a test must parse. The binaries are looked up beside the running test or benchmark, in
//! the same target folder; `cargo nextest run --workspace` (the README's test command)
//! builds them.
//!
//! No wait here is unbounded: a child that outlives its deadline is killed by its PID and
//! the test fails saying what it waited for.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
};

/// How long one jobc run may take before the test calls it hung.
pub const JOBC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long jobd may take to say where it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long jobd may take to exit after SIGTERM (it stops running jobs with their grace).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The folder of the running executable's build profile (`target/debug`, `target/release`):
/// a test runs from its `deps/` folder, a binary from the profile folder itself.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("an executable lives in a folder");
    if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.parent()
            .expect("deps/ lives in a profile folder")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A binary of this workspace, built for the same profile as the caller.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}, or cargo nextest run --workspace)",
        path.display()
    );
    path
}

pub fn jobc_bin() -> PathBuf {
    bin("jobc")
}

pub fn jobd_bin() -> PathBuf {
    bin("jobd")
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to a process this test started, by its PID.
pub fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("a pid fits in i32");
    // SAFETY: kill has no memory effects; the pid is that of our own, unreaped child.
    unsafe { libc::kill(pid, signal) };
}

/// Waits for `child` up to `timeout`; past it, kills it and returns `None`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on our own child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            signal(child, libc::SIGKILL);
            let _ = child.wait(); // SIGKILL cannot be ignored: this returns at once
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to its end like `Command::output`, but panics (after killing it) if it
/// takes longer than `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait_child(&mut child, timeout);
    let stdout = stdout.join().expect("reader thread");
    let stderr = stderr.join().expect("reader thread");
    let Some(status) = status else {
        panic!(
            "{cmd:?} did not end within {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A child whose stdout lines arrive on a channel, for reading with a deadline.
pub struct Background {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("piped")));
        Background {
            child,
            lines,
            stderr,
        }
    }

    /// The next line of stdout; panics if none comes within `timeout` (or stdout ends).
    pub fn line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line of output within {timeout:?}: {e}"))
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Stops reading stdout, as `| head -1` does: the reader thread ends at its next line
    /// and closes the pipe.
    pub fn close_stdout(&mut self) {
        self.lines = mpsc::channel().1;
    }

    /// Waits for the end (killing it past `timeout` and failing); returns the exit status,
    /// the stdout lines not yet taken and all of stderr.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let status = wait_child(&mut self.child, timeout);
        let stderr = self.stderr.take().expect("once").join().expect("reader");
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let status = status.unwrap_or_else(|| panic!("did not end within {timeout:?}: {stderr}"));
        // The reader thread ends with the pipe, which ended with the process.
        let rest = self.lines.iter().collect();
        (status, rest, stderr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        wait_child(&mut self.child, Duration::ZERO);
    }
}

/// A temporary folder as traversable as production's `/var/lib` (0755), so that a
/// state dir jobd makes inside it is as exposed as in production (a 0700 temporary folder
/// hid a state dir readable by every user once before). It is under the build's target
/// dir, not `/tmp`: a job with a mount namespace gets a `/tmp` of its own and would not
/// see a file a test leaves for it there.
pub fn public_tempdir() -> tempfile::TempDir {
    let tmp = profile_dir()
        .parent()
        .expect("a profile folder lives in the target dir")
        .join("tmp");
    std::fs::create_dir_all(&tmp).expect("the target dir's tmp/");
    let dir = tempfile::tempdir_in(tmp).expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `jobd pki init --out DIR`: CA, server certificate, and admin, alice and bob.
pub fn pki_init(dir: &Path) {
    let out = output(
        Command::new(jobd_bin())
            .args(["pki", "init", "--out"])
            .arg(dir),
        JOBC_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate's validity, relative to now.
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// Valid from five minutes ago for a day.
    pub fn current() -> Validity {
        let now = time::OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::minutes(5),
            not_after: now + time::Duration::days(1),
        }
    }
}

/// Issues a certificate from the CA in `pki` (`ca.pem`, `ca-key.pem`) and writes it as
/// `NAME.pem` and `NAME-key.pem` there. `subject` is the whole subject: (OID, value)
/// pairs in order, so a test can give none, two CNs or odd O values. A server
/// certificate gets `sans` and the server-auth purpose; a client one the client-auth one.
pub fn issue(
    pki: &Path,
    name: &str,
    subject: &[(&[u64], &str)],
    sans: &[&str],
    server: bool,
    validity: Validity,
) {
    let read = |file: &str| std::fs::read_to_string(pki.join(file)).expect("read the CA");
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("CA certificate");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("SANs");
    params.distinguished_name = DistinguishedName::new();
    for (oid, value) in subject {
        // rcgen keeps one value per attribute type, but encodes a spelled-out OID under
        // its OID; the named type and a custom one thus give two attributes of one type.
        let taken = params
            .distinguished_name
            .iter()
            .any(|(ty, _)| *ty == rcgen::DnType::from_oid(oid));
        let ty = if taken {
            rcgen::DnType::CustomDnType(oid.to_vec())
        } else {
            rcgen::DnType::from_oid(oid)
        };
        params.distinguished_name.push(ty, *value);
    }
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(pki.join(format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(pki.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
}

/// Writes a self-signed CA as `ca.pem` and `ca-key.pem` in `dir`.
pub fn self_signed_ca(dir: &Path, name: &str) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let validity = Validity::current();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key).expect("self-sign");
    std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("ca-key.pem"), key.serialize_pem()).expect("write");
}

pub const CN: &[u64] = &[2, 5, 4, 3];
pub const O: &[u64] = &[2, 5, 4, 10];

/// A running `jobd serve`, its log collected as it comes (and its errors echoed).
pub struct Jobd {
    child: Option<Child>,
    /// The port of the first address.
    pub port: u16,
    /// Every address jobd listens on, from its address file, the first first.
    pub addrs: Vec<std::net::SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    // Holds the address file; dropped with jobd.
    _address_dir: tempfile::TempDir,
}

impl Jobd {
    /// Starts `jobd serve` on 127.0.0.1 port 0 with these TLS files and state dir (and
    /// `extra` flags), and reads the port it bound from its address file. Returns the exit
    /// status and the log if jobd exits before it listens.
    pub fn spawn(
        state: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Result<Jobd, (ExitStatus, Vec<String>)> {
        Jobd::spawn_with(&jobd_bin(), "info", state, ca, cert, key, extra)
    }

    /// As [`Jobd::spawn`], with another jobd binary and log filter (`JOBD_LOG`).
    pub fn spawn_with(
        jobd: &Path,
        log_filter: &str,
        state: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Result<Jobd, (ExitStatus, Vec<String>)> {
        Jobd::spawn_listening("127.0.0.1:0", jobd, log_filter, state, ca, cert, key, extra)
    }

    /// As [`Jobd::spawn_with`], on the address `listen`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_listening(
        listen: &str,
        jobd: &Path,
        log_filter: &str,
        state: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Result<Jobd, (ExitStatus, Vec<String>)> {
        let address_dir = tempfile::tempdir().expect("a folder for the address file");
        let address_file = address_dir.path().join("address");
        let mut child = Command::new(jobd)
            .arg("serve")
            .args(["--listen", listen, "--state-dir"])
            .arg(state)
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--address-file")
            .arg(&address_file)
            .args(extra)
            .env("JOBD_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobd");
        let log = collect_log(child.stderr.take().expect("piped"));
        let deadline = Instant::now() + START_TIMEOUT;
        let addrs = loop {
            if let Ok(text) = std::fs::read_to_string(&address_file) {
                let addrs: Vec<std::net::SocketAddr> = text
                    .lines()
                    .map(|line| {
                        line.parse()
                            .unwrap_or_else(|e| panic!("jobd's address file holds {text:?}: {e}"))
                    })
                    .collect();
                assert!(!addrs.is_empty(), "jobd's address file is empty");
                break addrs;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Its last words may still be on their way through the pipe.
                std::thread::sleep(Duration::from_millis(50));
                return Err((status, log.lock().expect("log lock").clone()));
            }
            if Instant::now() > deadline {
                wait_child(&mut child, Duration::ZERO);
                panic!(
                    "jobd did not write its address file within {START_TIMEOUT:?}: {:?}",
                    log.lock().expect("log lock")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Jobd {
            child: Some(child),
            port: addrs[0].port(),
            addrs,
            log,
            _address_dir: address_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until a line of jobd's log satisfies `pred`; returns it.
    pub fn wait_log(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        wait_for(&format!("jobd to log {what}"), timeout, || {
            found = self.log().into_iter().find(|l| pred(l));
            found.is_some()
        });
        found.expect("found")
    }

    pub fn signal(&self, sig: i32) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for jobd to exit; kills it and fails past `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("not waited for yet");
        wait_child(&mut child, timeout).unwrap_or_else(|| {
            panic!(
                "jobd did not exit within {timeout:?}; its log: {:#?}",
                self.log()
            )
        })
    }

    /// SIGTERM, then the exit status (jobd stops its running jobs first).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(EXIT_TIMEOUT);
    }
}

impl Drop for Jobd {
    /// A test that failed half-way still ends its jobd: SIGTERM (which stops the jobs),
    /// then SIGKILL if jobd has not exited in time.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            signal(child, libc::SIGTERM);
            wait_child(child, EXIT_TIMEOUT);
        }
    }
}

/// Keeps every line of jobd's log, echoing errors and warnings, until jobd closes it: a
/// log that nobody drained would block jobd once the pipe filled.
fn collect_log(stderr: std::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" ERROR ") || line.contains(" WARN ") {
                eprintln!("jobd: {line}");
            }
            lines.lock().expect("log lock").push(line);
        }
    });
    log
}

/// A PKI from `jobd pki init`, a state dir, and one jobd serving with them.
pub struct Server {
    pub jobd: Jobd,
    pub pki: PathBuf,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts with extra `jobd serve` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = public_tempdir();
        let pki = dir.path().join("pki");
        pki_init(&pki);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let jobd = Server::spawn_jobd(dir.path(), &pki, &extra).expect("jobd did not start");
        Server {
            jobd,
            pki,
            dir,
            extra,
        }
    }

    fn spawn_jobd(
        dir: &Path,
        pki: &Path,
        extra: &[String],
    ) -> Result<Jobd, (ExitStatus, Vec<String>)> {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Jobd::spawn(
            &dir.join("state"),
            &pki.join("ca.pem"),
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            &extra,
        )
    }

    /// Another jobd on the same state dir and PKI (refused while this one runs).
    pub fn spawn_second(&self) -> Result<Jobd, (ExitStatus, Vec<String>)> {
        Server::spawn_jobd(self.dir.path(), &self.pki, &self.extra)
    }

    /// Kills jobd with SIGKILL, as a crash would, and starts a new one on the same state.
    pub fn crash_and_restart(&mut self) {
        self.jobd.kill();
        self.jobd = self.spawn_second().expect("jobd did not restart");
    }

    /// Ends jobd (SIGKILL when `crash`, else SIGTERM) and starts a new one on the same
    /// state and port, so that clients connected to the first can reach the second.
    pub fn restart_on_the_same_port(&mut self, crash: bool) {
        if crash {
            self.jobd.kill();
        } else {
            let status = self.jobd.terminate();
            assert_eq!(status.code(), Some(0), "jobd exited with {status:?}");
        }
        self.jobd = self.spawn_on_the_same_port();
    }

    /// Another jobd on the same state dir, PKI and port, once this one has exited.
    pub fn spawn_on_the_same_port(&self) -> Jobd {
        let listen = format!("127.0.0.1:{}", self.jobd.port);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Jobd::spawn_listening(
            &listen,
            &jobd_bin(),
            "info",
            &self.dir.path().join("state"),
            &self.pki.join("ca.pem"),
            &self.pki.join("server.pem"),
            &self.pki.join("server-key.pem"),
            &extra,
        )
        .expect("jobd did not restart on its port")
    }

    /// Stops jobd with SIGTERM and starts a new one on the same state.
    pub fn restart(&mut self) {
        let status = self.jobd.terminate();
        assert_eq!(status.code(), Some(0), "jobd exited with {status:?}");
        self.jobd = self.spawn_second().expect("jobd did not restart");
    }

    /// SIGTERM to jobd; asserts that it exits with code 0 in time.
    pub fn shutdown(mut self) {
        let status = self.jobd.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "jobd exited with {status:?} after SIGTERM; its log: {:#?}",
            self.jobd.log()
        );
    }

    pub fn server(&self) -> String {
        format!("localhost:{}", self.jobd.port)
    }

    /// jobc with the connection variables set for `user` (a certificate in the PKI).
    pub fn jobc_cmd(&self, user: &str) -> Command {
        let mut cmd = Command::new(jobc_bin());
        cmd.env("JOBC_SERVER", self.server())
            .env("JOBC_CA", self.pki.join("ca.pem"))
            .env("JOBC_CERT", self.pki.join(format!("{user}.pem")))
            .env("JOBC_KEY", self.pki.join(format!("{user}-key.pem")));
        cmd
    }

    pub fn jobc(&self, user: &str, args: &[&str]) -> Output {
        output(self.jobc_cmd(user).args(args), JOBC_TIMEOUT)
    }

    /// Runs jobc and expects success; returns stdout.
    pub fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.jobc(user, args);
        assert!(
            out.status.success(),
            "jobc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// `jobc start ARGS...` as `user`; returns the job id.
    pub fn start_job(&self, user: &str, args: &[&str]) -> String {
        let mut all = vec!["start"];
        all.extend_from_slice(args);
        self.ok(user, &all).trim_end().to_string()
    }

    pub fn status_json(&self, user: &str, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(user, &["status", "-o", "json", id])).expect("JSON")
    }

    /// Waits until `jobc status ID` prints `expected`.
    pub fn wait_status(&self, user: &str, id: &str, expected: &str) {
        let mut got = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got != format!("{expected}\n") {
            assert!(
                Instant::now() < deadline,
                "status stayed {got:?}, expected {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
            got = self.ok(user, &["status", id]);
        }
    }
}

/// (exit code, stderr) of a jobc run.
pub fn failure(out: &Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A process's start time (field 22 of `/proc/PID/stat`, in clock ticks since boot),
/// which tells it from a later process that reuses its PID; `None` if it is gone.
pub fn start_time(pid: i64) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 3 (state) is fields[0], so field 22 is fields[19].
    Some((fields.get(19)?.parse().ok()?, state))
}

/// Whether the process that had PID `pid` and start time `started` is gone (exited,
/// maybe a zombie not yet reaped, or its PID now someone else's).
pub fn process_gone(pid: i64, started: u64) -> bool {
    match start_time(pid) {
        None => true,
        Some((t, state)) => t != started || state == 'Z' || state == 'X',
    }
}

/// Connection settings for `user` (a certificate in `pki`) to a jobd on this port.
pub fn target(pki: &Path, user: &str, port: u16) -> jobc::client::Target {
    jobc::client::Target {
        server: format!("localhost:{port}"),
        ca: pki.join("ca.pem"),
        cert: pki.join(format!("{user}.pem")),
        key: pki.join(format!("{user}-key.pem")),
        connect_timeout: jobc::client::DEFAULT_CONNECT_TIMEOUT,
    }
}

impl Server {
    /// Connection settings for `user`, for an in-process client.
    pub fn target(&self, user: &str) -> jobc::client::Target {
        target(&self.pki, user, self.jobd.port)
    }
}

/// A tmpfs of `size` (`1m`) mounted at a new folder `path`, unmounted when dropped (lazily,
/// so never left behind, even by a test that fails with files open in it).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir(path).expect("the mount point");
        let target = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path");
        let options = std::ffi::CString::new(format!("size={size},mode=0755")).expect("options");
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"jobworker-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid path; a lazy unmount does not fail for a busy mount.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = std::io::Error::last_os_error();
            eprintln!(
                "cannot unmount the test's tmpfs at {}: {error}",
                self.0.display()
            );
        }
    }
}

/// Kills each job of the state dir `state` that is still alive, by the pid and start time
/// its record holds, so that only this test's processes are touched: a test that fails
/// before it stops its server would leave its jobs running in sessions of their own.
pub fn kill_recorded_jobs(state: &Path) {
    let Ok(dirs) = std::fs::read_dir(state.join("jobs")) else {
        return;
    };
    for dir in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(dir.path().join("job.json")) else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let (Some(pid), Some(ticks)) = (record["pid"].as_i64(), record["start_ticks"].as_u64())
        else {
            continue;
        };
        if ticks != 0 && start_time(pid).is_some_and(|(t, _)| t == ticks) {
            // SAFETY: kill has no memory preconditions. The job leads its own session
            // and process group (and is PID 1 of its PID namespace, if it has one).
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A loopback port bound by this test on which nothing listens: a connection to it is
/// refused, and, unlike a port bound and released, no other process can take it meanwhile.
/// Closed with the returned descriptor.
pub fn port_without_listener() -> (OwnedFd, u16) {
    // SAFETY: socket has no memory effects; a valid descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: sockaddr_in is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr and len are valid for the calls and describe a sockaddr_in.
    unsafe {
        let p = (&raw mut addr).cast::<libc::sockaddr>();
        assert_eq!(libc::bind(raw, p, len), 0, "bind");
        assert_eq!(libc::getsockname(raw, p, &mut len), 0, "getsockname");
    }
    (fd, u16::from_be(addr.sin_port))
}
