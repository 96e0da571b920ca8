//! Fresh network namespaces, made before they are needed.
//!
//! A new network namespace with its loopback up costs this kernel most of a default
//! start (about 0.8 ms of CPU, against 0.16 ms for the whole fork and exit of a process).
//! A background thread keeps a few ready, so a start enters one with `setns` instead of
//! creating it inside `clone3`. Each namespace is handed out once and never returned:
//! reusing namespaces would let a job reach sockets an earlier job left behind. When the
//! pool is empty a start creates its namespace itself, as without a pool.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::spawn;

/// Where a thread's own network namespace is; opening it pins that namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Keeps up to `capacity` unused network namespaces, each with `lo` up.
pub struct NetnsPool {
    shared: Arc<Shared>,
    filler: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a namespace is taken or the pool closes.
    changed: Condvar,
    capacity: usize,
}

struct State {
    ready: Vec<OwnedFd>,
    closed: bool,
}

impl NetnsPool {
    /// Starts the thread that fills the pool. Fails if this process cannot create network
    /// namespaces or name its own.
    pub fn start(capacity: usize) -> io::Result<NetnsPool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(capacity),
                closed: false,
            }),
            changed: Condvar::new(),
            capacity,
        });
        // The first namespace is made here, so a process that cannot make them finds out
        // now rather than in a thread nobody reads.
        let home = File::open(THREAD_NETNS)?;
        let first = fresh(&home)?;
        shared.lock().ready.push(first);
        let filler = std::thread::Builder::new()
            .name("netns-pool".into())
            .stack_size(64 * 1024)
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.fill(&home)
            })?;
        Ok(NetnsPool {
            shared,
            filler: Some(filler),
        })
    }

    /// An unused namespace, if one is ready; the caller's job is its only user.
    pub fn take(&self) -> Option<OwnedFd> {
        let fd = self.shared.lock().ready.pop();
        if fd.is_some() {
            self.shared.changed.notify_one();
        }
        fd
    }

    /// Namespaces ready now.
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tops the pool up whenever a namespace is taken, until it closes.
    fn fill(&self, home: &File) {
        loop {
            {
                let mut state = self.lock();
                while !state.closed && state.ready.len() >= self.capacity {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.closed {
                    return;
                }
            }
            // Made without the lock held: a start never waits for a namespace.
            match fresh(home) {
                Ok(fd) => self.lock().ready.push(fd),
                Err(e) => {
                    // Starts then make their own, and fail with a clear error if the
                    // kernel refuses.
                    tracing::warn!(error = %e, "cannot make network namespaces ahead of starts");
                    return;
                }
            }
        }
    }
}

/// A new network namespace with `lo` up. This thread enters it to set it up and returns
/// to `home`, its own, before anything else runs here.
fn fresh(home: &File) -> io::Result<OwnedFd> {
    // SAFETY: unshare changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let made = (|| {
        // SAFETY: loopback_up makes plain system calls on a socket it closes.
        if !unsafe { spawn::loopback_up() } {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from(File::open(THREAD_NETNS)?))
    })();
    // SAFETY: setns to a namespace fd we hold; it affects only this thread.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        // This thread is stranded in the new namespace: stop using it for anything.
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot return to the server's network namespace: {e}"),
        ));
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &OwnedFd) -> u64 {
        File::from(fd.try_clone().expect("dup"))
            .metadata()
            .expect("fstat")
            .ino()
    }

    fn own_netns_inode() -> u64 {
        std::fs::metadata(THREAD_NETNS).expect("stat").ino()
    }

    // Needs root, like every namespace test here (the README says to run tests as root).
    #[test]
    fn every_namespace_is_new_and_handed_out_once() {
        let before = own_netns_inode();
        let pool = NetnsPool::start(4).expect("pool");
        let mut seen = std::collections::HashSet::new();
        // Kept open: a closed namespace's inode number may be given to a later one.
        let mut taken = Vec::new();
        // More than the capacity: the filler must keep up, and never repeat one.
        for _ in 0..12 {
            let fd = loop {
                match pool.take() {
                    Some(fd) => break fd,
                    None => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            };
            let ino = inode(&fd);
            assert_ne!(
                ino, before,
                "the pool handed out the server's own namespace"
            );
            assert!(seen.insert(ino), "namespace {ino} handed out twice");
            taken.push(fd);
        }
        // The filler thread went back home each time; so did this one.
        assert_eq!(own_netns_inode(), before);
    }

    #[test]
    fn the_pool_refills_to_capacity_and_stops_when_dropped() {
        let pool = NetnsPool::start(3).expect("pool");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.ready() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool never filled"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(pool.ready(), 3, "the pool grew past its capacity");
        drop(pool); // joins the filler: a hang here fails the test by timeout
    }
}
