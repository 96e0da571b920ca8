//! A job's folder in the state dir: `jobs/<id>/` with its output log's header written.
//!
//! Making a folder and a file costs this host's ext4 0.1-0.2 ms, a third of a start
//! without namespaces. So folders are made ahead (see [`crate::ahead`]) in `spare/`, and a
//! start renames one into place under its job's id, which costs tens of microseconds.
//! Nothing in `spare/` is a job: it is emptied whenever a worker opens the state dir, so a
//! crash leaves nothing there that a restart could mistake for one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::ahead::Ahead;
use crate::durable;
use crate::logfile;
use crate::private;
use crate::spec::JobId;
use crate::store;

/// Where folders made ahead wait: next to `jobs/`, on the same filesystem, so that a
/// rename moves them.
pub const SPARE_DIR: &str = "spare";

/// Makes `dir` with an output log holding just the header and the room for the job's
/// final record (see [`crate::durable`]); returns the log, open for writing at its end.
pub fn create(dir: &Path) -> io::Result<File> {
    private::create_dir(dir)?;
    let made = (|| {
        let mut log = private::options()
            .write(true)
            .create_new(true)
            .open(dir.join(store::LOG_FILE))?;
        log.write_all(&logfile::file_header())?;
        durable::reserve(dir)?;
        Ok(log)
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
    made
}

/// A folder made ahead; deleted unless a job claims it.
pub struct Spare {
    /// `None` once claimed.
    made: Option<(PathBuf, File)>,
}

impl Spare {
    /// Moves the folder to `dir`, the job's, and returns its log.
    pub fn claim(mut self, dir: &Path) -> io::Result<File> {
        let (from, log) = self
            .made
            .take()
            .expect("only claim empties a spare, and claim consumes it");
        match fs::rename(&from, dir) {
            Ok(()) => Ok(log),
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
        let log = create(&dir)?;
        Ok(Spare {
            made: Some((dir, log)),
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
        let mut log = pool.take().unwrap().claim(&dir).unwrap();
        log.write_all(b"more").unwrap();
        let mut expected = logfile::file_header().to_vec();
        expected.extend_from_slice(b"more");
        assert_eq!(fs::read(dir.join(store::LOG_FILE)).unwrap(), expected);
        assert_eq!(
            entries(&dir),
            2,
            "a job folder starts with its log and its final record's room only"
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
        File::create(spare.join("left-by-a-crash").join(store::LOG_FILE)).unwrap();
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
