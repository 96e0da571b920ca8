//! Records that never lie: a job is recorded before its program runs (see the exec gate in
//! [`crate::process::spawn`]), and its end is recorded even when the state dir has filled up since.
//!
//! The end needs room on a disk that may be full by then, so each job folder keeps room for
//! its final record from the start: `job.json.reserve`, allocated (`posix_fallocate`) when
//! the folder is made and grown at the start if the job's record is larger. The final
//! record is written into that file, cut to its length, synced and renamed over
//! `job.json`: none of that needs a block the filesystem does not already hold for it
//! (ext4, xfs and tmpfs honour the allocation). A start that cannot record the job, or
//! cannot reserve that room, fails, and its program never runs.
//!
//! Should the final record still fail (an I/O error, or a folder without its reserve), the
//! capture thread retries with backoff until it succeeds, the job is removed, or the worker
//! shuts down; meanwhile the job's status says so (`record_error`) and so does the log.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::process::spawn::Credentials;
use crate::spec::{JobId, JobSpec};
use crate::state::record::{self, JobRecord};
use crate::status::JobInfo;

/// The room kept for a job's final record.
pub const RESERVE_FILE: &str = "job.json.reserve";

/// The first record's file until it is renamed to `job.json`: made with the folder, so a
/// start creates no inode (see [`crate::state::folder`]).
pub const FIRST_RECORD_FILE: &str = "job.json.first";

/// What every folder reserves when it is made: a page holds a typical record.
const RESERVE_BYTES: u64 = 4096;

/// What a final record may hold beyond the first: the end, the usage numbers and a note
/// on lost output (the notes the worker writes are under 200 bytes).
const FINAL_SLACK: u64 = 1024;

/// The first and the longest pause between attempts at a final record.
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(50);
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(5);

/// Whether `e` says the filesystem (or the user's quota on it) has no room left.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Makes `dir`'s reserve for the final record.
pub(crate) fn reserve(dir: &Path) -> io::Result<()> {
    let file = crate::state::private::options()
        .write(true)
        .create_new(true)
        .open(dir.join(RESERVE_FILE))?;
    allocate(&file, RESERVE_BYTES)
}

/// Makes `dir`'s empty file for the first record.
pub(crate) fn first_record_file(dir: &Path) -> io::Result<File> {
    crate::state::private::options()
        .write(true)
        .create_new(true)
        .open(dir.join(FIRST_RECORD_FILE))
}

/// Makes sure `file` holds `len` bytes of allocated room.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor we own. glibc writes zeros where the
    // filesystem has no fallocate, which reserves the blocks just as well.
    let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// The record of a job whose process waits at the exec gate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn first_record(
    id: JobId,
    spec: &JobSpec,
    credentials: Option<Credentials>,
    pid: i32,
    start_ticks: u64,
    cgroup: Option<PathBuf>,
    started_at: SystemTime,
) -> JobRecord {
    let info = JobInfo::started(id, spec, credentials, pid, started_at);
    JobRecord::new(info, start_ticks, cgroup)
}

/// Writes the record of a starting job into `file`, the folder's empty
/// [`FIRST_RECORD_FILE`], renames it to `job.json`, and grows the reserve if the final
/// record may not fit. Not flushed to the device: what it guards against is a crash of
/// jobd, which keeps the page cache, whereas a power loss ends the job too.
pub(crate) fn write_first(dir: &Path, file: &File, record: &JobRecord) -> io::Result<()> {
    let json = record::encode(record)?;
    file.write_all_at(&json, 0)?;
    fs::rename(dir.join(FIRST_RECORD_FILE), dir.join(record::RECORD_FILE))?;
    let len = json.len() as u64;
    if len + FINAL_SLACK > RESERVE_BYTES {
        let file = crate::state::private::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(RESERVE_FILE))?;
        allocate(&file, len + FINAL_SLACK)?;
    }
    Ok(())
}

/// Replaces `dir/job.json` atomically and durably, in the room reserved for it if there is
/// any (which it then uses up), else in a new file.
pub(crate) fn write_final(dir: &Path, record: &JobRecord) -> io::Result<()> {
    let reserve = dir.join(RESERVE_FILE);
    let file = match File::options().write(true).open(&reserve) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return record::replace_record(dir, record, true).map(|_| ())
        }
        Err(e) => return Err(e),
    };
    let json = record::encode(record)?;
    file.write_all_at(&json, 0)?;
    file.set_len(json.len() as u64)?;
    file.sync_all()?;
    fs::rename(&reserve, dir.join(record::RECORD_FILE))?;
    File::open(dir)?.sync_all()
}

/// Tells capture threads that retry a final record when to stop: at shutdown.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    shutting_down: Mutex<bool>,
    changed: Condvar,
}

impl Retries {
    /// From now on, a final record that fails is tried once more and then given up.
    pub(crate) fn shut_down(&self) {
        *self.lock() = true;
        self.changed.notify_all();
    }

    /// Wakes every retry early (a job was removed, say).
    pub(crate) fn wake(&self) {
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.shutting_down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `pause`; returns whether the worker is shutting down.
    pub(crate) fn pause(&self, pause: Duration) -> bool {
        let down = self.lock();
        if *down {
            return true;
        }
        let (down, _) = self
            .changed
            .wait_timeout(down, pause)
            .unwrap_or_else(PoisonError::into_inner);
        *down
    }
}
