//! The on-disk output log: a versioned header, then framed records appended by one writer.
//!
//! A record is one `read()` of a job's pipe, not one line, so framing costs per chunk and
//! bytes are stored exactly as written (binary, partial lines, huge lines alike).
//!
//! ```text
//! file:   "JWLOG\0" u16-le version
//! record: u32-le len | u8 stream | 3 zero bytes | i64-le unix nanos | u32-le crc | len bytes
//! ```
//!
//! The CRC covers the first 16 header bytes and the payload. Readers in this process only
//! read up to the length the writer has committed, so they trust the framing; the CRC is
//! for recovery after a crash, where the tail of the file may be a torn record.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub const MAGIC: &[u8; 6] = b"JWLOG\0";
/// Version 2 allows records of up to 256 KiB; version 1 (32 KiB) files are read alike.
/// The bump makes an older jobworker refuse a newer log rather than cut its large records
/// off as torn.
pub const VERSION: u16 = 2;
const READABLE_VERSIONS: std::ops::RangeInclusive<u16> = 1..=VERSION;
pub const FILE_HEADER_LEN: u64 = 8;
pub const RECORD_HEADER_LEN: usize = 20;
/// Largest payload the writer produces; bounds the smallest batch a reader can take.
pub const MAX_RECORD_DATA: usize = 256 * 1024;

/// Which of the job's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// A note from jobworker itself, such as "output cap reached".
    System,
}

impl Stream {
    fn code(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
            Stream::System => 3,
        }
    }

    fn from_code(code: u8) -> Option<Stream> {
        match code {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::System),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

/// One chunk of output as the job wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    /// Nanoseconds since the Unix epoch at which the chunk was read.
    pub time_unix_nanos: i64,
    pub data: Bytes,
}

impl Record {
    pub fn time(&self) -> SystemTime {
        from_unix_nanos(self.time_unix_nanos)
    }
}

pub fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..6].copy_from_slice(MAGIC);
    h[6..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Times are stored as nanoseconds since the Unix epoch, in records and job records.
pub fn to_unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
}

pub fn now_unix_nanos() -> i64 {
    to_unix_nanos(SystemTime::now())
}

/// Fills the header in `buf[..RECORD_HEADER_LEN]` for the payload that follows it, so that
/// the writer can `read()` straight into the buffer and `write()` header and payload at once.
pub fn encode_header(buf: &mut [u8], stream: Stream, time_unix_nanos: i64) {
    let len = (buf.len() - RECORD_HEADER_LEN) as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4] = stream.code();
    buf[5..8].fill(0);
    buf[8..16].copy_from_slice(&time_unix_nanos.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[..16]);
    crc.update(&buf[RECORD_HEADER_LEN..]);
    buf[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// A parsed record header.
pub(crate) struct Header {
    pub len: usize,
    pub stream: Stream,
    pub time_unix_nanos: i64,
    pub crc: u32,
}

impl Header {
    /// Whether `payload` is this record's, as the writer framed it.
    pub fn matches(&self, head: &[u8], payload: &[u8]) -> bool {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..16]);
        crc.update(payload);
        payload.len() == self.len && crc.finalize() == self.crc
    }
}

pub(crate) fn decode_header(h: &[u8]) -> Option<Header> {
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    let stream = Stream::from_code(h[4])?;
    if len > MAX_RECORD_DATA || h[5..8] != [0, 0, 0] {
        return None;
    }
    Some(Header {
        len,
        stream,
        time_unix_nanos: i64::from_le_bytes(h[8..16].try_into().ok()?),
        crc: u32::from_le_bytes(h[16..20].try_into().ok()?),
    })
}

/// The rest of a record whose payload went on past the end of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continued {
    pub stream: Stream,
    pub time_unix_nanos: i64,
    /// Payload bytes already handed out.
    pub taken: usize,
    /// Payload bytes still to come.
    pub remaining: usize,
}

/// What [`split_records`] found in a buffer.
#[derive(Debug)]
pub struct Split {
    pub records: Vec<Record>,
    /// Bytes consumed; a trailing fragment of a record header is left for the next read.
    pub used: usize,
    /// Set when the last record's payload continues past the buffer.
    pub continued: Option<Continued>,
}

/// Splits a buffer read from a committed region into records that share its memory.
/// `continued` says where the buffer starts inside a record's payload (from the previous
/// split). A record cut by the end of the buffer yields its part as a record of its own,
/// so a reader's batch size need not be a record size. Fails on framing that cannot come
/// from our writer.
pub fn split_records(buf: Bytes, continued: Option<Continued>) -> io::Result<Split> {
    let mut records = Vec::new();
    let mut pos = 0;
    let mut push = |stream, time_unix_nanos, data: Bytes| {
        if !data.is_empty() {
            records.push(Record {
                stream,
                time_unix_nanos,
                data,
            });
        }
    };
    if let Some(c) = continued {
        let take = c.remaining.min(buf.len());
        push(c.stream, c.time_unix_nanos, buf.slice(..take));
        if take < c.remaining {
            let continued = Continued {
                taken: c.taken + take,
                remaining: c.remaining - take,
                ..c
            };
            return Ok(Split {
                records,
                used: take,
                continued: Some(continued),
            });
        }
        pos = take;
    }
    while buf.len() - pos >= RECORD_HEADER_LEN {
        let header = decode_header(&buf[pos..pos + RECORD_HEADER_LEN])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "corrupt output record"))?;
        let start = pos + RECORD_HEADER_LEN;
        let end = start + header.len;
        if end > buf.len() {
            push(header.stream, header.time_unix_nanos, buf.slice(start..));
            return Ok(Split {
                records,
                used: buf.len(),
                continued: Some(Continued {
                    stream: header.stream,
                    time_unix_nanos: header.time_unix_nanos,
                    taken: buf.len() - start,
                    remaining: end - buf.len(),
                }),
            });
        }
        push(header.stream, header.time_unix_nanos, buf.slice(start..end));
        pos = end;
    }
    Ok(Split {
        records,
        used: pos,
        continued: None,
    })
}

/// Checks a log file's header and returns the length of its valid prefix: the file header
/// plus every whole record whose CRC matches, stopping at the first torn or corrupt one.
pub fn valid_len(file: &File) -> io::Result<u64> {
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    if &header[..6] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a jobworker output log",
        ));
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    if !READABLE_VERSIONS.contains(&version) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("output log format version {version} is not supported"),
        ));
    }
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut skip = [0u8; FILE_HEADER_LEN as usize];
    reader.read_exact(&mut skip)?;
    let mut pos = FILE_HEADER_LEN;
    let mut head = [0u8; RECORD_HEADER_LEN];
    let mut payload = vec![0u8; MAX_RECORD_DATA];
    loop {
        if read_full(&mut reader, &mut head)? < RECORD_HEADER_LEN {
            return Ok(pos);
        }
        let Some(h) = decode_header(&head) else {
            return Ok(pos);
        };
        if read_full(&mut reader, &mut payload[..h.len])? < h.len {
            return Ok(pos);
        }
        if !h.matches(&head, &payload[..h.len]) {
            return Ok(pos);
        }
        pos += (RECORD_HEADER_LEN + h.len) as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(stream: Stream, t: i64, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_HEADER_LEN + data.len()];
        buf[RECORD_HEADER_LEN..].copy_from_slice(data);
        encode_header(&mut buf, stream, t);
        buf
    }

    #[test]
    fn records_round_trip_and_header_fragment_is_left() {
        let mut buf = record(Stream::Stdout, 5, b"hello\n");
        buf.extend(record(Stream::Stderr, 7, b"\xff\x00bin"));
        let whole = buf.len();
        buf.extend(&record(Stream::Stdout, 9, b"partial")[..10]);
        let split = split_records(Bytes::from(buf), None).unwrap();
        assert_eq!(split.used, whole);
        assert_eq!(split.continued, None);
        let records = split.records;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stream, Stream::Stdout);
        assert_eq!(records[0].time_unix_nanos, 5);
        assert_eq!(&records[0].data[..], b"hello\n");
        assert_eq!(records[1].stream, Stream::Stderr);
        assert_eq!(&records[1].data[..], b"\xff\x00bin");
    }

    #[test]
    fn a_record_cut_by_the_buffer_continues_in_the_next() {
        let mut log = record(Stream::Stdout, 1, b"a\n");
        log.extend(record(Stream::Stderr, 2, b"0123456789"));
        log.extend(record(Stream::Stdout, 3, b"z"));
        let log = Bytes::from(log);
        // Cut inside the second record's payload, then again inside what is left of it.
        let cut = (RECORD_HEADER_LEN + 2) + RECORD_HEADER_LEN + 4;
        let first = split_records(log.slice(..cut), None).unwrap();
        assert_eq!(first.used, cut);
        let data: Vec<_> = first.records.iter().map(|r| &r.data[..]).collect();
        assert_eq!(data, [&b"a\n"[..], b"0123"]);
        let c = first.continued.unwrap();
        assert_eq!(
            (c.stream, c.time_unix_nanos, c.remaining),
            (Stream::Stderr, 2, 6)
        );

        let second = split_records(log.slice(cut..cut + 2), Some(c)).unwrap();
        assert_eq!(second.used, 2);
        assert_eq!(&second.records[0].data[..], b"45");
        assert_eq!(second.records[0].stream, Stream::Stderr);
        let c = second.continued.unwrap();
        assert_eq!(c.remaining, 4);

        let third = split_records(log.slice(cut + 2..), Some(c)).unwrap();
        assert_eq!(third.used, log.len() - cut - 2);
        assert_eq!(third.continued, None);
        let got: Vec<_> = third
            .records
            .iter()
            .map(|r| (r.stream, r.time_unix_nanos, &r.data[..]))
            .collect();
        assert_eq!(
            got,
            [(Stream::Stderr, 2, &b"6789"[..]), (Stream::Stdout, 3, b"z")]
        );
    }

    #[test]
    fn corrupt_framing_is_an_error() {
        let mut buf = record(Stream::Stdout, 1, b"x");
        buf[4] = 9;
        assert!(split_records(Bytes::from(buf), None).is_err());
    }

    #[test]
    fn valid_len_cuts_a_torn_or_corrupt_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = File::create(&path).unwrap();
        f.write_all(&file_header()).unwrap();
        let a = record(Stream::Stdout, 1, b"first\n");
        let b = record(Stream::Stdout, 2, b"second\n");
        f.write_all(&a).unwrap();
        f.write_all(&b).unwrap();
        let full = FILE_HEADER_LEN + (a.len() + b.len()) as u64;
        assert_eq!(valid_len(&File::open(&path).unwrap()).unwrap(), full);

        // A torn record: only part of its payload made it to disk.
        f.write_all(&record(Stream::Stderr, 3, b"torn record")[..25])
            .unwrap();
        assert_eq!(valid_len(&File::open(&path).unwrap()).unwrap(), full);

        // A whole-length record whose bytes are wrong fails its CRC.
        let mut bad = record(Stream::Stdout, 4, b"flipped");
        *bad.last_mut().unwrap() ^= 1;
        let f2 = dir.path().join("log2");
        let mut g = File::create(&f2).unwrap();
        g.write_all(&file_header()).unwrap();
        g.write_all(&a).unwrap();
        g.write_all(&bad).unwrap();
        assert_eq!(
            valid_len(&File::open(&f2).unwrap()).unwrap(),
            FILE_HEADER_LEN + a.len() as u64
        );
    }

    #[test]
    fn version_1_logs_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut h = file_header();
        h[6..].copy_from_slice(&1u16.to_le_bytes());
        let a = record(Stream::Stdout, 1, b"from an older jobworker\n");
        std::fs::write(&path, [&h[..], &a].concat()).unwrap();
        assert_eq!(
            valid_len(&File::open(&path).unwrap()).unwrap(),
            FILE_HEADER_LEN + a.len() as u64
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut h = file_header();
        h[6] = 99;
        std::fs::write(&path, h).unwrap();
        let err = valid_len(&File::open(&path).unwrap()).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
