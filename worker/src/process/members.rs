//! Signalling a job's program or every process of a job, and cleaning up after its leader
//! exits.
//!
//! With cgroups, "every process" is the job's cgroup: nothing escapes it, not even a
//! daemon that called `setsid`. Without cgroups it is the job's process group (the job runs
//! in its own session, so its pgid is its pid), which a `setsid` does escape.
//!
//! A job with a PID namespace has an init as its leader (see `worker/init/main.rs`): it is
//! told what to send to whom, since it alone sees the job's processes as the job does and
//! would otherwise pass a signal meant for all of them on to the program a second time.
//! SIGKILL to every process never depends on the init: it goes through the cgroup, or the
//! process group the init leads, whose death takes the whole namespace with it.

use std::io;
use std::time::Duration;

use crate::process::cgroup::{JobCgroup, Usage};
use crate::process::init;
use crate::process::spawn::ExitStatus;

/// How long the cgroup of an ended job may take to empty after `cgroup.kill`.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whom a signal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// The job's program: the process its argv started.
    Program,
    /// Every process of the job.
    All,
}

/// A job's processes: its leader (the program, or the init that runs it) and what holds
/// them all.
#[derive(Debug)]
pub(crate) struct Processes {
    leader: i32,
    /// Whether the leader is the job's init.
    init: bool,
    members: Members,
}

#[derive(Debug)]
enum Members {
    /// The leader's process group.
    Group,
    Cgroup(JobCgroup),
    /// A job restored from its record: nothing of it runs any more.
    Gone,
}

impl Processes {
    pub(crate) fn group(leader: i32, init: bool) -> Processes {
        Processes {
            leader,
            init,
            members: Members::Group,
        }
    }

    pub(crate) fn cgroup(leader: i32, init: bool, cgroup: JobCgroup) -> Processes {
        Processes {
            leader,
            init,
            members: Members::Cgroup(cgroup),
        }
    }

    pub(crate) fn gone(leader: i32) -> Processes {
        Processes {
            leader,
            init: false,
            members: Members::Gone,
        }
    }

    /// Sends `signal` to the job's program or to all of its processes. Callers guarantee
    /// the job's leader has not been reaped yet, so its pid (the pgid) cannot have been
    /// reused.
    pub(crate) fn signal(&self, signal: i32, to: Recipients) -> io::Result<()> {
        if matches!(self.members, Members::Gone) {
            return Ok(());
        }
        match (self.init, to) {
            (_, Recipients::All) if signal == libc::SIGKILL => self.signal_all(signal),
            (true, to) => init::order(self.leader, signal, to == Recipients::All),
            (false, Recipients::Program) => {
                // SAFETY: kill has no memory-safety preconditions.
                if unsafe { libc::kill(self.leader, signal) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            (false, Recipients::All) => self.signal_all(signal),
        }
    }

    /// Sends `signal` to every process of the job, without the init's help.
    fn signal_all(&self, signal: i32) -> io::Result<()> {
        match &self.members {
            Members::Group => {
                // SAFETY: kill has no memory-safety preconditions.
                if unsafe { libc::kill(-self.leader, signal) } < 0 {
                    let e = io::Error::last_os_error();
                    // ESRCH: nobody left in the group, which is what we wanted.
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(e);
                    }
                }
                Ok(())
            }
            Members::Cgroup(cgroup) => cgroup.signal(signal),
            Members::Gone => Ok(()),
        }
    }

    pub(crate) fn cgroup_path(&self) -> Option<std::path::PathBuf> {
        match &self.members {
            Members::Cgroup(cgroup) => Some(cgroup.path().to_path_buf()),
            _ => None,
        }
    }

    /// Usage so far (zero without cgroups).
    pub(crate) fn usage(&self) -> Usage {
        match &self.members {
            Members::Group | Members::Gone => Usage::default(),
            Members::Cgroup(cgroup) => cgroup.usage(),
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
        match &self.members {
            Members::Group | Members::Gone => {
                if let Err(e) = self.signal_all(libc::SIGKILL) {
                    tracing::warn!(error = %e, "cannot kill the job's remaining processes");
                }
                (wait(), Usage::default())
            }
            Members::Cgroup(cgroup) => {
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
