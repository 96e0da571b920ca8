//! Things a start needs, made before it asks.
//!
//! Some of a start's work does not depend on the request: a network namespace, a folder
//! with an empty log. A background thread keeps a few of each ready, so the start only
//! takes one. Each item is handed out once; a start that finds none makes its own, so the
//! pool changes how fast a start is, never what it gets.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the filler waits after a failure before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Up to `capacity` items made by a background thread. Dropping the pool stops the thread
/// and drops the items still unused.
pub struct Ahead<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    filler: Option<JoinHandle<()>>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item is taken or the pool closes.
    changed: Condvar,
    capacity: usize,
}

struct State<T> {
    ready: Vec<T>,
    closed: bool,
}

impl<T: Send + 'static> Ahead<T> {
    /// Starts the thread `name` that keeps `capacity` items ready, and returns once it has
    /// made the first, so a `make` that cannot work fails here rather than in a thread
    /// nobody reads. `make` only ever runs on that thread: making a namespace moves the
    /// making thread into it for a moment, and that must never be a caller's thread.
    pub fn start<F>(name: &str, capacity: usize, mut make: F) -> io::Result<Self>
    where
        F: FnMut() -> io::Result<T> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(capacity),
                closed: false,
            }),
            changed: Condvar::new(),
            capacity,
        });
        let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
        let filler = std::thread::Builder::new()
            .name(name.into())
            .stack_size(64 * 1024)
            .spawn({
                let shared = Arc::clone(&shared);
                let name = name.to_string();
                move || {
                    lower_priority();
                    match make() {
                        Ok(first) => {
                            shared.lock().ready.push(first);
                            let _ = first_tx.send(Ok(()));
                            shared.fill(&name, make);
                        }
                        Err(e) => {
                            let _ = first_tx.send(Err(e));
                        }
                    }
                }
            })?;
        let first = first_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the filler thread died")));
        if let Err(e) = first {
            let _ = filler.join();
            return Err(e);
        }
        Ok(Ahead {
            shared,
            filler: Some(filler),
        })
    }

    /// An item, if one is ready.
    pub fn take(&self) -> Option<T> {
        let item = self.shared.lock().ready.pop();
        if item.is_some() {
            self.shared.changed.notify_one();
        }
        item
    }

    /// Items ready now.
    #[cfg(test)]
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }
}

impl<T: Send + 'static> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
        self.shared.lock().ready.clear();
    }
}

/// The filler works ahead of starts, not against them: at nice 10 it yields the CPU to
/// starts and jobs. Best effort; on Linux `setpriority` with `who = 0` sets this thread's.
fn lower_priority() {
    // SAFETY: setpriority has no memory effects.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tops the pool up whenever an item is taken, until it closes. After a failed
    /// `make` (a full disk, a namespace limit) it waits [`RETRY_AFTER`] and tries again.
    fn fill(&self, name: &str, mut make: impl FnMut() -> io::Result<T>) {
        let mut failing = false;
        loop {
            {
                let mut state = self.lock();
                if failing {
                    state = self
                        .changed
                        .wait_timeout_while(state, RETRY_AFTER, |s| !s.closed)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
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
            // Made without the lock held: a start never waits for the filler.
            match make() {
                Ok(item) => {
                    if failing {
                        tracing::info!(pool = name, "making ahead of starts again");
                    }
                    failing = false;
                    self.lock().ready.push(item);
                }
                Err(e) => {
                    // Meanwhile starts make their own, and report any error themselves.
                    if !failing {
                        tracing::warn!(pool = name, error = %e, "cannot make ahead of starts; retrying");
                    }
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    fn wait_ready<T: Send>(pool: &Ahead<T>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.ready() < n {
            assert!(Instant::now() < deadline, "the pool never reached {n}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn items_are_handed_out_once_and_refilled_to_capacity() {
        let (made_tx, made) = std::sync::mpsc::channel();
        let pool = Ahead::start("test", 3, {
            let mut n = 0;
            move || {
                n += 1;
                let _ = made_tx.send(());
                Ok(n)
            }
        })
        .unwrap();
        wait_ready(&pool, 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            wait_ready(&pool, 1);
            assert!(
                seen.insert(pool.take().unwrap()),
                "an item was handed out twice"
            );
        }
        wait_ready(&pool, 3);
        for i in 0..13 {
            made.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("item {i} was never made"));
        }
        // The pool is full: the filler waits for a take. Whatever it would make next would
        // come within this bound; it must not come at all.
        assert!(
            made.recv_timeout(Duration::from_millis(100)).is_err(),
            "the pool grew past its capacity"
        );
        assert_eq!(pool.ready(), 3);
    }

    #[test]
    fn a_failing_make_fails_the_start_and_pauses_the_filler() {
        let err = Ahead::<()>::start("test", 2, || Err(io::Error::other("no"))).err();
        assert_eq!(err.map(|e| e.to_string()).as_deref(), Some("no"));

        // When each call to make began; all but the first fail.
        let calls = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let pool = Ahead::start("test", 2, {
            let calls = Arc::clone(&calls);
            move || {
                let mut calls = calls.lock().unwrap();
                calls.push(Instant::now());
                match calls.len() {
                    1 => Ok(()),
                    _ => Err(io::Error::other("gone")),
                }
            }
        })
        .unwrap();
        let wait_calls = |n: usize| {
            let deadline = Instant::now() + RETRY_AFTER * 5;
            while calls.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "make was never called {n} times");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        assert!(pool.take().is_some());
        wait_calls(2); // the refill after the take, which failed
        assert!(pool.take().is_none(), "an item appeared after make failed");
        wait_calls(3); // the retry
        let gap = {
            let calls = calls.lock().unwrap();
            calls[2] - calls[1]
        };
        assert!(gap >= RETRY_AFTER, "the filler did not pause: {gap:?}");
        // Now in its next pause, which closing the pool cuts short.
        let t = Instant::now();
        drop(pool);
        assert!(
            t.elapsed() < RETRY_AFTER / 2,
            "closing waited out the pause"
        );
    }

    #[test]
    fn dropping_the_pool_stops_the_filler_and_drops_unused_items() {
        let live = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let pool = Ahead::start("test", 4, {
            let live = Arc::clone(&live);
            move || {
                live.fetch_add(1, Ordering::SeqCst);
                Ok(Counted(Arc::clone(&live)))
            }
        })
        .unwrap();
        wait_ready(&pool, 4);
        let kept = pool.take().unwrap();
        drop(pool); // joins the filler: a hang fails the test by timeout
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "only the taken item is left"
        );
        drop(kept);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
