//! Start-up recovery: load every job a previous jobd left in the state dir.
//!
//! Output logs are cut at their last whole record (a crash may have torn the tail). A job
//! whose record still says "running" was alive when jobd went away: its processes are
//! killed (through its cgroup, or by its session when it had none), and it is recorded as
//! stopped by SIGKILL because the server went away.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::job::Job;
use crate::output::logfile;
use crate::process::cgroup::JobCgroup;
use crate::state::durable;
use crate::state::record::{self, JobRecord};
use crate::status::JobState;

/// Loads the jobs in `jobs_dir`. Folders that cannot be read are left alone and logged.
pub(crate) fn restore_jobs(jobs_dir: &Path) -> Vec<Job> {
    let Ok(entries) = fs::read_dir(jobs_dir) else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        match record::read_record(&dir) {
            Ok(record) => jobs.push(restore_job(record, &dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The start was interrupted before the job was recorded, so before its
                // program could run (see the exec gate in `spawn`), and before anyone was
                // told of the job: there is nothing to show.
                tracing::warn!(dir = %dir.display(), "removing the folder of a start that never ran");
                let _ = fs::remove_dir_all(&dir);
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read a job record; leaving it alone")
            }
        }
    }
    jobs
}

fn restore_job(mut record: JobRecord, dir: &Path) -> Job {
    let (committed, log_error) = match recover_log(&dir.join(record::LOG_FILE)) {
        Ok((len, cut)) => {
            if cut > 0 {
                tracing::warn!(job = %record.id, bytes = cut, "cut a torn record off the end of a job's output");
            }
            (len, None)
        }
        Err(e) => {
            tracing::error!(job = %record.id, error = %e, "cannot recover a job's output");
            (
                logfile::FILE_HEADER_LEN,
                Some(format!("output could not be recovered: {e}")),
            )
        }
    };
    let mut changed = false;
    if let Some(e) = log_error {
        record.output_error.get_or_insert(e);
        changed = true;
    }
    if record.state == JobState::Running {
        kill_orphans(&record);
        record.state = JobState::Stopped {
            signal: libc::SIGKILL,
        };
        record.server_lost = true;
        record.ended_at_unix_nanos = Some(logfile::now_unix_nanos());
        tracing::warn!(job = %record.id, "job was running when the server went away; killed and recorded as stopped");
        changed = true;
    }
    if changed {
        if let Err(e) = durable::write_final(dir, &record) {
            tracing::error!(job = %record.id, error = %e, "cannot update a recovered job record");
        }
    }
    Job::restored(record, dir.to_path_buf(), committed)
}

/// Cuts a torn tail off the log; returns (valid length, bytes cut).
fn recover_log(path: &Path) -> io::Result<(u64, u64)> {
    let file = File::options().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let valid = logfile::valid_len(&file)?;
    if valid < len {
        file.set_len(valid)?;
        file.sync_all()?;
    }
    Ok((valid, len - valid))
}

/// Kills whatever is left of a job that a previous jobd started.
fn kill_orphans(record: &JobRecord) {
    if let Some(path) = &record.cgroup {
        if path.exists() {
            if let Err(e) = JobCgroup::at(path.clone()).kill_and_remove(Duration::from_secs(10)) {
                tracing::error!(job = %record.id, error = %e, "cannot kill the job's cgroup");
            }
        }
        return;
    }
    // Without a cgroup: the job ran in its own session (sid = its pid). A pid stays taken
    // while a session has that id, so while anything of the job's session lives, its pid
    // is the job's leader or nobody's. A live process with that pid and another start time
    // (after a reboot, say) means the job's session is gone and this one is someone else's.
    // A start time of 0 was not known when the job started: nothing to compare with.
    if let Some(ticks) = record::process_start_ticks(record.pid) {
        if record.start_ticks != 0 && ticks != record.start_ticks {
            tracing::info!(job = %record.id, pid = record.pid, "the job's pid belongs to another process now: nothing of the job is left to kill");
            return;
        }
    }
    // Processes in that session that started no earlier than the job are its own;
    // anything older merely reuses the number.
    let members = session_members(record.pid, record.start_ticks);
    for &pid in &members {
        // SAFETY: kill has no memory-safety preconditions; pids were checked above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session_members(record.pid, record.start_ticks).is_empty() {
        if Instant::now() > deadline {
            tracing::error!(job = %record.id, "processes of the job survived SIGKILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live (not zombie) processes of session `sid` started at or after `since` ticks.
fn session_members(sid: i32, since: u64) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 19
                && f[0] != "Z"
                && f[3].parse::<i32>() == Ok(sid)
                && f[19].parse::<u64>().is_ok_and(|t| t >= since)
        })
        .collect()
}
