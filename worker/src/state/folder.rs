//! A job's folder in the state dir: `jobs/<id>/` with its output log's header written,
//! the room for its final record, and an empty file for its first one.
//!
//! Making a folder and its files costs a filesystem an inode each, which on ext4 is the
//! largest part of a start without namespaces. So folders are made ahead (see
//! [`crate::made_ahead`]) in `spare/`, and a start renames one into place under its job's id:
//! the start itself then creates no inode, not even for the job's record.
//! Nothing in `spare/` is a job: it is emptied whenever a worker opens the state dir, so a
//! crash leaves nothing there that a restart could mistake for one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::id::JobId;
use crate::made_ahead::Ahead;
use crate::output::logfile;
use crate::state::durable;
use crate::state::private;
use crate::state::record;

/// Where folders made ahead wait: next to `jobs/`, on the same filesystem, so that a
/// rename moves them.
pub const SPARE_DIR: &str = "spare";

/// The open files of a new job folder.
pub struct Folder {
    /// The output log, holding just its header, open for writing at its end.
    pub log: File,
    /// An empty file for the job's first record (see [`durable::write_first`]).
    pub first_record: File,
}

/// Makes `dir` with an output log holding just the header, the room for the job's final
/// record and an empty file for its first (see [`crate::state::durable`]).
pub fn create(dir: &Path) -> io::Result<Folder> {
    private::create_dir(dir)?;
    let made = (|| {
        let mut log = private::options()
            .write(true)
            .create_new(true)
            .open(dir.join(record::LOG_FILE))?;
        log.write_all(&logfile::file_header())?;
        durable::reserve(dir)?;
        let first_record = durable::first_record_file(dir)?;
        Ok(Folder { log, first_record })
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
    made
}

/// A folder made ahead; deleted unless a job claims it.
pub struct Spare {
    /// `None` once claimed.
    made: Option<(PathBuf, Folder)>,
}

impl Spare {
    /// Moves the folder to `dir`, the job's, and returns its open files.
    pub fn claim(mut self, dir: &Path) -> io::Result<Folder> {
        let (from, folder) = self
            .made
            .take()
            .expect("only claim empties a spare, and claim consumes it");
        match fs::rename(&from, dir) {
            Ok(()) => Ok(folder),
            Err(e) => {
                let _ = fs::remove_dir_all(&from);
                Err(e)
            }
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some((dir, _)) = &self.made {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Empties `<state_dir>/spare` of what an earlier run left, then keeps `capacity` folders
/// ready in it.
pub fn spares(state_dir: &Path, capacity: usize) -> io::Result<Ahead<Spare>> {
    let spare_dir = state_dir.join(SPARE_DIR);
    match fs::remove_dir_all(&spare_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => private::create_dir(&spare_dir)?,
    }
    Ahead::start("folders-ahead", capacity, move || {
        let dir = spare_dir.join(JobId::new().to_string());
        let folder = create(&dir)?;
        Ok(Spare {
            made: Some((dir, folder)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_claimed_spare_is_a_job_folder_with_an_empty_log() {
        let state = tempfile::tempdir().unwrap();
        fs::create_dir(state.path().join("jobs")).unwrap();
        let pool = spares(state.path(), 2).unwrap();
        let dir = state.path().join("jobs").join("job-1");
        let mut log = pool.take().unwrap().claim(&dir).unwrap().log;
        log.write_all(b"more").unwrap();
        let mut expected = logfile::file_header().to_vec();
        expected.extend_from_slice(b"more");
        assert_eq!(fs::read(dir.join(record::LOG_FILE)).unwrap(), expected);
        assert_eq!(
            entries(&dir),
            3,
            "a job folder starts with its log, its final record's room and an empty file \
             for its first record only"
        );
        assert_eq!(
            fs::metadata(dir.join(durable::FIRST_RECORD_FILE))
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            fs::metadata(dir.join(durable::RESERVE_FILE)).unwrap().len(),
            4096
        );
    }

    #[test]
    fn spares_left_by_an_earlier_run_and_unclaimed_ones_are_deleted() {
        let state = tempfile::tempdir().unwrap();
        let spare = state.path().join(SPARE_DIR);
        fs::create_dir_all(spare.join("left-by-a-crash")).unwrap();
        File::create(spare.join("left-by-a-crash").join(record::LOG_FILE)).unwrap();
        let pool = spares(state.path(), 3).unwrap();
        assert!(!spare.join("left-by-a-crash").exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while entries(&spare) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool never filled"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(pool);
        assert_eq!(entries(&spare), 0, "unclaimed spares outlived the pool");
    }
}
