//! Job records on disk, so that history survives a restart or a crash of jobd.
//!
//! Each job folder holds `job.json` (this record) and `output.log` (see [`crate::output::logfile`]).
//! Records are replaced atomically: write a temporary file, fsync it, rename it over the
//! old one, fsync the folder. A crash leaves either the old record or the new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::logfile::{from_unix_nanos, to_unix_nanos};
use crate::spec::{Isolation, JobId, Limits};
use crate::status::{JobInfo, JobState};

/// Bumped when the record's meaning changes; older jobd refuses newer records.
pub const RECORD_VERSION: u32 = 1;
pub const RECORD_FILE: &str = "job.json";
pub const LOG_FILE: &str = "output.log";

/// Everything jobd must know about a job to report it after a restart: the disk form of
/// [`JobInfo`] (times as Unix nanoseconds, no `record_error`, which is only ever about a
/// record not written) plus what a later jobd needs to find the job's processes. Its own
/// type because its format is versioned; `JobRecord::new` and `JobRecord::into_info`
/// are the only conversions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub version: u32,
    pub id: JobId,
    pub owner: String,
    pub argv: Vec<String>,
    pub limits: Limits,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    pub pid: i32,
    /// The leader's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// later jobd can tell the job's processes from others that reuse its ids.
    pub start_ticks: u64,
    /// The job's cgroup, if it had one.
    pub cgroup: Option<PathBuf>,
    pub started_at_unix_nanos: i64,
    #[serde(flatten)]
    pub state: JobState,
    pub ended_at_unix_nanos: Option<i64>,
    pub stop_requested: bool,
    pub oom_killed: bool,
    pub cpu_usage_usec: u64,
    pub memory_peak_bytes: u64,
    /// The job was still running when jobd went away and was killed at the next start.
    pub server_lost: bool,
    pub output_error: Option<String>,
    /// Absent from records of jobs started before jobs had them: those got only `PATH`.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub working_dir: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub timed_out: bool,
}

fn root_dir() -> String {
    "/".into()
}

impl JobRecord {
    /// The record of the job `info` describes, whose leader started at `start_ticks`, in
    /// `cgroup` if it has one.
    pub(crate) fn new(info: JobInfo, start_ticks: u64, cgroup: Option<PathBuf>) -> JobRecord {
        JobRecord {
            version: RECORD_VERSION,
            id: info.id,
            owner: info.owner,
            argv: info.argv,
            limits: info.limits,
            isolation: info.isolation,
            uid: info.uid,
            gid: info.gid,
            pid: info.pid,
            start_ticks,
            cgroup,
            started_at_unix_nanos: to_unix_nanos(info.started_at),
            state: info.state,
            ended_at_unix_nanos: info.ended_at.map(to_unix_nanos),
            stop_requested: info.stop_requested,
            oom_killed: info.oom_killed,
            cpu_usage_usec: info.cpu_usage_usec,
            memory_peak_bytes: info.memory_peak_bytes,
            server_lost: info.server_lost,
            output_error: info.output_error,
            env: info.env,
            working_dir: info.working_dir,
            timeout_ms: info
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            timed_out: info.timed_out,
        }
    }

    /// The job as the record describes it.
    pub(crate) fn into_info(self) -> JobInfo {
        JobInfo {
            id: self.id,
            owner: self.owner,
            argv: self.argv,
            limits: self.limits,
            isolation: self.isolation,
            uid: self.uid,
            gid: self.gid,
            state: self.state,
            pid: self.pid,
            started_at: from_unix_nanos(self.started_at_unix_nanos),
            ended_at: self.ended_at_unix_nanos.map(from_unix_nanos),
            stop_requested: self.stop_requested,
            oom_killed: self.oom_killed,
            cpu_usage_usec: self.cpu_usage_usec,
            memory_peak_bytes: self.memory_peak_bytes,
            server_lost: self.server_lost,
            output_error: self.output_error,
            record_error: None,
            env: self.env,
            working_dir: self.working_dir,
            timeout: self.timeout_ms.map(std::time::Duration::from_millis),
            timed_out: self.timed_out,
        }
    }
}

/// Replaces `dir/job.json` atomically and durably.
pub fn write_record(dir: &Path, record: &JobRecord) -> io::Result<()> {
    replace_record(dir, record, true).map(|_| ())
}

/// The record as stored.
pub fn encode(record: &JobRecord) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(record).map_err(io::Error::other)
}

/// Replaces `dir/job.json` atomically (rename). With `durable`, also flushed to the
/// device (fsync of the file before the rename, and of the folder after): needed where
/// a power loss must not lose the record; a crash of jobd alone never loses a renamed file.
/// Returns the record's size.
pub fn replace_record(dir: &Path, record: &JobRecord, durable: bool) -> io::Result<u64> {
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    let json = encode(record)?;
    let mut f = crate::state::private::create(&tmp)?;
    f.write_all(&json)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(RECORD_FILE))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(json.len() as u64)
}

/// Reads `dir/job.json`, refusing versions this jobd does not know.
pub fn read_record(dir: &Path) -> io::Result<JobRecord> {
    let bytes = fs::read(dir.join(RECORD_FILE))?;
    let record: JobRecord = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if record.version != RECORD_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("job record version {} is not supported", record.version),
        ));
    }
    Ok(record)
}

/// The start time of a process in clock ticks since boot, or `None` if it is gone.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Holds `<state>/lock` for the life of the worker, so two servers never share a state dir.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another jobd{} is using the state dir {}",
        holder.as_ref().map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        state_dir.display()
    )]
    InUse {
        state_dir: PathBuf,
        /// The pid the holder wrote into the lock file, if it could be read.
        holder: Option<String>,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let file = match crate::state::private::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(file) => file,
            Err(source) => return Err(LockError::Open { path, source }),
        };
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(LockError::InUse {
                state_dir: state_dir.to_path_buf(),
                holder: (!holder.is_empty()).then(|| holder.to_string()),
            });
        }
        let pid = std::process::id().to_string();
        if let Err(source) = file
            .set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        {
            return Err(LockError::Write { path, source });
        }
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        let spec = crate::spec::JobSpec::new("alice", vec!["sleep".into(), "60".into()])
            .with_isolation(Isolation::ALL);
        let credentials = crate::process::spawn::Credentials {
            uid: 65534,
            gid: 65534,
        };
        let id = "6f1c2a7e-8a7b-4b7e-9c1d-2e3f4a5b6c7d".parse().unwrap();
        let started = JobInfo::started(id, &spec, Some(credentials), 42, from_unix_nanos(1));
        let mut record = JobRecord::new(started, 7, None);
        record.state = JobState::Finished { exit_code: 3 };
        record.ended_at_unix_nanos = Some(2);
        record
    }

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record();
        write_record(dir.path(), &r).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), r);
        r.state = JobState::Stopped { signal: 9 };
        write_record(dir.path(), &r).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), r);
        assert!(!dir.path().join("job.json.tmp").exists());
        let text = fs::read_to_string(dir.path().join(RECORD_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    /// A record as the build before this one wrote it (version 1): it must load, and a
    /// record is written in exactly that form, so a change of the domain types that would
    /// change the format fails here rather than on a server's state dir.
    #[test]
    fn the_version_1_format_is_kept() {
        let golden = include_str!("../../tests/data/job-record-v1.json");
        let mut expected = record();
        expected.cgroup =
            Some("/sys/fs/cgroup/jobd/jobs/6f1c2a7e-8a7b-4b7e-9c1d-2e3f4a5b6c7d".into());
        expected.output_error = Some("output not stored: the state dir is full".into());
        expected.limits.cpus = Some(0.5);
        expected
            .limits
            .device_read_bps
            .push(crate::spec::DeviceRate {
                device: "/dev/sda".into(),
                bytes_per_second: 1 << 20,
            });
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), golden).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), expected);
        // Fields added since are added at the end, and a record without them reads as a
        // job that got only PATH, in /, with no time limit.
        let current = include_str!("../../tests/data/job-record-v1-env.json");
        assert_eq!(
            current
                .strip_prefix(&golden[..golden.len() - 2])
                .map(|_| ()),
            Some(())
        );
        expected.env = vec!["PATH=/usr/bin:/bin".into(), "FOO=a b".into()];
        expected.working_dir = "/srv".into();
        expected.timeout_ms = Some(90_000);
        expected.timed_out = true;
        assert_eq!(
            String::from_utf8(encode(&expected).unwrap()).unwrap(),
            current
        );
        fs::write(dir.path().join(RECORD_FILE), current).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), expected);
        for (state, json) in [
            (JobState::Running, r#"{"state":"running"}"#),
            (
                JobState::Stopped { signal: 9 },
                r#"{"state":"stopped","signal":9}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&state).unwrap(), json);
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record();
        r.version = 2;
        write_record(dir.path(), &r).unwrap();
        let err = read_record(dir.path()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("another jobd (pid "), "{err}");
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn start_ticks_identify_a_live_process() {
        let me = std::process::id() as i32;
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(i32::MAX), None);
    }
}
