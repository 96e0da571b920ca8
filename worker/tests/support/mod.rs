//! What the worker's integration tests share: a worker that cleans up after its test.
//! Each test file uses a part of it.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::Path;

use worker::{Config, Worker};

/// Stops every job still running and waits until each has written its final record.
/// A job's end is visible before its record is synced, so deleting the state dir right
/// after a job ended races that write and can leave a stray folder behind; a test that
/// fails midway would leave its jobs running. `Worker::shutdown` is async, and this runs
/// in `Drop` inside the test's runtime, so it gets a thread and a runtime of its own.
pub fn settle(worker: &Worker) {
    let worker = worker.clone();
    let settled = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(worker.shutdown()))
    })
    .join();
    if !matches!(settled, Ok(Ok(()))) {
        eprintln!("the test's worker could not be shut down: it may leave jobs or files");
    }
}

/// A worker that settles (see [`settle`]) when it is dropped, also when its test fails.
pub struct Settling(pub Worker);

impl Deref for Settling {
    type Target = Worker;

    fn deref(&self) -> &Worker {
        &self.0
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        settle(&self.0);
    }
}

/// A worker on a state dir of its own, deleted once the worker has settled and its
/// threads are gone.
pub struct TestWorker {
    // Fields drop in this order: the worker first, then the dir.
    worker: Settling,
    dir: tempfile::TempDir,
}

impl TestWorker {
    pub fn new() -> TestWorker {
        TestWorker::with(|_| {})
    }

    pub fn with(tune: impl FnOnce(&mut Config)) -> TestWorker {
        let dir = tempfile::tempdir().expect("a scratch state dir");
        let mut config = Config::new(dir.path());
        tune(&mut config);
        let worker = Worker::new(config).expect("a worker on a fresh state dir");
        TestWorker {
            worker: Settling(worker),
            dir,
        }
    }

    /// The state dir; a test may keep its own files there too.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Deref for TestWorker {
    type Target = Worker;

    fn deref(&self) -> &Worker {
        &self.worker
    }
}
