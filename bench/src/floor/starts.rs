//! The floor of a server-side start, put together: take a network namespace made ahead,
//! make the job's output pipes, optionally claim a folder and write the first record,
//! make the job's cgroup where jobd has cgroups, clone into the namespaces (and the
//! cgroup) as the job's user and exec `true`; then reap it, read its usage and remove its
//! cgroup, and, with a record, write the final one durably. Timed one after another up to the exec, as
//! jobd's server-timing is, or 64 at a time on every core, as starts per second.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ahead::{self, Ahead, Refill};
use super::cgroup::{Cgroups, JobCgroup};
use super::record::{Folders, Recorded};
use super::spawn::{self, Program, Setup, Stack};

pub struct Floor {
    setup: Setup,
    program: Program,
    devnull: File,
    netns: Option<Ahead<OwnedFd>>,
    folders: Option<Folders>,
    cgroups: Option<Cgroups>,
}

/// A floor start that has exec'd.
struct Started {
    child: spawn::Child,
    _output: [OwnedFd; 2],
    record: Option<Recorded>,
    cgroup: Option<JobCgroup>,
}

impl Floor {
    /// `record`: the scratch folder for job folders (on the disk of jobd's state dir) and
    /// the length of jobd's records; `None` for starts without one. `cgroup`: jobd's
    /// cgroup subtree, where jobd has cgroups ([`super::cgroup::of_jobd`]).
    pub fn new(
        setup: Setup,
        record: Option<(&Path, usize)>,
        cgroup: Option<&Path>,
    ) -> io::Result<Floor> {
        Ok(Floor {
            setup,
            program: Program::true_()?,
            devnull: File::open("/dev/null")?,
            netns: setup.net.then(ahead::network_namespaces).transpose()?,
            folders: record
                .map(|(root, len)| Folders::new(root, len))
                .transpose()?,
            cgroups: cgroup.map(Cgroups::new).transpose()?,
        })
    }

    /// Refills the pools and waits for them to be full, as they are when a start comes
    /// after a pause.
    fn settle(&self) {
        if let Some(n) = &self.netns {
            n.fill();
        }
        if let Some(f) = &self.folders {
            f.fill();
        }
    }

    fn start(&self, stack: &mut Stack, refill: Refill) -> io::Result<Started> {
        let netns = self
            .netns
            .as_ref()
            .map(|pool| pool.take(refill))
            .transpose()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let record = self
            .folders
            .as_ref()
            .map(|folders| folders.start(refill))
            .transpose()?;
        let cgroup = self.cgroups.as_ref().map(Cgroups::make).transpose()?;
        let stdio = spawn::Stdio {
            stdin: self.devnull.as_fd(),
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
            netns: netns.as_ref().map(AsFd::as_fd),
            cgroup: cgroup.as_ref().map(|c| c.fd().as_fd()),
        };
        let child = spawn::start(self.setup, &self.program, &stdio, stack)?;
        Ok(Started {
            child,
            _output: [out_r, err_r],
            record,
            cgroup,
        })
    }

    /// Whether starts go into cgroups of their own, for the bench's output.
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    fn end(&self, started: Started) -> io::Result<()> {
        started.child.reap()?;
        if let (Some(cgroups), Some(cgroup)) = (&self.cgroups, started.cgroup) {
            cgroups.end(cgroup)?;
        }
        match (&self.folders, started.record) {
            (Some(folders), Some(record)) => folders.end(record),
            _ => Ok(()),
        }
    }

    /// `n` starts one after another, each timed up to its exec, after `warmup` untimed.
    /// Each finds its pools full: the floor of a start is one that takes what was made
    /// ahead (jobd's starts one at a time are slow enough that its own pools keep up),
    /// and refills them once it has exec'd (see [`super::ahead`]).
    pub fn latencies(&self, warmup: usize, n: usize) -> io::Result<Vec<Duration>> {
        on_a_thread_of_its_own(|| {
            let mut stack = Stack::new();
            let mut samples = Vec::with_capacity(n);
            for i in 0..warmup + n {
                self.settle();
                let t = Instant::now();
                let started = self.start(&mut stack, Refill::Later)?;
                let took = t.elapsed();
                self.end(started)?;
                if i >= warmup {
                    samples.push(took);
                }
            }
            Ok(samples)
        })
    }

    /// Starts per second with `concurrency` threads doing `total` in all, timed up to the
    /// last exec as jobd's bursts are. As in jobd, each start's end (the reap and the
    /// final record) is another thread's work, done meanwhile: `concurrency` threads take
    /// the started children in turn.
    pub fn rate(&self, total: usize, concurrency: usize) -> io::Result<f64> {
        self.settle();
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<Started>();
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            let enders: Vec<_> = (0..concurrency)
                .map(|_| {
                    scope.spawn(|| -> io::Result<()> {
                        loop {
                            let got = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            match got {
                                Ok(started) => self.end(started)?,
                                Err(_) => return Ok(()),
                            }
                        }
                    })
                })
                .collect();
            let t = Instant::now();
            let starters: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (tx, next) = (tx.clone(), &next);
                    scope.spawn(move || -> io::Result<()> {
                        let mut stack = Stack::new();
                        while next.fetch_add(1, Ordering::Relaxed) < total {
                            let started = self.start(&mut stack, Refill::Now)?;
                            tx.send(started)
                                .map_err(|_| io::Error::other("every floor ender failed"))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            drop(tx);
            let started = join_all(starters);
            let took = t.elapsed();
            let ended = join_all(enders);
            started.and(ended)?;
            Ok(total as f64 / took.as_secs_f64())
        })
    }
}

/// The first error of `threads`; the scope joins the rest.
fn join_all(threads: Vec<std::thread::ScopedJoinHandle<'_, io::Result<()>>>) -> io::Result<()> {
    threads.into_iter().try_for_each(|t| {
        t.join()
            .unwrap_or_else(|_| Err(io::Error::other("a floor thread panicked")))
    })
}

/// Runs `f` on a new thread: a start that finds its pool empty makes a network namespace
/// on the calling thread, which must then be one of the floor's own, never the runtime's.
fn on_a_thread_of_its_own<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the floor's thread panicked")))
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_bursts_start_every_job_and_record_each() {
        let root = tempfile::tempdir().expect("tempdir");
        let setup = Setup {
            pid: true,
            mount: true,
            net: true,
            user: Some((65534, 65534)),
        };
        let floor = Floor::new(setup, Some((root.path(), 500)), None).expect("floor");
        assert_eq!(floor.latencies(1, 4).expect("series").len(), 4);
        let rate = floor.rate(40, 8).expect("burst");
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        let jobs: Vec<_> = std::fs::read_dir(root.path().join("jobs"))
            .expect("jobs")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(jobs.len(), 5 + 40);
        for job in jobs {
            let record = std::fs::metadata(job.join("job.json")).expect("a record");
            assert_eq!(record.len(), 500);
            assert!(
                !job.join("job.json.reserve").exists(),
                "final record in its reserve"
            );
        }
    }
}
