//! The floor's cgroups, where jobd has cgroups: each start gets a cgroup of its own made
//! as jobd makes a job's (a folder beside jobd's `jobs/`, at the same depth and with the
//! same controllers, opened for `CLONE_INTO_CGROUP`), and each end reads the usage jobd
//! reads for the final record and removes it. jobd writes no limits for a job that asks
//! for none, which is what the bench's jobs ask for, so neither does the floor.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The controllers jobd enables for its jobs.
const CONTROLLERS: &str = "+cpu +io +memory +pids";

/// The cgroup subtree of the jobd with pid `pid` (`<base>/jobd`, the parent of its
/// `server` and `jobs`), or `None` when jobd runs without cgroups: then it stays in the
/// cgroup it was started in instead of moving into `<base>/jobd/server`.
pub fn of_jobd(pid: u32) -> io::Result<Option<PathBuf>> {
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(jobd_top(&own, &mountinfo))
}

fn jobd_top(proc_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let own = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let top = own
        .strip_suffix("/jobd/server")
        .map(|base| format!("{base}/jobd"))?;
    let mount = worker::disk::cgroup2_mount(mountinfo)?;
    Some(mount.join(top.trim_start_matches('/')))
}

/// The floor's parent cgroup, `<jobd top>/bench-floor.<our pid>`, removed on drop.
pub struct Cgroups {
    dir: PathBuf,
    next: AtomicU64,
}

/// One start's cgroup.
pub struct JobCgroup {
    path: PathBuf,
    dir: OwnedFd,
}

impl JobCgroup {
    /// The open folder `CLONE_INTO_CGROUP` takes.
    pub fn fd(&self) -> &OwnedFd {
        &self.dir
    }
}

impl Cgroups {
    /// Makes the parent beside jobd's `jobs/` and enables the controllers for its
    /// children, as jobd does for `jobs/`.
    pub fn new(jobd_top: &Path) -> io::Result<Cgroups> {
        let dir = jobd_top.join(format!("bench-floor.{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| with_path(e, "create", &dir))?;
        let cgroups = Cgroups {
            dir,
            next: AtomicU64::new(0),
        };
        let control = cgroups.dir.join("cgroup.subtree_control");
        fs::write(&control, CONTROLLERS).map_err(|e| with_path(e, "write", &control))?;
        Ok(cgroups)
    }

    /// A start's share: the job's cgroup, made and opened.
    pub fn make(&self) -> io::Result<JobCgroup> {
        let path = self
            .dir
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        fs::create_dir(&path).map_err(|e| with_path(e, "create", &path))?;
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path);
        match dir {
            Ok(dir) => Ok(JobCgroup {
                path,
                dir: dir.into(),
            }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(with_path(e, "open", &path))
            }
        }
    }

    /// An end's share, once the job is reaped: the usage jobd records, then removal.
    pub fn end(&self, job: JobCgroup) -> io::Result<()> {
        for file in ["memory.events", "cpu.stat", "memory.peak"] {
            let path = job.path.join(file);
            // Missing files read as nothing, as in jobd (memory.peak came in 5.19).
            match fs::read_to_string(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(e, "read", &path)),
            }
        }
        drop(job.dir);
        fs::remove_dir(&job.path).map_err(|e| with_path(e, "remove", &job.path))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Starts that failed halfway may have left their (empty) cgroups.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!(
                "warning: cannot remove the floor's cgroup {}: {e}",
                self.dir.display()
            );
        }
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("the floor cannot {what} {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "24 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n\
                             25 1 0:23 / /proc rw - proc proc rw\n";

    #[test]
    fn jobd_with_cgroups_runs_in_its_server_cgroup() {
        assert_eq!(
            jobd_top("0::/system.slice/jobd.service/jobd/server\n", MOUNTINFO),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/jobd.service/jobd"
            ))
        );
        assert_eq!(
            jobd_top("0::/jobd/server\n", MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/jobd"))
        );
    }

    #[test]
    fn jobd_without_cgroups_stays_where_it_was_started() {
        assert_eq!(
            jobd_top("0::/user.slice/session-1.scope\n", MOUNTINFO),
            None
        );
        // A cgroup v1 line alone, or no cgroup2 mount: no cgroups either.
        assert_eq!(jobd_top("4:memory:/jobd/server\n", MOUNTINFO), None);
        assert_eq!(
            jobd_top("0::/jobd/server\n", "25 1 0:23 / /proc rw - proc proc rw\n"),
            None
        );
    }
}
