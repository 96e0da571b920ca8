//! The jobd under test: a real `jobd serve` from the release folder, on 127.0.0.1 with a
//! port the kernel picks, with its state and `jobd pki init` certificates in a scratch
//! folder, started by the tests' own `testkit`. Dropping it stops jobd with SIGTERM (by
//! its pid) and deletes the folder. jobd logs warnings only: a log line per request would
//! pile up in the harness for nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobc::client::Target;

use crate::binaries::Binaries;

pub struct Jobd {
    jobd: testkit::Jobd,
    pub port: u16,
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
    /// `jobd pki init`, then `jobd serve`; returns once jobd has written its address.
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
        let jobd = testkit::Jobd::spawn_with(
            &bins.jobd,
            "warn",
            &dir.path().join("state"),
            &pki.join("ca.pem"),
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            &[],
        )
        .map_err(|(status, log)| {
            anyhow::anyhow!(
                "jobd exited with {status} before listening:\n{}",
                log.join("\n")
            )
        })?;
        Ok(Jobd {
            port: jobd.port,
            jobd,
            jobc_bin: bins.jobc.clone(),
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.jobd.pid()
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
