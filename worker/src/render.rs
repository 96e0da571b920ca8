//! Rendering output records as the JSON lines `jobc logs` prints, like Docker's json-file:
//! `{"log":"line without newline","stream":"stdout","time":"2026-01-24T10:00:00.000000000Z"}`.
//!
//! Records are chunks, so a line may span several records and a record may hold many
//! lines; each stream keeps its own partial line. A line longer than the cap is emitted in
//! pieces of the cap, and a last line without a newline is emitted when the output ends.
//! Bytes that are not UTF-8 are replaced (U+FFFD); `--raw` is for exact bytes.

use serde::Serialize;

use crate::logfile::{self, Record, Stream};

/// Default longest line emitted as one JSON object, in bytes (Docker uses 16 KiB too).
pub const DEFAULT_LINE_CAP: usize = 16 * 1024;

#[derive(Serialize)]
struct Line<'a> {
    log: &'a str,
    stream: Stream,
    time: &'a str,
}

#[derive(Default)]
struct Partial {
    bytes: Vec<u8>,
    /// When the first byte of the pending line was read.
    time_unix_nanos: i64,
}

/// Turns a sequence of records into JSON lines.
pub struct JsonLines {
    cap: usize,
    partial: [Partial; 3],
}

impl Default for JsonLines {
    fn default() -> Self {
        Self::new(DEFAULT_LINE_CAP)
    }
}

impl JsonLines {
    pub fn new(cap: usize) -> Self {
        JsonLines {
            cap: cap.max(1),
            partial: Default::default(),
        }
    }

    /// Appends to `out` every line that `record` completes.
    pub fn push(&mut self, record: &Record, out: &mut Vec<u8>) {
        let cap = self.cap;
        let partial = &mut self.partial[record.stream as usize];
        let mut rest: &[u8] = &record.data;
        while !rest.is_empty() {
            if partial.bytes.is_empty() {
                partial.time_unix_nanos = record.time_unix_nanos;
            }
            // Look one byte past the room left, so a line of exactly `cap` bytes followed
            // by its newline is one line, not a full line and an empty one.
            let room = cap - partial.bytes.len();
            let window = &rest[..rest.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    partial.bytes.extend_from_slice(&window[..nl]);
                    emit(partial, record.stream, out);
                    rest = &rest[nl + 1..];
                }
                None if window.len() > room => {
                    partial.bytes.extend_from_slice(&window[..room]);
                    emit(partial, record.stream, out);
                    rest = &rest[room..];
                }
                None => {
                    partial.bytes.extend_from_slice(window);
                    rest = &[];
                }
            }
        }
    }

    /// Appends the pending partial lines; call once the output has ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for stream in [Stream::Stdout, Stream::Stderr, Stream::System] {
            let partial = &mut self.partial[stream as usize];
            if !partial.bytes.is_empty() {
                emit(partial, stream, out);
            }
        }
    }
}

fn emit(partial: &mut Partial, stream: Stream, out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(&partial.bytes);
    let time = format_time(partial.time_unix_nanos);
    let line = Line {
        log: &text,
        stream,
        time: &time,
    };
    serde_json::to_writer(&mut *out, &line).expect("serializing strings to a Vec cannot fail");
    out.push(b'\n');
    partial.bytes.clear();
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-01-24T10:00:00.000000000Z`.
pub fn format_time(unix_nanos: i64) -> String {
    humantime::format_rfc3339_nanos(logfile::from_unix_nanos(unix_nanos)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(stream: Stream, t: i64, data: &[u8]) -> Record {
        Record {
            stream,
            time_unix_nanos: t,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn render(cap: usize, records: &[Record]) -> Vec<serde_json::Value> {
        let mut r = JsonLines::new(cap);
        let mut out = Vec::new();
        for record in records {
            r.push(record, &mut out);
        }
        r.finish(&mut out);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn one_object_per_line_with_exact_fields() {
        let lines = render(
            16,
            &[rec(
                Stream::Stdout,
                1_769_248_800_000_000_000,
                b"hello\nworld\n",
            )],
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            serde_json::json!({"log": "hello", "stream": "stdout", "time": "2026-01-24T10:00:00.000000000Z"})
        );
        assert_eq!(lines[1]["log"], "world");
    }

    #[test]
    fn lines_span_records_and_streams_stay_apart() {
        let lines = render(
            64,
            &[
                rec(Stream::Stdout, 1, b"hel"),
                rec(Stream::Stderr, 2, b"err\n"),
                rec(Stream::Stdout, 3, b"lo\npartial"),
            ],
        );
        let got: Vec<(String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l["stream"].as_str().unwrap().into(),
                    l["log"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("stderr".into(), "err".into()),
                ("stdout".into(), "hello".into()),
                ("stdout".into(), "partial".into()),
            ]
        );
        // A line takes the time its first byte was read.
        assert_eq!(lines[1]["time"], format_time(1));
    }

    #[test]
    fn long_lines_split_at_the_cap() {
        let lines = render(4, &[rec(Stream::Stdout, 0, b"abcdefghij\nxy\n")]);
        let logs: Vec<&str> = lines.iter().map(|l| l["log"].as_str().unwrap()).collect();
        assert_eq!(logs, vec!["abcd", "efgh", "ij", "xy"]);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_one_line_even_across_records() {
        let lines = render(
            4,
            &[
                rec(
                    Stream::Stdout,
                    0,
                    b"abcd
ef",
                ),
                rec(Stream::Stdout, 0, b"gh"),
                rec(
                    Stream::Stdout,
                    0,
                    b"
z",
                ),
            ],
        );
        let logs: Vec<&str> = lines.iter().map(|l| l["log"].as_str().unwrap()).collect();
        assert_eq!(logs, vec!["abcd", "efgh", "z"]);
    }

    #[test]
    fn non_utf8_is_replaced_and_escapes_are_valid_json() {
        let lines = render(64, &[rec(Stream::Stdout, 0, b"\xff\"quote\"\t\x01\n")]);
        assert_eq!(lines[0]["log"], "\u{fffd}\"quote\"\t\u{1}");
    }

    #[test]
    fn empty_lines_are_kept() {
        let lines = render(64, &[rec(Stream::Stdout, 0, b"\n\nx\n")]);
        let logs: Vec<&str> = lines.iter().map(|l| l["log"].as_str().unwrap()).collect();
        assert_eq!(logs, vec!["", "", "x"]);
    }
}
