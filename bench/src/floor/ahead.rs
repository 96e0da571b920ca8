//! The floor's made-ahead pools, kept as jobd keeps its own (eight items, a filler
//! thread at nice 10), so a floor start pays for what a jobd start pays for and no more:
//! taking a network namespace or a folder that was made while nothing else ran.
//!
//! A take may leave the refill for later ([`Refill::Later`]): on two cores, a filler
//! that starts making a network namespace or a folder the moment a start takes one holds
//! a core in the kernel while that start's child needs it, which made a floor start
//! several times slower (BENCHMARKS.md, "The baselines"). A series of single starts
//! refills after each one has exec'd, which is the cheapest order for the same work; a
//! burst refills at once, as there is no "after" in it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::spawn;

/// jobd's capacity for both of its pools.
pub const CAPACITY: usize = 8;

/// When the filler replaces what a take took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// At once, while the taker goes on, as jobd's pools do.
    Now,
    /// Once the taker calls [`Ahead::refill`].
    Later,
}

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
    /// Takes whose refill waits for [`Ahead::refill`].
    deferred: usize,
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
                deferred: 0,
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
                            while !p.closed && p.ready.len() + p.deferred >= CAPACITY {
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

    /// An item made ahead, or else one made now; the filler makes its replacement now or
    /// once [`Ahead::refill`] is called.
    pub fn take(&self, refill: Refill) -> io::Result<T> {
        let (pool, changed) = &*self.shared;
        let mut p = pool.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = p.failed.take() {
            return Err(io::Error::new(
                e.kind(),
                format!("the floor's filler failed: {e}"),
            ));
        }
        if let Some(item) = p.ready.pop() {
            match refill {
                Refill::Now => changed.notify_one(),
                Refill::Later => p.deferred += 1,
            }
            return Ok(item);
        }
        drop(p);
        (self.make.lock().unwrap_or_else(PoisonError::into_inner))()
    }

    /// Lets the filler make up for takes that left their refill for later.
    pub fn refill(&self) {
        let (pool, changed) = &*self.shared;
        pool.lock().unwrap_or_else(PoisonError::into_inner).deferred = 0;
        changed.notify_one();
    }

    /// Refills the pool and waits until it is full, so a timed series starts as jobd's
    /// does after a pause.
    pub fn fill(&self) {
        self.refill();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A pool of numbers and how many its filler has made.
    fn counting() -> (Ahead<usize>, Arc<AtomicUsize>) {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let pool = Ahead::start(
            || Ok(usize::MAX),
            move || Ok(counter.fetch_add(1, Ordering::SeqCst)),
        )
        .expect("a pool");
        (pool, made)
    }

    #[test]
    fn a_take_refills_at_once_or_when_told() {
        let (pool, made) = counting();
        pool.fill();
        assert_eq!(made.load(Ordering::SeqCst), CAPACITY);
        pool.take(Refill::Later).expect("an item");
        pool.take(Refill::Later).expect("an item");
        // The filler is not told: it makes nothing, however long it is given.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(made.load(Ordering::SeqCst), CAPACITY);
        pool.fill();
        assert_eq!(made.load(Ordering::SeqCst), CAPACITY + 2);
        pool.take(Refill::Now).expect("an item");
        let deadline = Instant::now() + Duration::from_secs(10);
        while made.load(Ordering::SeqCst) < CAPACITY + 3 {
            assert!(Instant::now() < deadline, "no refill after a take");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_empty_pool_makes_on_the_takers_thread() {
        let (pool, _) = counting();
        pool.fill();
        for _ in 0..CAPACITY {
            assert_ne!(pool.take(Refill::Later).expect("made ahead"), usize::MAX);
        }
        assert_eq!(pool.take(Refill::Later).expect("made now"), usize::MAX);
    }
}
