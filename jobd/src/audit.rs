//! The audit log: who asked jobd for what, and what came of it, one JSON line per request.
//!
//! jobd is a security boundary, and its tracing log is for operators: it may be filtered,
//! sampled or sent elsewhere. The audit log is a file of its own that only grows: each
//! line is one request's time, caller (name, roles, certificate serial, address), method,
//! job, whether policy allowed it, and its outcome code. Never a job's output, argv or
//! environment: what a job does is its owner's business, who ran it is the operator's.
//!
//! Each line reaches the file in one `write(2)` on a descriptor opened with `O_APPEND`,
//! so lines from concurrent requests never interleave. A jobd killed in the middle of a
//! write can leave a partial last line; the next open ends it with a newline first, so
//! that fragment is one unreadable line of its own and every later line reads whole.
//! `reopen` (on SIGHUP) opens the path again, for log rotation by renaming.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

/// One request, as the audit log keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339, UTC, with nanoseconds.
    pub time: String,
    pub caller: &'a str,
    pub roles: Vec<&'a str>,
    /// The serial of the caller's certificate, hex with colons, as `openssl x509 -serial`
    /// shows it: what `jobd pki revoke --serial` takes.
    pub serial: &'a str,
    pub remote: String,
    pub method: &'a str,
    /// The job the request named (as given, when it named none that exists), or empty.
    pub job: &'a str,
    /// Whether policy let the caller do this (a job hidden from them is a denial, though
    /// they are told "not found").
    pub allowed: bool,
    /// The gRPC status code of the outcome: `OK`, `NOT_FOUND`, ...
    pub code: &'static str,
}

impl Entry<'_> {
    pub fn now() -> String {
        humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
    }
}

/// The audit file, shared by every request.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path`, ending a torn last line first.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let file = open_sealed(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub fn record(&self, entry: &Entry<'_>) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // One write for the whole line: O_APPEND makes it land whole, after every other.
        let written = file.write(&line)?;
        if written < line.len() {
            // Only a full disk cuts a regular file's write short: end the fragment so the
            // next line starts on a line of its own, and say the line was not kept.
            let _ = file.write_all(b"\n");
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {written} of {} bytes were written", line.len()),
            ));
        }
        Ok(())
    }

    /// Opens the path again: after a rotation renamed the file, new lines go to a new one.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_sealed(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

fn open_sealed(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(method: &'static str, job: &'static str) -> Entry<'static> {
        Entry {
            time: Entry::now(),
            caller: "alice",
            roles: vec!["user"],
            serial: "01:02",
            remote: "127.0.0.1:5000".into(),
            method,
            job,
            allowed: true,
            code: "OK",
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_torn_last_line_is_ended_and_later_lines_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(&entry("Start", "")).unwrap();
        drop(log);
        // What a jobd killed in the middle of a write leaves.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":\"2026-")
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.record(&entry("Stop", "j1")).unwrap();
        let lines = lines(&path);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[1], "{\"time\":\"2026-");
        let last: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(
            (last["method"].as_str(), last["job"].as_str()),
            (Some("Stop"), Some("j1"))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_lines_never_interleave_and_reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = std::sync::Arc::new(AuditLog::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        log.record(&entry("Status", "some-job")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = lines(&path);
        assert_eq!(all.len(), 1600);
        for line in &all {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().unwrap();
        log.record(&entry("List", "")).unwrap();
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(lines(&rotated).len(), 1600);
    }
}
