//! The jobd under test: a real `jobd serve` from the release folder, on 127.0.0.1 with a
//! port the kernel picks, with its state and `jobd pki init` certificates in a scratch
//! folder. Dropping it stops jobd with SIGTERM (by its pid) and deletes the folder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobc::client::Target;

use crate::binaries::Binaries;

pub struct Jobd {
    child: Child,
    pub port: u16,
    /// `elapsed_us` of every successful Start jobd has logged: its own time from the
    /// handler's entry to the program's exec.
    start_times: Arc<Mutex<Vec<u64>>>,
    jobc_bin: PathBuf,
    dir: tempfile::TempDir,
}

/// A scratch folder on a real disk: the temp dir, unless that is a tmpfs (then
/// `/var/tmp`), because scenarios compare jobd's disk writes with plain file writes.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let tmp = std::env::temp_dir();
    let base = if is_tmpfs(&tmp) {
        PathBuf::from("/var/tmp")
    } else {
        tmp
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a scratch folder in {}", base.display()))
}

fn is_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct from a valid C string path.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == TMPFS_MAGIC
    }
}

impl Jobd {
    /// `jobd pki init`, then `jobd serve`; returns once jobd has logged its address.
    pub fn start(bins: &Binaries) -> Result<Jobd> {
        let dir = scratch_dir("jobworker-bench.")?;
        let pki = dir.path().join("pki");
        let out = Command::new(&bins.jobd)
            .args(["pki", "init", "--out"])
            .arg(&pki)
            .output()
            .context("cannot run jobd pki init")?;
        if !out.status.success() {
            bail!(
                "jobd pki init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut child = Command::new(&bins.jobd)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server-key.pem"))
            .env("JOBD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start jobd")?;
        let start_times = Arc::new(Mutex::new(Vec::new()));
        let port = match wait_listening(&mut child, Arc::clone(&start_times)) {
            Ok(port) => port,
            Err(e) => {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Jobd {
            child,
            port,
            start_times,
            jobc_bin: bins.jobc.clone(),
            dir,
        })
    }

    /// Takes the Start timings jobd has logged since the last call, in microseconds.
    pub fn take_start_times(&self) -> Vec<u64> {
        std::mem::take(&mut *self.start_times.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The scratch folder that holds the state dir (so: on the same disk).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Where jobd keeps a job's files (its record and its output log).
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("state").join("jobs").join(id)
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connection settings for the in-process client, as admin.
    pub fn target(&self) -> Target {
        let pki = self.pki();
        Target {
            server: self.server(),
            ca: pki.join("ca.pem"),
            cert: pki.join("admin.pem"),
            key: pki.join("admin-key.pem"),
            connect_timeout: jobc::client::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// A `jobc` command that talks to this jobd as admin.
    pub fn jobc(&self) -> Command {
        let pki = self.pki();
        let mut cmd = Command::new(&self.jobc_bin);
        cmd.env("JOBC_SERVER", self.server())
            .env("JOBC_CA", pki.join("ca.pem"))
            .env("JOBC_CERT", pki.join("admin.pem"))
            .env("JOBC_KEY", pki.join("admin-key.pem"))
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Jobd {
    fn drop(&mut self) {
        stop(&mut self.child, "jobd", Duration::from_secs(30));
    }
}

/// SIGTERM by pid, up to `grace` to exit, then SIGKILL.
pub fn stop(child: &mut Child, what: &str, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "warning: {what} (pid {}) ignored SIGTERM; killing it",
        child.id()
    );
    signal(child, libc::SIGKILL);
    let _ = child.wait();
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling, by its pid, a process we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Reads jobd's log until it names its address; keeps draining the log afterwards so
/// jobd never blocks writing it. jobd logs every request: the Start timings are kept,
/// errors and warnings echoed, the rest discarded.
fn wait_listening(child: &mut Child, start_times: Arc<Mutex<Vec<u64>>>) -> Result<u16> {
    let stderr = child.stderr.take().context("jobd's stderr is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut told = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !told {
                if let Some(port) = port_in(&line) {
                    let _ = tx.send(Ok(port));
                    told = true;
                    seen.clear();
                    continue;
                }
                seen.push(line);
            } else if line.contains(" ERROR ") || line.contains(" WARN ") {
                eprintln!("jobd: {line}");
            } else if let Some(us) = start_elapsed_us(&line) {
                start_times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(us);
            }
        }
        if !told {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(port)) => Ok(port),
        Ok(Err(log)) => bail!("jobd exited before listening:\n{log}"),
        Err(_) => bail!("jobd did not say where it listens within 30 s"),
    }
}

/// The `elapsed_us` of a successful Start in a jobd request log line.
fn start_elapsed_us(line: &str) -> Option<u64> {
    if !line.contains("jobd::service: ok ") || !line.contains(r#" method="Start" "#) {
        return None;
    }
    line.split("elapsed_us=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn port_in(line: &str) -> Option<u16> {
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}
