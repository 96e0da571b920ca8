//! Reading a job's output: replay from the file, then follow the writer's progress.
//!
//! A reader holds an open file, a position and a `watch` receiver of the committed length:
//! O(1) memory however long the log, no buffer in the writer, and a reader that stops
//! reading costs nobody anything. Each batch is read with one `pread` (off the async
//! runtime) and split into records that share that buffer.
//!
//! Memory across readers is bounded too: every batch buffer holds permits of one
//! process-wide [`READ_BUDGET`] until its last record is dropped (once the server has
//! encoded it), so a thousand followers of a fast job wait their turn instead of each
//! holding a buffer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore, SemaphorePermit};

use crate::error::Error;
use crate::job::Progress;
use crate::logfile::{self, Continued, Record, FILE_HEADER_LEN};

/// Bounds on the bytes one batch reads. A batch is the budget's fair share among the
/// readers that exist: one reader replaying a log gets large batches (few messages), a
/// thousand followers get small ones, so the copies the server keeps per stream (the
/// encoded message waiting for the client) stay bounded too. A batch may end inside a
/// record: the reader hands out the part it has and continues the record next time.
const MIN_BATCH_BYTES: usize = 32 * 1024;
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Readers alive in this process, for the fair share above.
static READERS: AtomicUsize = AtomicUsize::new(0);

fn batch_bytes() -> usize {
    let readers = READERS.load(Ordering::Relaxed).max(1);
    (READ_BUDGET_BYTES / readers).clamp(MIN_BATCH_BYTES, MAX_BATCH_BYTES)
}

/// Bytes of batch buffers that may exist at once in this process, over all readers.
pub const READ_BUDGET_BYTES: usize = 32 * 1024 * 1024;
static READ_BUDGET: Semaphore = Semaphore::const_new(READ_BUDGET_BYTES);

/// A batch buffer that gives its share of the budget back when the last record of it
/// is dropped.
struct BudgetedBuffer {
    buf: Vec<u8>,
    _permit: SemaphorePermit<'static>,
}

impl AsRef<[u8]> for BudgetedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// An independent cursor over one job's output.
pub struct LogReader {
    file: Arc<File>,
    pos: u64,
    progress: watch::Receiver<Progress>,
    /// For a non-following read, the committed length when the read began.
    snapshot: Option<u64>,
    /// Set when `pos` is inside a record's payload.
    continued: Option<Continued>,
}

impl Drop for LogReader {
    fn drop(&mut self) {
        READERS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LogReader {
    pub(crate) fn new(file: File, progress: watch::Receiver<Progress>, follow: bool) -> Self {
        READERS.fetch_add(1, Ordering::Relaxed);
        let snapshot = (!follow).then(|| progress.borrow().committed);
        LogReader {
            file: Arc::new(file),
            pos: FILE_HEADER_LEN,
            progress,
            snapshot,
            continued: None,
        }
    }

    /// The next batch of records, or `None` once the output has been read to its end
    /// (for a follower: the job has ended and every byte was delivered).
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Record>>, Error> {
        loop {
            let Progress { committed, done } = *self.progress.borrow_and_update();
            let end = self.snapshot.unwrap_or(committed);
            if self.pos < end {
                return self.read_batch(end).await.map(Some);
            }
            if self.snapshot.is_some() || done {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                // The job (and with it the writer) is gone; what was committed was read.
                return Ok(None);
            }
        }
    }

    async fn read_batch(&mut self, end: u64) -> Result<Vec<Record>, Error> {
        let len = (end - self.pos).min(batch_bytes() as u64) as usize;
        let permit = READ_BUDGET
            .acquire_many(len as u32)
            .await
            .map_err(|e| Error::io("output reader budget closed", std::io::Error::other(e)))?;
        let (file, pos) = (Arc::clone(&self.file), self.pos);
        let buf = tokio::task::spawn_blocking(move || read_exact_at(&file, len, pos))
            .await
            .map_err(|e| Error::io("output reader task failed", std::io::Error::other(e)))?
            .map_err(|e| Error::io("cannot read job output", e))?;
        let buf = Bytes::from_owner(BudgetedBuffer {
            buf,
            _permit: permit,
        });
        let split = logfile::split_records(buf, self.continued)
            .map_err(|e| Error::io("cannot read job output", e))?;
        if split.used == 0 {
            // Committed data ends on a record boundary, so a batch always makes progress.
            return Err(Error::io(
                "cannot read job output",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated output record"),
            ));
        }
        let (records, used) = (split.records, split.used);
        self.continued = split.continued;
        self.pos += used as u64;
        Ok(records)
    }
}

/// Reads `len` bytes at `pos` into a new buffer without zero-filling it first: the page
/// cache copy is the only pass over the bytes.
fn read_exact_at(file: &File, len: usize, pos: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let at = pos + done as u64;
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        // SAFETY: pread writes at most `spare.len()` bytes into memory the Vec owns.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        if n > 0 {
            // SAFETY: pread initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
        } else if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(buf)
}
