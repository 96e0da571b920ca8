//! pueue, the baseline: a `pueued` of our own with its config, state and unix socket in a
//! scratch folder, stopped with SIGTERM by its pid when dropped. Two client configs share
//! that daemon: the default one (the client reads task logs straight from disk) and one
//! with `read_local_logs: false` (the daemon serves the log over its socket, as jobd does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::jobd::{scratch_dir, stop};

pub struct Pueued {
    child: Child,
    dir: tempfile::TempDir,
}

fn config(dir: &Path, read_local_logs: bool) -> String {
    let d = dir.display();
    format!(
        "shared:\n  pueue_directory: {d}/data\n  runtime_directory: {d}/run\n  \
         alias_file: {d}/pueue_aliases.yml\n  use_unix_socket: true\n  \
         unix_socket_path: {d}/run/pueue.socket\n  pid_path: {d}/run/pueue.pid\n  \
         daemon_cert: {d}/certs/daemon.cert\n  daemon_key: {d}/certs/daemon.key\n  \
         shared_secret_path: {d}/secret\n\
         client:\n  read_local_logs: {read_local_logs}\n"
    )
}

impl Pueued {
    /// Starts `pueued -c CONFIG` in the foreground; returns once its socket answers.
    pub fn start() -> Result<Pueued> {
        let dir = scratch_dir("jobworker-bench-pueue.")?;
        for sub in ["data", "run", "certs"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        std::fs::write(dir.path().join("pueue.yml"), config(dir.path(), true))?;
        std::fs::write(
            dir.path().join("pueue-remote.yml"),
            config(dir.path(), false),
        )?;
        let child = Command::new("pueued")
            .arg("-c")
            .arg(dir.path().join("pueue.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start pueued")?;
        let pueued = Pueued { child, dir };
        pueued.wait_ready()?;
        Ok(pueued)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket().exists() && self.run(&["status"])?.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pueued did not answer within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/pueue.socket")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `pueue` client command for this daemon; `remote_logs` makes the daemon serve logs.
    pub fn command(&self, remote_logs: bool) -> Command {
        let file = if remote_logs {
            "pueue-remote.yml"
        } else {
            "pueue.yml"
        };
        let mut cmd = Command::new("pueue");
        cmd.arg("-c")
            .arg(self.dir.path().join(file))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a `pueue` client command and collects its output.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(false)
            .args(args)
            .output()
            .with_context(|| format!("cannot run pueue {}", args.join(" ")))
    }

    /// `pueue add --print-task-id -- COMMAND`: returns the task id.
    pub fn add(&self, command: &str) -> Result<String> {
        let out = self.run(&["add", "--print-task-id", "--", command])?;
        if !out.status.success() {
            bail!("pueue add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `pueue wait ID`: blocks until the task is done.
    pub fn wait(&self, id: &str) -> Result<()> {
        let out = self.run(&["wait", id, "--quiet"])?;
        if !out.status.success() {
            bail!(
                "pueue wait failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Removes finished tasks and their logs.
    pub fn clean(&self) {
        let _ = self.run(&["clean"]);
    }
}

impl Drop for Pueued {
    fn drop(&mut self) {
        stop(&mut self.child, "pueued", Duration::from_secs(10));
    }
}
