//! Reading a job's output: replay from the file, then follow the writer's progress.
//!
//! A reader holds an open file, a position and a `watch` receiver of the committed length:
//! O(1) memory however long the log, no buffer in the writer, and a reader that stops
//! reading costs nobody anything. Each batch is read into one buffer and split into
//! records that share it. What the page cache holds is read right on the async runtime
//! (`preadv2` with `RWF_NOWAIT`, a memory copy); only a read that would wait for the disk
//! takes a trip to the blocking pool.
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
use crate::output::logfile::{self, Continued, Record, RECORD_HEADER_LEN};
use crate::output::seek::{LogPosition, Start};

/// How much of the job's log is committed, and whether the writer has finished.
/// Readers never read past `committed`, so they never see a half-written record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub committed: u64,
    pub done: bool,
}

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
    /// A reader from `start`; without `follow`, it ends at `committed`, what the log held
    /// when the read began.
    pub(crate) fn new(
        file: File,
        progress: watch::Receiver<Progress>,
        follow: bool,
        committed: u64,
        start: Start,
    ) -> Self {
        READERS.fetch_add(1, Ordering::Relaxed);
        LogReader {
            file: Arc::new(file),
            pos: start.pos,
            progress,
            snapshot: (!follow).then_some(committed),
            continued: start.continued,
        }
    }

    /// Where the next batch starts: a read that begins here later goes on with no gap
    /// and no duplicate byte.
    pub fn position(&self) -> LogPosition {
        match self.continued {
            Some(c) => LogPosition {
                offset: self.pos - (RECORD_HEADER_LEN + c.taken) as u64,
                skip: c.taken as u64,
            },
            None => LogPosition {
                offset: self.pos,
                skip: 0,
            },
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
        // Followers at the head of a live job and warm replays find their bytes in the
        // page cache: read those here. Only what would wait for the disk goes to the
        // blocking pool.
        let mut buf = Vec::with_capacity(len);
        fill(&self.file, &mut buf, len, self.pos, Wait::No)
            .map_err(|e| Error::io("cannot read job output", e))?;
        if buf.len() < len {
            let (file, pos) = (Arc::clone(&self.file), self.pos);
            buf = tokio::task::spawn_blocking(move || {
                fill(&file, &mut buf, len, pos, Wait::Yes).map(|()| buf)
            })
            .await
            .map_err(|e| Error::io("output reader task failed", std::io::Error::other(e)))?
            .map_err(|e| Error::io("cannot read job output", e))?;
        }
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

/// Whether [`fill`] may wait for the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Only what the page cache holds (`RWF_NOWAIT`); stop at the first byte that is not.
    No,
}

/// Reads the bytes from `pos + buf.len()` up to `pos + len` into `buf`'s spare capacity,
/// with no zero-filling first: the page cache copy is the only pass over the bytes. With
/// `Wait::No` it may stop early, also where the filesystem cannot tell (`EOPNOTSUPP`).
fn fill(file: &File, buf: &mut Vec<u8>, len: usize, pos: u64, wait: Wait) -> std::io::Result<()> {
    while buf.len() < len {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        let (ptr, room, at) = (
            spare.as_mut_ptr().cast(),
            spare.len(),
            (pos + done as u64) as libc::off_t,
        );
        let fd = file.as_raw_fd();
        let n = match wait {
            // SAFETY: the kernel writes at most `room` bytes into memory the Vec owns.
            Wait::Yes => unsafe { libc::pread(fd, ptr, room, at) },
            Wait::No => {
                let iov = libc::iovec {
                    iov_base: ptr,
                    iov_len: room,
                };
                // SAFETY: as above, through one iovec.
                unsafe { libc::preadv2(fd, &iov, 1, at, libc::RWF_NOWAIT) }
            }
        };
        if n > 0 {
            // SAFETY: the read initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(done + n as usize) };
            continue;
        }
        if n == 0 {
            // Only committed bytes are read, so the file cannot end before them.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let e = std::io::Error::last_os_error();
        match (e.raw_os_error(), wait) {
            (Some(libc::EINTR), _) => {}
            // Not cached, or a kernel or filesystem without RWF_NOWAIT: the waiting read
            // does the rest (and reports any real error).
            (Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS), Wait::No) => {
                return Ok(())
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_read_that_stops_at_uncached_bytes_is_finished_by_a_waiting_one() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // Evict the (clean) pages, so the non-waiting read finds some or none cached.
        // SAFETY: advice on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let (pos, len) = (1000, data.len() - 2000);
        let mut buf = Vec::with_capacity(len);
        fill(&f, &mut buf, len, pos, Wait::No).unwrap();
        assert!(buf.len() <= len);
        fill(&f, &mut buf, len, pos, Wait::Yes).unwrap();
        assert!(buf == data[1000..data.len() - 1000]);
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"short").unwrap();
        let mut buf = Vec::with_capacity(10);
        let err = fill(&f, &mut buf, 10, 0, Wait::Yes).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, b"short");
    }
}
