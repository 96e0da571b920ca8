//! The floor's made-ahead pools, kept as jobd keeps its own (eight items, a filler
//! thread at nice 10), so a floor start pays for what a jobd start pays for and no more:
//! taking a network namespace or a folder that was made while nothing else ran.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::spawn;

/// jobd's capacity for both of its pools.
pub const CAPACITY: usize = 8;

type Make<T> = Box<dyn FnMut() -> io::Result<T> + Send>;

/// Up to [`CAPACITY`] items made by a background thread; a take that finds none makes
/// its own on the caller's thread, as a jobd start does.
pub struct Ahead<T: Send + 'static> {
    shared: Arc<(Mutex<Pool<T>>, Condvar)>,
    make: Mutex<Make<T>>,
    filler: Option<JoinHandle<()>>,
}

struct Pool<T> {
    ready: Vec<T>,
    closed: bool,
    failed: Option<io::Error>,
}

impl<T: Send + 'static> Ahead<T> {
    /// `make` runs on the filler thread, and on a taker's thread when the pool is empty;
    /// `make_for_filler` is the filler's own copy of it.
    pub fn start(
        make: impl FnMut() -> io::Result<T> + Send + 'static,
        mut make_for_filler: impl FnMut() -> io::Result<T> + Send + 'static,
    ) -> io::Result<Ahead<T>> {
        let shared = Arc::new((
            Mutex::new(Pool {
                ready: Vec::with_capacity(CAPACITY),
                closed: false,
                failed: None,
            }),
            Condvar::new(),
        ));
        let filler = std::thread::Builder::new()
            .name("floor-ahead".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    // SAFETY: setpriority has no memory effects; `who = 0` is this thread.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                    let (pool, changed) = &*shared;
                    loop {
                        {
                            let mut p = pool.lock().unwrap_or_else(PoisonError::into_inner);
                            while !p.closed && p.ready.len() >= CAPACITY {
                                p = changed.wait(p).unwrap_or_else(PoisonError::into_inner);
                            }
                            if p.closed {
                                return;
                            }
                        }
                        let made = make_for_filler();
                        let mut p = pool.lock().unwrap_or_else(PoisonError::into_inner);
                        match made {
                            Ok(item) => p.ready.push(item),
                            Err(e) => {
                                p.failed = Some(e);
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Ahead {
            shared,
            make: Mutex::new(Box::new(make)),
            filler: Some(filler),
        })
    }

    /// An item made ahead, or else one made now.
    pub fn take(&self) -> io::Result<T> {
        let (pool, changed) = &*self.shared;
        let mut p = pool.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = p.failed.take() {
            return Err(io::Error::new(
                e.kind(),
                format!("the floor's filler failed: {e}"),
            ));
        }
        if let Some(item) = p.ready.pop() {
            changed.notify_one();
            return Ok(item);
        }
        drop(p);
        (self.make.lock().unwrap_or_else(PoisonError::into_inner))()
    }

    /// Waits until the pool is full, so a timed series starts as jobd's does after a pause.
    pub fn fill(&self) {
        while self
            .shared
            .0
            .lock()
            .map(|p| p.ready.len() < CAPACITY && p.failed.is_none() && !p.closed)
            .unwrap_or(false)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl<T: Send + 'static> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.shared
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.1.notify_all();
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
    }
}

/// Network namespaces with `lo` up, made as jobd makes them: the making thread enters a
/// new one, opens it and returns home.
pub fn network_namespaces() -> io::Result<Ahead<OwnedFd>> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let filler_home = home.try_clone()?;
    Ahead::start(
        move || fresh_netns(&home),
        move || fresh_netns(&filler_home),
    )
}

fn fresh_netns(home: &File) -> io::Result<OwnedFd> {
    // SAFETY: unshare changes only this thread's network namespace, and it returns below.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let made = spawn::loopback_up()
        .and_then(|()| File::open("/proc/thread-self/ns/net"))
        .map(OwnedFd::from);
    // SAFETY: setns back to the namespace this thread came from; affects this thread only.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        // The floor's threads end on any error, so none goes on in the wrong namespace.
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot return to the bench's own network namespace: {e}"),
        ));
    }
    made
}
