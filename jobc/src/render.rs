//! Rendering output records as the JSON lines `jobc logs` prints, like Docker's json-file:
//! `{"log":"line without newline","stream":"stdout","time":"2026-01-24T10:00:00.000000000Z"}`.
//!
//! Records are chunks, so a line may span several records and a record may hold many
//! lines; each stream keeps its own partial line. A line longer than the cap is emitted in
//! pieces of the cap, and a last line without a newline is emitted when the output ends.
//! Bytes that are not UTF-8 are replaced (U+FFFD); `--raw` is for exact bytes.
//!
//! This runs once per line of output, millions of times for a big log, so nothing here
//! allocates per line: a line that lies whole in one record is written straight from it,
//! the lines of a record share one formatted time, and the JSON is written by hand (with
//! serde_json's escapes, byte for byte).

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use proto::v1::{OutputRecord as Record, Stream};

/// The streams a line can belong to, each with its own partial line. A record of an
/// unknown stream (a newer server) is shown as stdout, its bytes kept.
const STREAMS: [Stream; 3] = [Stream::Stdout, Stream::Stderr, Stream::System];

/// Which of [`STREAMS`] a record's wire value is.
fn stream_of(value: i32) -> Stream {
    match Stream::try_from(value) {
        Ok(s @ (Stream::Stderr | Stream::System)) => s,
        _ => Stream::Stdout,
    }
}

/// Where `stream` is in [`STREAMS`].
fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stderr => 1,
        Stream::System => 2,
        _ => 0,
    }
}

/// The name `jobc logs` prints for a stream.
fn name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stderr => "stderr",
        Stream::System => "system",
        _ => "stdout",
    }
}

/// Default longest line emitted as one JSON object, in bytes (Docker uses 16 KiB too).
pub const DEFAULT_LINE_CAP: usize = 16 * 1024;

#[derive(Default)]
struct Partial {
    bytes: Vec<u8>,
    /// When the first byte of the pending line was read.
    time_unix_nanos: i64,
}

impl Partial {
    /// Emits the pending line and starts a new one.
    fn emit(&mut self, stream: Stream, time: &mut TimeText, out: &mut Vec<u8>) {
        line(&self.bytes, stream, time.of(self.time_unix_nanos), out);
        self.bytes.clear();
    }
}

/// A record's time in nanoseconds since the Unix epoch (0 if the server sent none).
fn unix_nanos(record: &Record) -> i64 {
    record.time.as_ref().map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

/// The last time formatted. Every line of a record has the record's time, so a record of
/// thousands of lines formats it once.
#[derive(Default)]
struct TimeText {
    unix_nanos: Option<i64>,
    text: String,
}

impl TimeText {
    fn of(&mut self, unix_nanos: i64) -> &str {
        if self.unix_nanos != Some(unix_nanos) {
            self.text = format_time(unix_nanos);
            self.unix_nanos = Some(unix_nanos);
        }
        &self.text
    }
}

/// Turns a sequence of records into JSON lines.
pub struct JsonLines {
    cap: usize,
    partial: [Partial; 3],
    time: TimeText,
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
            time: TimeText::default(),
        }
    }

    /// Appends to `out` every line that `record` completes.
    pub fn push(&mut self, record: &Record, out: &mut Vec<u8>) {
        let JsonLines { cap, partial, time } = self;
        let stream = stream_of(record.stream);
        let partial = &mut partial[slot(stream)];
        let mut rest: &[u8] = &record.data;
        while !rest.is_empty() {
            // Look one byte past the room left, so a line of exactly `cap` bytes followed
            // by its newline is one line, not a full line and an empty one.
            let room = *cap - partial.bytes.len();
            let window = &rest[..rest.len().min(room + 1)];
            let (end, skip) = match memchr::memchr(b'\n', window) {
                Some(nl) => (nl, nl + 1),
                None if window.len() > room => (room, room),
                None => {
                    if partial.bytes.is_empty() {
                        partial.time_unix_nanos = unix_nanos(record);
                    }
                    partial.bytes.extend_from_slice(window);
                    return;
                }
            };
            if partial.bytes.is_empty() {
                // The whole line is in this record: written from it, not copied first.
                line(&rest[..end], stream, time.of(unix_nanos(record)), out);
            } else {
                partial.bytes.extend_from_slice(&rest[..end]);
                partial.emit(stream, time, out);
            }
            rest = &rest[skip..];
        }
    }

    /// Appends the pending partial lines; call once the output has ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for stream in STREAMS {
            let partial = &mut self.partial[slot(stream)];
            if !partial.bytes.is_empty() {
                partial.emit(stream, &mut self.time, out);
            }
        }
    }
}

/// Appends one JSON object and its newline, fields in Docker's order.
fn line(bytes: &[u8], stream: Stream, time: &str, out: &mut Vec<u8>) {
    // `from_utf8` checks ASCII many bytes at a time; the lossy decoder goes byte by byte.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    out.extend_from_slice(b"{\"log\":\"");
    escape(&text, out);
    out.extend_from_slice(b"\",\"stream\":\"");
    out.extend_from_slice(name(stream).as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    // RFC 3339 is digits, '-', ':', 'T', '.' and 'Z': nothing to escape.
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// What a JSON string must escape: the quote, the backslash and control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `text` escaped for a JSON string, exactly as serde_json escapes it. Runs that
/// need nothing are found 16 bytes at a time (the compiler turns that test into vector
/// compares) and copied whole.
fn escape(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut escape_in = |part: &[u8], at: usize, out: &mut Vec<u8>| {
        for (i, &b) in part.iter().enumerate() {
            if needs_escape(b) {
                out.extend_from_slice(&bytes[copied..at + i]);
                push_escape(b, out);
                copied = at + i + 1;
            }
        }
    };
    let mut chunks = bytes.chunks_exact(16);
    let mut at = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | needs_escape(b)) {
            escape_in(chunk, at, out);
        }
        at += 16;
    }
    escape_in(chunks.remainder(), at, out);
    out.extend_from_slice(&bytes[copied..]);
}

/// serde_json's escape for one byte: a short form where JSON has one, else `\u00xx`.
fn push_escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
            return;
        }
    };
    out.extend_from_slice(short);
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-01-24T10:00:00.000000000Z`.
pub fn format_time(unix_nanos: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_nanos(unix_nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stream: Stream, t: i64, data: &[u8]) -> Record {
        Record {
            stream: stream as i32,
            time: Some(proto::Timestamp {
                seconds: t.div_euclid(1_000_000_000),
                nanos: t.rem_euclid(1_000_000_000) as i32,
            }),
            data: data.to_vec().into(),
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

    /// A small deterministic generator, so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn escapes_are_serde_jsons_byte_for_byte() {
        let mut cases: Vec<String> = (0u32..0x80)
            .chain([0xe9, 0x7ff, 0x20ac, 0xfffd, 0x1f600])
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        // Escapes at every position around the 16-byte steps, runs of them, and
        // multi-byte characters across the steps.
        let alphabet = [
            'a', ' ', '"', '\\', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', '😀',
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let len = rng.below(70);
            cases.push(
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect(),
            );
        }
        for case in cases {
            let mut ours = b"\"".to_vec();
            escape(&case, &mut ours);
            ours.push(b'"');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&case).unwrap(),
                "escaping {case:?}"
            );
        }
    }

    /// The renderer written the plain way, byte by byte through serde_json: what the fast
    /// one must match exactly.
    fn reference(cap: usize, records: &[Record]) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            log: &'a str,
            stream: &'a str,
            time: &'a str,
        }
        fn emit(bytes: &[u8], stream: Stream, time: i64, out: &mut Vec<u8>) {
            let line = Line {
                log: &String::from_utf8_lossy(bytes),
                stream: name(stream),
                time: &format_time(time),
            };
            serde_json::to_writer(&mut *out, &line).unwrap();
            out.push(b'\n');
        }
        let mut pending: [(Vec<u8>, i64); 3] = Default::default();
        let mut out = Vec::new();
        for r in records {
            let stream = stream_of(r.stream);
            let (line, time) = &mut pending[slot(stream)];
            for &b in r.data.iter() {
                if b != b'\n' && line.len() == cap {
                    emit(line, stream, *time, &mut out);
                    line.clear();
                }
                if line.is_empty() {
                    *time = unix_nanos(r);
                }
                if b == b'\n' {
                    emit(line, stream, *time, &mut out);
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        for stream in STREAMS {
            let (line, time) = &pending[slot(stream)];
            if !line.is_empty() {
                emit(line, stream, *time, &mut out);
            }
        }
        out
    }

    #[test]
    fn renders_exactly_as_the_plain_reference() {
        let bytes = [
            b'a', b'b', b' ', b'\n', b'\n', b'"', b'\\', b'\t', 0x01, 0xc3, 0xa9, 0xff, 0xe2, 0x82,
            0xac,
        ];
        let streams = [
            Stream::Stdout,
            Stream::Stdout,
            Stream::Stderr,
            Stream::System,
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..3000 {
            let cap = [1, 2, 3, 5, 16, 17, 40, DEFAULT_LINE_CAP][round % 8];
            let records: Vec<Record> = (0..1 + rng.below(12))
                .map(|_| {
                    let data: Vec<u8> = (0..rng.below(50))
                        .map(|_| bytes[rng.below(bytes.len())])
                        .collect();
                    rec(
                        streams[rng.below(streams.len())],
                        rng.below(3) as i64,
                        &data,
                    )
                })
                .collect();
            let mut fast = JsonLines::new(cap);
            let mut out = Vec::new();
            for r in &records {
                fast.push(r, &mut out);
            }
            fast.finish(&mut out);
            let want = reference(cap, &records);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "cap {cap}, records {records:?}"
            );
        }
    }

    #[test]
    fn empty_lines_are_kept() {
        let lines = render(64, &[rec(Stream::Stdout, 0, b"\n\nx\n")]);
        let logs: Vec<&str> = lines.iter().map(|l| l["log"].as_str().unwrap()).collect();
        assert_eq!(logs, vec!["", "", "x"]);
    }
}
