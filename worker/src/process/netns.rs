//! Fresh network namespaces, made before they are needed.
//!
//! A new network namespace with its loopback up costs the kernel more than the whole
//! fork and exit of a process (BENCHMARKS.md has the figures). So they are made ahead (see [`crate::made_ahead`]), and a start enters one with `setns`
//! instead of creating it inside `clone3`. None is ever reused: a reused namespace would
//! let a job reach sockets an earlier job left behind.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::made_ahead::Ahead;
use crate::process::spawn;

/// Where a thread's own network namespace is; opening it pins that namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Keeps up to `capacity` unused network namespaces, each with `lo` up. Fails if this
/// process cannot create network namespaces or name its own.
pub fn pool(capacity: usize) -> io::Result<Ahead<OwnedFd>> {
    let home = File::open(THREAD_NETNS)?;
    Ahead::start("netns-ahead", capacity, move || fresh(&home))
}

/// A new network namespace with `lo` up. This thread enters it to set it up and returns
/// to `home`, its own, before anything else runs here.
fn fresh(home: &File) -> io::Result<OwnedFd> {
    // SAFETY: unshare changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let made = (|| {
        if !spawn::loopback_up() {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from(File::open(THREAD_NETNS)?))
    })();
    // SAFETY: setns to a namespace fd we hold; it affects only this thread.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        // The namespace just made is not handed out: this thread is now in it, and a
        // job given it would share it with the filler. Each retry fails the same way.
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
    fn every_namespace_is_new_and_the_filler_returns_home() {
        let before = own_netns_inode();
        let pool = pool(4).expect("pool");
        let mut seen = std::collections::HashSet::new();
        // Kept open: a closed namespace's inode number may be given to a later one.
        let mut taken = Vec::new();
        // More than the capacity, so most come from the filler thread.
        for i in 0..12 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let fd = loop {
                match pool.take() {
                    Some(fd) => break fd,
                    None => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "namespace {i} was never made"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
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
        // Namespaces are made on the filler thread only: this one never moved.
        assert_eq!(own_netns_inode(), before);
    }
}
