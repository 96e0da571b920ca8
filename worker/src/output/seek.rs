//! Where a read of a job's output starts: at a position a reader was given before, at
//! the first record of a time, or at the last N lines.
//!
//! A position names a record by its offset in the log file and the payload bytes of it
//! already delivered, so a read can stop anywhere (batches end inside large records) and
//! resume with no gap and no duplicate byte. The log has no index: a time or a tail is
//! found by one forward walk over the committed records, in large reads, off the async
//! runtime. A tail keeps only the last records that hold its lines, so its memory is
//! bounded by the lines asked for, not by the log.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::output::logfile::{
    decode_header, Continued, Header, FILE_HEADER_LEN, RECORD_HEADER_LEN,
};

/// Where a read stands: the record at `offset` in the log file, of whose payload `skip`
/// bytes were delivered. Readers hand it out after each batch; it is opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub offset: u64,
    pub skip: u64,
}

impl LogPosition {
    /// The start of a log.
    pub const BEGINNING: LogPosition = LogPosition {
        offset: FILE_HEADER_LEN,
        skip: 0,
    };
}

/// Where a read of a job's output begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogStart {
    #[default]
    Beginning,
    /// Where an earlier read left off.
    Position(LogPosition),
    /// The first record read at or after this time (nanoseconds since the Unix epoch).
    Since(i64),
    /// The last N lines of stdout and stderr together; an unfinished last line counts.
    TailLines(u64),
}

/// A reader's starting point in the file: the next byte to read and, inside a record's
/// payload, the rest of that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub pos: u64,
    pub continued: Option<Continued>,
}

impl Start {
    /// The first record of a log.
    pub const BEGINNING: Start = Start::at(FILE_HEADER_LEN);

    const fn at(pos: u64) -> Start {
        Start {
            pos,
            continued: None,
        }
    }

    /// `skip` bytes into the payload of the record at `offset`.
    fn inside(offset: u64, header: &Header, skip: usize) -> Start {
        let payload = offset + RECORD_HEADER_LEN as u64;
        if skip >= header.len {
            return Start::at(payload + header.len as u64);
        }
        if skip == 0 {
            return Start::at(offset);
        }
        Start {
            pos: payload + skip as u64,
            continued: Some(Continued {
                stream: header.stream,
                time_unix_nanos: header.time_unix_nanos,
                taken: skip,
                remaining: header.len - skip,
            }),
        }
    }
}

/// Why a position was refused: it names no record of this log.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("the position (offset {offset}, skip {skip}) is not one of this job's output")]
    NotARecord { offset: u64, skip: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Finds where `start` begins in the log `file`, of which `committed` bytes are whole.
pub(crate) fn find(file: &File, start: LogStart, committed: u64) -> Result<Start, SeekError> {
    match start {
        LogStart::Beginning => Ok(Start::BEGINNING),
        LogStart::Position(p) => at_position(file, p, committed),
        LogStart::Since(nanos) => Ok(since(file, nanos, committed)?),
        LogStart::TailLines(lines) => Ok(tail(file, lines, committed)?),
    }
}

/// Checks that `p` names a whole, committed record (its CRC too: a position is the
/// client's to send) and returns the point it stands for.
fn at_position(file: &File, p: LogPosition, committed: u64) -> Result<Start, SeekError> {
    let refused = SeekError::NotARecord {
        offset: p.offset,
        skip: p.skip,
    };
    if p.offset < FILE_HEADER_LEN || p.offset > committed {
        return Err(refused);
    }
    if p.offset == committed {
        return if p.skip == 0 {
            Ok(Start::at(committed))
        } else {
            Err(refused)
        };
    }
    let mut window = Window::new(file, committed);
    let Some((header, head)) = window.header(p.offset)? else {
        return Err(refused);
    };
    let payload = window.payload(p.offset, &header)?;
    let Some(payload) = payload else {
        return Err(refused);
    };
    if !header.matches(&head, payload) || p.skip > header.len as u64 {
        return Err(refused);
    }
    Ok(Start::inside(p.offset, &header, p.skip as usize))
}

/// The first record read at or after `nanos`, or the end.
fn since(file: &File, nanos: i64, committed: u64) -> io::Result<Start> {
    let mut window = Window::new(file, committed);
    let mut offset = FILE_HEADER_LEN;
    while let Some((header, _)) = window.header(offset)? {
        if header.time_unix_nanos >= nanos {
            return Ok(Start::at(offset));
        }
        offset += (RECORD_HEADER_LEN + header.len) as u64;
    }
    Ok(Start::at(offset))
}

/// A record that holds newlines, as a tail remembers it.
struct Lines {
    offset: u64,
    /// Index (from 0, over the whole log) of its first newline.
    first: u64,
    count: u64,
}

/// Where the last `lines` lines begin: just after the newline that ends the line before
/// them, counted from the end of the log (a final newline ends the last line, it does not
/// start one more).
fn tail(file: &File, lines: u64, committed: u64) -> io::Result<Start> {
    if lines == 0 {
        return Ok(Start::at(committed));
    }
    let mut window = Window::new(file, committed);
    let mut kept: VecDeque<Lines> = VecDeque::new();
    let mut total = 0u64;
    let mut ends_with_newline = false;
    let mut offset = FILE_HEADER_LEN;
    while let Some((header, _)) = window.header(offset)? {
        let payload = window
            .payload(offset, &header)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated output record"))?;
        let count = memchr::memchr_iter(b'\n', payload).count() as u64;
        if let Some(&last) = payload.last() {
            ends_with_newline = last == b'\n';
        }
        if count > 0 {
            kept.push_back(Lines {
                offset,
                first: total,
                count,
            });
            total += count;
            // The newline sought (see below) is at index total - lines - 1 or later:
            // records wholly before it are not needed.
            let needed = total.saturating_sub(lines + 1);
            while kept.front().is_some_and(|r| r.first + r.count <= needed) {
                kept.pop_front();
            }
        }
        offset += (RECORD_HEADER_LEN + header.len) as u64;
    }
    // Lines in the log: one per newline, and an unfinished last one.
    let in_log = total + u64::from(!ends_with_newline);
    if in_log <= lines {
        return Ok(Start::BEGINNING);
    }
    // The tail starts after the newline that ends line `in_log - lines` (from 1).
    let sought = in_log - lines - 1;
    let Some(record) = kept
        .iter()
        .find(|r| r.first <= sought && sought < r.first + r.count)
    else {
        return Err(io::Error::other("a tail lost the record of its first line"));
    };
    let (header, _) = window
        .header(record.offset)?
        .ok_or_else(|| io::Error::other("a tail lost the record of its first line"))?;
    let payload = window
        .payload(record.offset, &header)?
        .ok_or_else(|| io::Error::other("a tail lost the record of its first line"))?;
    let nth = (sought - record.first) as usize;
    let at = memchr::memchr_iter(b'\n', payload)
        .nth(nth)
        .ok_or_else(|| io::Error::other("a tail lost the record of its first line"))?;
    Ok(Start::inside(record.offset, &header, at + 1))
}

/// Large reads of the committed part of a log, served as slices: a walk costs a read per
/// window, not per record.
struct Window<'a> {
    file: &'a File,
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

const WINDOW_BYTES: usize = 1024 * 1024;

impl<'a> Window<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        Window {
            file,
            end,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// `len` bytes at `at`, or `None` if they are not all committed.
    fn bytes(&mut self, at: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(stop) = at.checked_add(len as u64).filter(|s| *s <= self.end) else {
            return Ok(None);
        };
        let held = self.start + self.buf.len() as u64;
        if at < self.start || stop > held {
            let want = (self.end - at).min(WINDOW_BYTES.max(len) as u64) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.start = at;
        }
        let from = (at - self.start) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// The header of the record at `offset` and its raw bytes, or `None` at the end (or
    /// where no record of ours begins).
    fn header(&mut self, offset: u64) -> io::Result<Option<(Header, [u8; RECORD_HEADER_LEN])>> {
        let Some(bytes) = self.bytes(offset, RECORD_HEADER_LEN)? else {
            return Ok(None);
        };
        let mut head = [0u8; RECORD_HEADER_LEN];
        head.copy_from_slice(bytes);
        Ok(decode_header(&head).map(|h| (h, head)))
    }

    /// The payload of the record at `offset`, or `None` if it is not all committed.
    fn payload(&mut self, offset: u64, header: &Header) -> io::Result<Option<&[u8]>> {
        self.bytes(offset + RECORD_HEADER_LEN as u64, header.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::logfile::{encode_header, file_header, split_records, Stream};
    use std::io::Write;

    /// A log of these records (stream, time, data); returns it and its length.
    fn log(records: &[(Stream, i64, &[u8])]) -> (File, u64) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&file_header()).unwrap();
        for (stream, t, data) in records {
            let mut buf = vec![0u8; RECORD_HEADER_LEN + data.len()];
            buf[RECORD_HEADER_LEN..].copy_from_slice(data);
            encode_header(&mut buf, *stream, *t);
            f.write_all(&buf).unwrap();
        }
        let len = f.metadata().unwrap().len();
        (f, len)
    }

    /// Every byte from `start` to the end, as a reader would hand them out.
    fn read_from(f: &File, start: Start, end: u64) -> Vec<u8> {
        let mut buf = vec![0u8; (end - start.pos) as usize];
        f.read_exact_at(&mut buf, start.pos).unwrap();
        let split = split_records(bytes::Bytes::from(buf), start.continued).unwrap();
        split.records.iter().flat_map(|r| r.data.to_vec()).collect()
    }

    const OUT: Stream = Stream::Stdout;
    const ERR: Stream = Stream::Stderr;

    #[test]
    fn a_tail_starts_at_the_first_of_the_last_lines() {
        let (f, end) = log(&[
            (OUT, 1, b"one\ntwo\nthr"),
            (ERR, 2, b"ee\n"),
            (OUT, 3, b"four\nfive\n"),
        ]);
        let last = |n| read_from(&f, tail(&f, n, end).unwrap(), end);
        assert_eq!(last(0), b"");
        assert_eq!(last(1), b"five\n");
        assert_eq!(last(2), b"four\nfive\n");
        assert_eq!(last(3), b"three\nfour\nfive\n");
        assert_eq!(last(4), b"two\nthree\nfour\nfive\n");
        assert_eq!(last(5), b"one\ntwo\nthree\nfour\nfive\n");
        assert_eq!(last(50), b"one\ntwo\nthree\nfour\nfive\n");
        // An unfinished last line counts as one.
        let (f, end) = log(&[(OUT, 1, b"a\nb\nc")]);
        assert_eq!(read_from(&f, tail(&f, 1, end).unwrap(), end), b"c");
        assert_eq!(read_from(&f, tail(&f, 2, end).unwrap(), end), b"b\nc");
    }

    /// The last `n` lines of `text`, the plain way.
    fn naive_tail(text: &[u8], n: usize) -> &[u8] {
        let mut starts: Vec<usize> = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text).map(|i| i + 1));
        if starts.last() == Some(&text.len()) {
            starts.pop();
        }
        &text[starts[starts.len().saturating_sub(n)]..]
    }

    #[test]
    fn a_tail_of_many_records_agrees_with_the_plain_way() {
        // Records of one to three lines, lines cut across records, records with none.
        let mut records: Vec<Vec<u8>> = Vec::new();
        for i in 0..3000 {
            records.push(match i % 4 {
                0 => format!("{i}\n").into_bytes(),
                1 => format!("{i}a\n{i}b\n{i}").into_bytes(),
                2 => b"-".to_vec(),
                _ => format!("c\n{i}\n").into_bytes(),
            });
        }
        let refs: Vec<(Stream, i64, &[u8])> = records.iter().map(|r| (OUT, 0, &r[..])).collect();
        let (f, end) = log(&refs);
        let whole = records.concat();
        for n in [1, 2, 3, 7, 100, 4000, 100_000] {
            let got = read_from(&f, tail(&f, n as u64, end).unwrap(), end);
            assert!(got == naive_tail(&whole, n), "tail {n}");
        }
    }

    #[test]
    fn since_finds_the_first_record_of_its_time() {
        let (f, end) = log(&[(OUT, 10, b"a"), (OUT, 20, b"b"), (ERR, 30, b"c")]);
        let from = |t| read_from(&f, since(&f, t, end).unwrap(), end);
        assert_eq!(from(0), b"abc");
        assert_eq!(from(20), b"bc");
        assert_eq!(from(21), b"c");
        assert_eq!(from(31), b"");
    }

    #[test]
    fn a_position_resumes_inside_a_record_and_refuses_what_is_not_one() {
        let (f, end) = log(&[(OUT, 1, b"hello"), (ERR, 2, b"world")]);
        let second = FILE_HEADER_LEN + (RECORD_HEADER_LEN + 5) as u64;
        let at = |offset, skip| at_position(&f, LogPosition { offset, skip }, end);
        let from = |offset, skip| read_from(&f, at(offset, skip).unwrap(), end);
        assert_eq!(from(FILE_HEADER_LEN, 0), b"helloworld");
        assert_eq!(from(FILE_HEADER_LEN, 3), b"loworld");
        assert_eq!(from(FILE_HEADER_LEN, 5), b"world");
        assert_eq!(from(second, 4), b"d");
        assert_eq!(from(end, 0), b"");
        for (offset, skip) in [
            (0, 0),
            (FILE_HEADER_LEN + 1, 0),
            (FILE_HEADER_LEN, 6),
            (end, 1),
            (end + 1, 0),
            (u64::MAX, u64::MAX),
        ] {
            assert!(
                matches!(at(offset, skip), Err(SeekError::NotARecord { .. })),
                "{offset} {skip}"
            );
        }
    }
}
