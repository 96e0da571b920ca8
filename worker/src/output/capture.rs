//! The per-job capture thread: the single writer of a job's output log.
//!
//! One thread per running job waits with `poll(2)` on the job's stdout and stderr pipes
//! and its pidfd. Each readable pipe yields one record, written to the log with its header
//! in a single `write()`, after which the committed length is published to readers. A thread rather than an async task because every step here is a blocking
//! file or pipe operation, and the thread keeps them off the server's runtime.
//!
//! Each wake-up drains a pipe into one buffer before writing, so a job that writes in
//! small pieces still makes records of up to `MAX_RECORD_DATA`: a busy job costs two
//! syscalls per 256 KiB.
//!
//! When the pidfd reports the exit, the job is reaped and whatever is still in the pipes
//! is drained; the log ends when both pipes reach EOF, or are empty once the job's
//! processes are dead (a process that escaped the job may keep a pipe open forever). The
//! job is shown as ended only then, so its status never runs ahead of its output.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::job::Job;
use crate::output::logfile::{self, Stream, FILE_HEADER_LEN, MAX_RECORD_DATA, RECORD_HEADER_LEN};
use crate::process::spawn::{self, Child};

/// Output bytes (payload, without record headers) that capture threads of this process
/// have written to logs: one process-wide sum, so a server can report how fast output fills
/// the state dir without asking every job. One relaxed add per record.
static STORED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The output bytes this process has stored in job logs since it started: a count that
/// only grows, for metrics. Process-wide, since a process runs one worker (tests aside).
pub fn stored_bytes() -> u64 {
    STORED_BYTES.load(Ordering::Relaxed)
}

/// Payload room a job's buffer starts with, before its output shows it needs more.
const FIRST_RECORD_DATA: usize = 16 * 1024;

/// What the capture thread owns for one job.
pub(crate) struct Capture {
    pub child: Child,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub log: File,
    /// Most payload bytes to store; the rest is discarded after a marker record.
    pub max_output: Option<u64>,
}

/// How long output may keep coming after the job's processes are gone (from a process
/// that escaped the job and still holds a pipe) before the end is shown anyway.
const MAX_DRAIN_BEFORE_END: Duration = Duration::from_secs(2);

/// Shows the end and marks the output finished even if the loop below panics, so no
/// waiter or follower waits forever.
struct FinishGuard<'a>(&'a Job);

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        self.0.publish_end();
        self.0.finish_output();
    }
}

pub(crate) fn run(job: &Job, capture: Capture) {
    let _finish = FinishGuard(job);
    let Capture {
        child,
        stdout,
        stderr,
        log,
        max_output,
    } = capture;
    let pipes = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)];
    let mut open = [true, true];
    let mut exited: Option<Instant> = None;
    let mut sink = Sink {
        log,
        committed: FILE_HEADER_LEN,
        room: max_output.unwrap_or(u64::MAX),
        cap: max_output,
        storing: true,
    };
    // Quiet jobs keep a small buffer; one that fills it gets the largest record size.
    let mut buf = vec![0u8; RECORD_HEADER_LEN + FIRST_RECORD_DATA];

    loop {
        let mut fds: [libc::pollfd; 3] = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 3];
        for (i, (fd, _)) in pipes.iter().enumerate() {
            if open[i] {
                fds[i].fd = fd.as_raw_fd();
            }
        }
        if exited.is_none() {
            fds[2].fd = child.pidfd.as_raw_fd();
        }
        if fds.iter().all(|p| p.fd < 0) {
            break;
        }
        // Once the job has exited, only drain what is already there: never wait.
        let timeout = if exited.is_some() { 0 } else { -1 };
        // SAFETY: `fds` is a valid array; negative fds are ignored by poll.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(job = %job.id(), error = %e, "poll failed; output capture ends");
            break;
        }
        if ready == 0 && exited.is_some() {
            break;
        }

        let before = sink.committed;
        for (i, (fd, stream)) in pipes.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let (filled, end) = drain(fd, &mut buf[RECORD_HEADER_LEN..]);
            if filled > 0 {
                sink.store(job, *stream, &mut buf[..RECORD_HEADER_LEN + filled]);
            }
            if RECORD_HEADER_LEN + filled == buf.len() {
                buf.resize(RECORD_HEADER_LEN + MAX_RECORD_DATA, 0);
            }
            match end {
                Drained::Open => {}
                Drained::Eof => open[i] = false,
                Drained::Failed(e) => {
                    tracing::warn!(job = %job.id(), error = %e, "reading job output failed");
                    open[i] = false;
                }
            }
        }
        if sink.committed != before {
            job.publish_committed(sink.committed);
        }
        if fds[2].revents != 0 {
            job.reap(|| spawn::wait_job(&child));
            exited = Some(Instant::now());
        }
        if exited.is_some_and(|t| t.elapsed() > MAX_DRAIN_BEFORE_END) {
            job.publish_end();
        }
    }

    // All output is in the log: the end may show. Readers may finish now; making the log
    // durable need not hold them up.
    job.publish_end();
    job.finish_output();
    if let Err(e) = sink.log.sync_data() {
        job.set_output_error(format!("output could not be synced to disk: {e}"));
    }
}

/// How a drain of one pipe ended.
enum Drained {
    /// Nothing more to read for now (or the buffer is full).
    Open,
    Eof,
    Failed(io::Error),
}

/// Reads what a pipe holds, up to the buffer's size, so that a job writing small chunks
/// still makes large records: fewer records, writes and reader wake-ups.
fn drain(fd: &OwnedFd, buf: &mut [u8]) -> (usize, Drained) {
    let mut filled = 0;
    while filled < buf.len() {
        match read_chunk(fd, &mut buf[filled..]) {
            Ok(0) => return (filled, Drained::Eof),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return (filled, Drained::Failed(e)),
        }
    }
    (filled, Drained::Open)
}

/// The job's log as the capture thread writes it: what is committed, and whether (and how
/// much more) output is stored.
struct Sink {
    log: File,
    committed: u64,
    /// Payload bytes that may still be stored under the output cap.
    room: u64,
    cap: Option<u64>,
    /// False once the cap is reached or a write failed: later output is drained and dropped.
    storing: bool,
}

impl Sink {
    /// Stores the payload in `record[RECORD_HEADER_LEN..]`, as far as the cap allows.
    fn store(&mut self, job: &Job, stream: Stream, record: &mut [u8]) {
        if !self.storing {
            return;
        }
        let n = record.len() - RECORD_HEADER_LEN;
        let keep = n.min(self.room.min(usize::MAX as u64) as usize);
        self.room -= keep as u64;
        let result = append(
            &mut self.log,
            &mut record[..RECORD_HEADER_LEN + keep],
            stream,
        )
        .and_then(|written| {
            self.committed += written;
            STORED_BYTES.fetch_add(keep as u64, Ordering::Relaxed);
            if keep < n {
                self.cap_reached(job)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            // Keep draining the pipes so the job never blocks on a full disk; the loss is
            // reported in the job's status.
            self.storing = false;
            job.set_output_error(if crate::state::durable::is_full(&e) {
                "output not stored: the state dir is full".to_string()
            } else {
                format!("output not stored: {e}")
            });
        }
    }

    /// Says in the stream that the cap is reached, then stops storing.
    fn cap_reached(&mut self, job: &Job) -> io::Result<()> {
        self.storing = false;
        let cap = self.cap.unwrap_or(0);
        let note = format!("output cap of {cap} bytes reached; later output is discarded\n");
        job.set_output_error(note.trim_end().to_string());
        let mut marker = vec![0u8; RECORD_HEADER_LEN + note.len()];
        marker[RECORD_HEADER_LEN..].copy_from_slice(note.as_bytes());
        self.committed += append(&mut self.log, &mut marker, Stream::System)?;
        Ok(())
    }
}

/// Frames the payload in `record[RECORD_HEADER_LEN..]` and appends it; returns its size.
fn append(log: &mut File, record: &mut [u8], stream: Stream) -> io::Result<u64> {
    if record.len() == RECORD_HEADER_LEN {
        return Ok(0);
    }
    logfile::encode_header(record, stream, logfile::now_unix_nanos());
    log.write_all(record)?;
    Ok(record.len() as u64)
}

fn read_chunk(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a valid, exclusively borrowed buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
