//! Signalling every process of a job at once, and cleaning up after its leader exits.
//!
//! With cgroups, "every process" is the job's cgroup: nothing escapes it, not even a
//! daemon that called `setsid`. Without cgroups it is the job's process group (the job runs
//! in its own session, so its pgid is its pid), which a `setsid` does escape.

use std::io;
use std::time::Duration;

use crate::process::cgroup::{JobCgroup, Usage};
use crate::process::spawn::ExitStatus;

/// How long the cgroup of an ended job may take to empty after `cgroup.kill`.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) enum Processes {
    Group {
        pgid: i32,
    },
    Cgroup {
        cgroup: JobCgroup,
    },
    /// A job restored from its record: nothing of it runs any more.
    Gone,
}

impl Processes {
    /// Sends `signal` to every process of the job. Callers guarantee the job's leader has not
    /// been reaped yet, so its pid (the pgid) cannot have been reused.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        match self {
            Processes::Group { pgid } => {
                // SAFETY: kill has no memory-safety preconditions.
                if unsafe { libc::kill(-pgid, signal) } < 0 {
                    let e = io::Error::last_os_error();
                    // ESRCH: nobody left in the group, which is what we wanted.
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(e);
                    }
                }
                Ok(())
            }
            Processes::Cgroup { cgroup } => cgroup.signal(signal),
            Processes::Gone => Ok(()),
        }
    }

    pub(crate) fn cgroup_path(&self) -> Option<std::path::PathBuf> {
        match self {
            Processes::Cgroup { cgroup } => Some(cgroup.path().to_path_buf()),
            _ => None,
        }
    }

    /// Usage so far (zero without cgroups).
    pub(crate) fn usage(&self) -> Usage {
        match self {
            Processes::Group { .. } | Processes::Gone => Usage::default(),
            Processes::Cgroup { cgroup } => cgroup.usage(),
        }
    }

    /// Reaps the leader with `wait` and kills whatever it left behind: a job ends with its
    /// main process, as a container ends with its PID 1. For a process group the rest is
    /// killed first, while the leader's zombie still pins the pgid; a cgroup has no such
    /// race, and is emptied, read for usage and removed after.
    pub(crate) fn finish(
        &self,
        wait: impl FnOnce() -> io::Result<ExitStatus>,
    ) -> (io::Result<ExitStatus>, Usage) {
        match self {
            Processes::Group { .. } | Processes::Gone => {
                if let Err(e) = self.signal(libc::SIGKILL) {
                    tracing::warn!(error = %e, "cannot kill the job's remaining processes");
                }
                (wait(), Usage::default())
            }
            Processes::Cgroup { cgroup } => {
                let status = wait();
                if let Err(e) = cgroup.signal(libc::SIGKILL) {
                    tracing::warn!(cgroup = %cgroup.path().display(), error = %e, "cannot kill the job's remaining processes");
                }
                match cgroup.wait_empty(EMPTY_TIMEOUT) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(cgroup = %cgroup.path().display(), "job cgroup did not empty")
                    }
                    Err(e) => {
                        tracing::error!(cgroup = %cgroup.path().display(), error = %e, "cannot watch job cgroup")
                    }
                }
                let usage = cgroup.usage();
                if let Err(e) = cgroup.remove() {
                    tracing::error!(cgroup = %cgroup.path().display(), error = %e, "cannot remove job cgroup");
                }
                (status, usage)
            }
        }
    }
}
