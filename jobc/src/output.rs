//! Rendering replies: the status line, `-o json`, the job table and the log stream.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, UNIX_EPOCH};

use common::inert::Inert;
use proto::v1 as pb;
use serde::Serialize;

/// Prints to stdout; a closed pipe (`jobc ... | head`) ends jobc quietly.
pub fn print(text: &str) -> Result<(), crate::errors::Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(write_failure)
}

/// A failure to write jobc's output: a closed pipe is a quiet end, not an error.
pub fn write_failure(e: io::Error) -> crate::errors::Failure {
    use crate::errors::{Failure, EXIT_REQUEST};
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::new(0, "")
    } else {
        Failure::new(EXIT_REQUEST, format!("cannot write output: {e}"))
    }
}

/// `running`, `finished (exit code: N)` or `stopped (signal: N)`.
pub fn status_line(s: &pb::JobStatus) -> String {
    match state_name(s) {
        "finished" => format!("finished (exit code: {})", s.exit_code.unwrap_or(0)),
        "stopped" => format!("stopped (signal: {})", s.signal.unwrap_or(0)),
        other => other.to_string(),
    }
}

/// What plain `jobc status` prints: the status line exactly as [`status_line`] gives it,
/// then one line for each thing the server could not store (output, the job's record), so
/// that the first line stays what scripts compare against.
pub fn status_text(s: &pb::JobStatus) -> String {
    let mut text = status_line(s);
    text.push('\n');
    if s.timed_out {
        let limit = seconds(&s.timeout).unwrap_or(0);
        text.push_str(&format!(
            "timed out: stopped after its time limit of {limit} s\n"
        ));
    }
    for note in [&s.output_error, &s.record_error] {
        if !note.is_empty() {
            text.push_str(&Inert(note).to_string());
            text.push('\n');
        }
    }
    text
}

fn state_name(s: &pb::JobStatus) -> &'static str {
    match pb::JobState::try_from(s.state) {
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Finished) => "finished",
        Ok(pb::JobState::Stopped) => "stopped",
        _ => "unknown",
    }
}

fn time(t: &Option<proto::Timestamp>) -> Option<String> {
    t.as_ref().map(|t| {
        let at = UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        humantime::format_rfc3339_nanos(at).to_string()
    })
}

/// Whole seconds of a duration, rounded up (a limit under a second shows as one).
fn seconds(d: &Option<proto::Duration>) -> Option<u64> {
    d.as_ref()
        .map(|d| (d.seconds.max(0) as u64).saturating_add(u64::from(d.nanos > 0)))
}

/// Microseconds of a duration; a negative one (no server sends it) as zero.
fn micros(d: &Option<proto::Duration>) -> u64 {
    d.as_ref().map_or(0, |d| {
        (d.seconds.max(0) as u64)
            .saturating_mul(1_000_000)
            .saturating_add((d.nanos.max(0) / 1000) as u64)
    })
}

#[derive(Serialize)]
struct DeviceRate<'a> {
    device: &'a str,
    bytes_per_second: u64,
}

#[derive(Serialize)]
struct Limits<'a> {
    cpus: Option<f64>,
    memory_bytes: Option<u64>,
    pids: Option<u64>,
    device_read_bps: Vec<DeviceRate<'a>>,
    device_write_bps: Vec<DeviceRate<'a>>,
}

/// The structured status as `-o json` prints it.
#[derive(Serialize)]
struct Status<'a> {
    /// Only in `list --all-contexts`: the context whose server has the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a str>,
    id: &'a str,
    owner: &'a str,
    argv: &'a [String],
    status: String,
    state: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    pid: u32,
    started_at: Option<String>,
    ended_at: Option<String>,
    stop_requested: bool,
    oom_killed: bool,
    cpu_usage_usec: u64,
    memory_peak_bytes: u64,
    limits: Option<Limits<'a>>,
    server_lost: bool,
    isolation: Vec<&'static str>,
    uid: Option<u32>,
    gid: Option<u32>,
    output_error: Option<&'a str>,
    record_error: Option<&'a str>,
    env: &'a [String],
    working_dir: &'a str,
    timeout_seconds: Option<u64>,
    timed_out: bool,
}

fn rates(v: &[pb::DeviceRate]) -> Vec<DeviceRate<'_>> {
    v.iter()
        .map(|r| DeviceRate {
            device: &r.device,
            bytes_per_second: r.bytes_per_second,
        })
        .collect()
}

fn status_json(s: &pb::JobStatus) -> Status<'_> {
    Status {
        context: None,
        id: &s.job_id,
        owner: &s.owner,
        argv: &s.argv,
        status: status_line(s),
        state: state_name(s),
        exit_code: s.exit_code,
        signal: s.signal,
        pid: s.pid,
        started_at: time(&s.started_at),
        ended_at: time(&s.ended_at),
        stop_requested: s.stop_requested,
        oom_killed: s.oom_killed,
        cpu_usage_usec: micros(&s.cpu_usage),
        memory_peak_bytes: s.memory_peak_bytes,
        limits: s.limits.as_ref().map(|l| Limits {
            cpus: l.cpus,
            memory_bytes: l.memory_bytes,
            pids: l.pids,
            device_read_bps: rates(&l.device_read_bps),
            device_write_bps: rates(&l.device_write_bps),
        }),
        server_lost: s.server_lost,
        isolation: s
            .isolation
            .as_ref()
            .map(|i| {
                [(i.pid, "pid"), (i.mount, "mount"), (i.net, "net")]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect()
            })
            .unwrap_or_default(),
        uid: s.uid,
        gid: s.gid,
        output_error: Some(s.output_error.as_str()).filter(|e| !e.is_empty()),
        record_error: Some(s.record_error.as_str()).filter(|e| !e.is_empty()),
        env: &s.env,
        working_dir: &s.working_dir,
        timeout_seconds: seconds(&s.timeout),
        timed_out: s.timed_out,
    }
}

pub fn status_to_json(s: &pb::JobStatus) -> String {
    serde_json::to_string_pretty(&status_json(s)).expect("a status always serializes")
}

pub fn list_to_json(jobs: &[pb::JobStatus]) -> String {
    let all: Vec<Status<'_>> = jobs.iter().map(status_json).collect();
    serde_json::to_string_pretty(&all).expect("a status always serializes")
}

/// `jobc list -o json` written page by page: the same text as [`list_to_json`] of every
/// job, without holding every job's argv at once.
#[derive(Debug, Default)]
pub struct JsonArray {
    started: bool,
}

impl JsonArray {
    /// The text of these jobs as the next elements of the array.
    pub fn elements(&mut self, jobs: &[pb::JobStatus]) -> String {
        self.elements_in(None, jobs)
    }

    /// As [`JsonArray::elements`], each job saying which context it is from.
    pub fn elements_in(&mut self, context: Option<&str>, jobs: &[pb::JobStatus]) -> String {
        let mut out = String::new();
        for job in jobs {
            out.push_str(if self.started { ",\n" } else { "[\n" });
            self.started = true;
            // Pretty JSON indents by two spaces per level, and its strings hold no raw
            // newline: an element is its own pretty form, each line indented once more.
            let status = Status {
                context,
                ..status_json(job)
            };
            let text = serde_json::to_string_pretty(&status).expect("a status always serializes");
            for (i, line) in text.lines().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str("  ");
                out.push_str(line);
            }
        }
        out
    }

    /// The end of the array, and of the output.
    pub fn end(&self) -> &'static str {
        if self.started {
            "\n]\n"
        } else {
            "[]\n"
        }
    }
}

/// The `jobc list` table: id, owner, status, start time, command. Owners and argv are
/// other people's text: an ESC or a newline in them would repaint the screen or draw
/// fake rows, so every cell is shown [`Inert`].
pub fn list_table(jobs: &[pb::JobStatus]) -> String {
    let mut table = ListTable::default();
    table.add(jobs);
    table.render()
}

/// [`list_table`] built page by page: each job becomes its (short) row as its page
/// arrives, so jobc never holds every job's argv at once.
#[derive(Debug, Default)]
pub struct ListTable {
    rows: Vec<Vec<String>>,
    /// Whether the first column says which context each job is from.
    contexts: bool,
}

impl ListTable {
    /// A table with a CONTEXT column first, for `list --all-contexts`.
    pub fn with_contexts() -> Self {
        ListTable {
            rows: Vec::new(),
            contexts: true,
        }
    }

    pub fn add(&mut self, jobs: &[pb::JobStatus]) {
        self.rows.extend(jobs.iter().map(|j| row(j).to_vec()));
    }

    /// Adds the jobs of `context`'s server.
    pub fn add_in(&mut self, context: &str, jobs: &[pb::JobStatus]) {
        for job in jobs {
            let mut cells = vec![Inert(context).to_string()];
            cells.extend(row(job));
            self.rows.push(cells);
        }
    }

    pub fn render(&self) -> String {
        let mut header: Vec<String> = ["ID", "OWNER", "STATUS", "STARTED (UTC)", "COMMAND"]
            .map(String::from)
            .to_vec();
        if self.contexts {
            header.insert(0, "CONTEXT".into());
        }
        render_table(&header, &self.rows)
    }
}

/// One job's row; the command is cut to 60 characters.
fn row(j: &pb::JobStatus) -> [String; 5] {
    let started = time(&j.started_at)
        .map(|t| t.get(..19).unwrap_or(&t).replace('T', " "))
        .unwrap_or_default();
    let mut command = Inert(&j.argv.join(" ")).to_string();
    if command.chars().count() > 60 {
        command = command.chars().take(59).collect::<String>() + "…";
    }
    [
        Inert(&j.job_id).to_string(),
        Inert(&j.owner).to_string(),
        status_line(j),
        started,
        command,
    ]
}

/// `jobc context ls`: each context's name and server, `*` marking the current one.
pub fn contexts_table(rows: &[(bool, &str, &str)]) -> String {
    let header = ["CURRENT", "NAME", "SERVER"].map(String::from);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(current, name, server)| {
            let mark = if *current { "*" } else { "" };
            vec![
                mark.into(),
                Inert(name).to_string(),
                Inert(server).to_string(),
            ]
        })
        .collect();
    render_table(&header, &rows)
}

/// Columns padded to their widest cell, but the last, which runs on.
fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let last = header.len() - 1;
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == last {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = *w)
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Where the records of `jobc logs` go: JSON lines on stdout, or raw bytes to stdout and
/// stderr as the job wrote them.
pub enum LogSink {
    Json {
        lines: crate::render::JsonLines,
        buf: Vec<u8>,
    },
    Raw,
}

impl LogSink {
    pub fn new(raw: bool) -> Self {
        if raw {
            LogSink::Raw
        } else {
            LogSink::Json {
                lines: crate::render::JsonLines::default(),
                buf: Vec::with_capacity(64 * 1024),
            }
        }
    }

    /// Writes one batch straight to the descriptors, so a follower sees output as it
    /// comes.
    pub fn write_batch(&mut self, records: Vec<pb::OutputRecord>) -> io::Result<()> {
        let (mut out, mut err) = (Unbuffered::STDOUT, Unbuffered::STDERR);
        match self {
            LogSink::Json { lines, buf } => {
                buf.clear();
                for r in &records {
                    lines.push(r, buf);
                }
                out.write_all(buf)
            }
            LogSink::Raw => {
                for r in records {
                    match pb::Stream::try_from(r.stream) {
                        Ok(pb::Stream::Stderr) => err.write_all(&r.data)?,
                        // A note from jobworker is not the job's output: say whose it is.
                        Ok(pb::Stream::System) => {
                            err.write_all(b"jobworker: ")?;
                            err.write_all(&r.data)?;
                        }
                        _ => out.write_all(&r.data)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Emits a last line that had no newline.
    pub fn finish(&mut self) -> io::Result<()> {
        if let LogSink::Json { lines, buf } = self {
            buf.clear();
            lines.finish(buf);
            let mut out = Unbuffered::STDOUT;
            out.write_all(buf)?;
        }
        Ok(())
    }
}

/// stdout or stderr without std's buffering. `io::stdout()` is line-buffered: it scans
/// every write for its last newline, which was a sixth of jobc's time in a 200 MiB
/// `logs --raw`, and splits writes at it. Batches are already large, so each goes out in
/// as few `write` calls as the pipe or file takes. Nothing else in jobc writes to stdout
/// while logs stream, so no buffered output can be overtaken.
struct Unbuffered(RawFd);

impl Unbuffered {
    const STDOUT: Unbuffered = Unbuffered(1);
    const STDERR: Unbuffered = Unbuffered(2);
}

impl Write for Unbuffered {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: fds 1 and 2 stay open for the life of the process (nothing in jobc
        // closes them); ManuallyDrop keeps this borrowed File from closing them.
        let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(self.0) });
        file.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_table_shows_hostile_argv_and_owners_inert() {
        let job = |owner: &str, argv: &[&str]| pb::JobStatus {
            job_id: "a62dfccc-2ff9-411d-a9ef-d4812ed3d867".into(),
            owner: owner.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let fake_row = "\nfeedface-0000-0000-0000-000000000000  admin  running";
        let jobs = [
            job("mallory\u{1b}[2J\u{1b}[H", &["sh", "-c", fake_row]),
            job("bob", &["printf", "\u{9b}31mred\r\u{7}"]),
        ];
        let table = list_table(&jobs);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            !table.chars().any(|c| c != '\n' && c.is_control()),
            "{table:?}"
        );
        assert!(table.contains("mallory\\u{1b}[2J"), "{table}");
    }

    #[test]
    fn plain_status_keeps_its_first_line_and_notes_what_was_not_stored() {
        let mut s = pb::JobStatus {
            state: pb::JobState::Finished as i32,
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(status_text(&s), "finished (exit code: 0)\n");
        s.output_error = "output not stored: the state dir is full".into();
        s.record_error = "the job's end is not stored yet (retrying): \u{1b}[2J".into();
        assert_eq!(
            status_text(&s),
            "finished (exit code: 0)\n\
             output not stored: the state dir is full\n\
             the job's end is not stored yet (retrying): \\u{1b}[2J\n"
        );
    }

    /// `-o json` is what scripts read: its keys and the form of its values stay as they
    /// were when the API moved to protobuf's Timestamp and Duration.
    #[test]
    fn status_json_keeps_its_keys_and_forms() {
        let s = pb::JobStatus {
            job_id: "6f1c2a7e-8a7b-4b7e-9c1d-2e3f4a5b6c7d".into(),
            owner: "alice".into(),
            argv: vec!["sleep".into(), "60".into()],
            limits: Some(pb::Limits {
                cpus: Some(0.5),
                ..Default::default()
            }),
            state: pb::JobState::Stopped as i32,
            signal: Some(15),
            started_at: Some(proto::Timestamp {
                seconds: 1_764_700_000,
                nanos: 5,
            }),
            ended_at: Some(proto::Timestamp {
                seconds: 1_764_700_090,
                nanos: 0,
            }),
            cpu_usage: Some(proto::Duration {
                seconds: 1,
                nanos: 500_999,
            }),
            timeout: Some(proto::Duration {
                seconds: 90,
                nanos: 0,
            }),
            timed_out: true,
            pid: 42,
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_str(&status_to_json(&s)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "argv",
            "cpu_usage_usec",
            "ended_at",
            "env",
            "exit_code",
            "gid",
            "id",
            "isolation",
            "limits",
            "memory_peak_bytes",
            "oom_killed",
            "output_error",
            "owner",
            "pid",
            "record_error",
            "server_lost",
            "signal",
            "started_at",
            "state",
            "status",
            "stop_requested",
            "timed_out",
            "timeout_seconds",
            "uid",
            "working_dir",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["started_at"], "2025-12-02T18:26:40.000000005Z");
        assert_eq!(json["ended_at"], "2025-12-02T18:28:10.000000000Z");
        assert_eq!(json["cpu_usage_usec"], 1_000_500);
        assert_eq!(json["timeout_seconds"], 90);
        assert_eq!(json["status"], "stopped (signal: 15)");
    }

    #[test]
    fn json_written_page_by_page_is_the_whole_array() {
        let job = |id: &str, argv: &[&str]| pb::JobStatus {
            job_id: id.into(),
            owner: "alice".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            limits: Some(pb::Limits::default()),
            ..Default::default()
        };
        let jobs = [
            job("a", &["sh", "-c", "echo 'two\nlines'"]),
            job("b", &["true"]),
            job("c", &[]),
        ];
        let mut pages = JsonArray::default();
        let mut text = pages.elements(&jobs[..2]);
        text += &pages.elements(&[]);
        text += &pages.elements(&jobs[2..]);
        text += pages.end();
        assert_eq!(text, list_to_json(&jobs) + "\n");
        let none = JsonArray::default();
        assert_eq!(none.end(), list_to_json(&[]) + "\n");
    }
}
