//! Signalling every process of a job at once.
//!
//! Without cgroups "every process" is the job's process group (the job runs in its own
//! session, so its pgid is its pid). A process that calls `setsid` escapes a group but not
//! a cgroup; the cgroup variant joins this type when cgroups are on.

use std::io;

#[derive(Debug)]
pub(crate) enum Processes {
    Group { pgid: i32 },
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
        }
    }
}
