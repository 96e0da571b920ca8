//! A job's folder and record, written the way jobd writes them and nothing more: folders
//! made ahead (the log with its header, the room for the final record, an empty file for
//! the first), renamed into place at a start; the first record written into its file and
//! renamed to `job.json` without a flush; the final one written into the reserved room,
//! flushed, renamed over it, and the folder flushed.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(test)]
use super::ahead::CAPACITY;
use super::ahead::{Ahead, Refill};

/// The log file's header in jobd's format is this long.
const LOG_HEADER: usize = 8;
/// What jobd reserves for a final record.
const RESERVE: i64 = 4096;

/// A folder made ahead, not yet a job's.
pub struct Spare {
    dir: PathBuf,
    first: File,
    _log: File,
}

/// The jobs' folders of one floor run, under a scratch folder of the bench's.
pub struct Folders {
    jobs: PathBuf,
    next: AtomicU64,
    spares: Ahead<Spare>,
    /// A record of the size jobd's are.
    record: Vec<u8>,
}

/// A job's folder after its start, waiting for its final record.
pub struct Recorded {
    dir: PathBuf,
}

impl Folders {
    /// Makes `root/spare` and `root/jobs`; `record_len` is how long jobd's records are.
    pub fn new(root: &Path, record_len: usize) -> io::Result<Folders> {
        let spare = root.join("spare");
        let jobs = root.join("jobs");
        for dir in [&spare, &jobs] {
            DirBuilder::new().mode(0o700).create(dir)?;
        }
        let made = Arc::new(AtomicU64::new(0));
        let maker = |spare: PathBuf, made: Arc<AtomicU64>| {
            move || make_spare(&spare.join(made.fetch_add(1, Ordering::Relaxed).to_string()))
        };
        Ok(Folders {
            spares: Ahead::start(maker(spare.clone(), Arc::clone(&made)), maker(spare, made))?,
            jobs,
            next: AtomicU64::new(0),
            record: vec![b' '; record_len],
        })
    }

    pub fn fill(&self) {
        self.spares.fill();
    }

    /// A start's share: claims a folder and writes the first record.
    pub fn start(&self, refill: Refill) -> io::Result<Recorded> {
        let spare = self.spares.take(refill)?;
        let dir = self
            .jobs
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        fs::rename(&spare.dir, &dir)?;
        spare.first.write_all_at(&self.record, 0)?;
        fs::rename(dir.join("job.json.first"), dir.join("job.json"))?;
        Ok(Recorded { dir })
    }

    /// An end's share: the final record, durably.
    pub fn end(&self, job: Recorded) -> io::Result<()> {
        let reserve = job.dir.join("job.json.reserve");
        let file = OpenOptions::new().write(true).open(&reserve)?;
        file.write_all_at(&self.record, 0)?;
        file.set_len(self.record.len() as u64)?;
        file.sync_all()?;
        fs::rename(&reserve, job.dir.join("job.json"))?;
        File::open(&job.dir)?.sync_all()
    }
}

fn make_spare(dir: &Path) -> io::Result<Spare> {
    DirBuilder::new().mode(0o700).create(dir)?;
    let private = || {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true).mode(0o600);
        o
    };
    let mut log = private().open(dir.join("output.log"))?;
    log.write_all(&[0u8; LOG_HEADER])?;
    let reserve = private().open(dir.join("job.json.reserve"))?;
    // SAFETY: plain system call on a descriptor we own.
    let err = unsafe { libc::posix_fallocate(reserve.as_raw_fd(), 0, RESERVE) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let first = private().open(dir.join("job.json.first"))?;
    Ok(Spare {
        dir: dir.to_path_buf(),
        first,
        _log: log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_claims_a_folder_and_an_end_writes_the_final_record_in_its_reserve() {
        let root = tempfile::tempdir().expect("tempdir");
        let folders = Folders::new(root.path(), 700).expect("folders");
        folders.fill();
        let job = folders.start(Refill::Now).expect("start");
        let dir = job.dir.clone();
        let names = |dir: &Path| {
            let mut n: Vec<String> = fs::read_dir(dir)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&dir), ["job.json", "job.json.reserve", "output.log"]);
        assert_eq!(fs::metadata(dir.join("job.json")).expect("stat").len(), 700);
        assert_eq!(fs::metadata(dir.join("output.log")).expect("stat").len(), 8);
        folders.end(job).expect("end");
        assert_eq!(names(&dir), ["job.json", "output.log"]);
        assert_eq!(fs::metadata(dir.join("job.json")).expect("stat").len(), 700);
        // The pool refills.
        folders.fill();
        assert_eq!(
            fs::read_dir(root.path().join("spare"))
                .expect("read")
                .count(),
            CAPACITY
        );
    }
}
