//! Files and folders only the server may read: the state dir, the PKI dir and everything
//! under them are 0700 folders and 0600 files.
//!
//! Jobs run on the host's filesystem, so these modes are what keeps one user's job out of
//! another user's output and records. Everything is created with its final mode (the mode
//! passed to `mkdir`/`open`, which the umask can only narrow), never widened first and
//! tightened after; [`repair`] tightens what an older server left wider.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every folder in the state dir.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in the state dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates the folder `path`, mode 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates `path` and any missing parents, each mode 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .mode(DIR_MODE)
        .recursive(true)
        .create(path)
}

/// Open options that create files mode 0600; the caller says how to open.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` for writing; a file it creates is mode 0600.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// What [`repair`] tightened.
#[derive(Debug, Default)]
pub struct Repaired {
    /// The first few paths whose mode was tightened, to name them in a warning.
    pub examples: Vec<(PathBuf, u32)>,
    /// How many were tightened in all.
    pub count: usize,
}

impl Repaired {
    /// How many paths a warning names.
    const EXAMPLES: usize = 8;

    /// Says what was tightened, for a log line: up to a few paths and their old modes.
    pub fn describe(&self) -> String {
        let mut text = self
            .examples
            .iter()
            .map(|(path, mode)| format!("{} (was {mode:04o})", path.display()))
            .collect::<Vec<_>>()
            .join(", ");
        if self.count > self.examples.len() {
            text.push_str(&format!(" and {} more", self.count - self.examples.len()));
        }
        text
    }

    fn note(&mut self, path: &Path, mode: u32) {
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push((path.to_path_buf(), mode));
        }
        self.count += 1;
    }
}

/// Sets every folder under `root` (and `root` itself) to 0700 and every file to 0600
/// where they are wider or otherwise different, without following symbolic links (which
/// are left alone). Paths that vanish meanwhile are skipped.
pub fn repair(root: &Path) -> io::Result<Repaired> {
    let mut repaired = Repaired::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        let want = if kind.is_dir() { DIR_MODE } else { FILE_MODE };
        let mode = meta.permissions().mode() & 0o7777;
        if mode != want {
            match fs::set_permissions(&path, fs::Permissions::from_mode(want)) {
                Ok(()) => repaired.note(&path, mode),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot set the mode of {}: {e}", path.display()),
                    ))
                }
            }
        }
        if kind.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot read {}: {e}", path.display()),
                    ))
                }
            };
            for entry in entries {
                pending.push(entry?.path());
            }
        }
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_files_and_folders_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask has no preconditions; this test's process runs only this test.
        let old = unsafe { libc::umask(0) };
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        create_dir(&dir.path().join("c")).unwrap();
        drop(create(&nested.join("f")).unwrap());
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("c")), 0o700);
        assert_eq!(mode(&nested.join("f")), 0o600);
    }

    #[test]
    fn repair_tightens_wider_modes_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        fs::create_dir_all(root.join("jobs/x")).unwrap();
        fs::write(root.join("jobs/x/job.json"), "{}").unwrap();
        fs::write(root.join("lock"), "").unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(
            root.join("jobs/x/job.json"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::set_permissions(root.join("lock"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();

        let repaired = repair(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("jobs")), 0o700);
        assert_eq!(mode(&root.join("jobs/x/job.json")), 0o600);
        assert_eq!(
            mode(Path::new("/etc/passwd")),
            0o644,
            "a symlink was followed"
        );
        // state, jobs, jobs/x and job.json; the lock was already right.
        assert_eq!(repaired.count, 4, "{repaired:?}");
        assert!(
            repaired.describe().contains("job.json (was 0644)"),
            "{}",
            repaired.describe()
        );
        assert_eq!(
            repair(&root).unwrap().count,
            0,
            "a second repair changed modes"
        );
    }
}
