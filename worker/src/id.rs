//! A job's identity, on its own so that both requests and errors can name a job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id: a random UUID, so ids are unguessable and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(uuid::Uuid);

impl JobId {
    pub(crate) fn new() -> Self {
        JobId(uuid::Uuid::new_v4())
    }

    /// The id's 16 bytes, for compact encodings such as a list's page token.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.into_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        JobId(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A job id that is not a UUID; the caller's mistake. Says the text quoted, short and
/// inert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed job id {text}: expected a UUID")]
pub struct MalformedJobId {
    text: String,
}

impl FromStr for JobId {
    type Err = MalformedJobId;

    fn from_str(s: &str) -> Result<Self, MalformedJobId> {
        uuid::Uuid::try_parse(s)
            .map(JobId)
            .map_err(|_| MalformedJobId {
                text: common::inert::Quoted(s).to_string(),
            })
    }
}

/// The start of a job id, as people type it (`a62d`, `a62dfccc-2ff9`): at least
/// [`IdPrefix::MIN_LEN`] characters of the id's usual lowercase form, hyphens where the
/// id has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

/// Why a text is not an id prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPrefix {
    #[error("job id prefix {0} is too short: give at least 4 characters of the id")]
    TooShort(String),
    #[error("malformed job id {0}: expected a UUID or the start of one")]
    Malformed(String),
}

impl IdPrefix {
    pub const MIN_LEN: usize = 4;

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: JobId) -> bool {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.0.hyphenated().encode_lower(&mut buf);
        text.as_bytes().starts_with(self.0.as_bytes())
    }
}

impl FromStr for IdPrefix {
    type Err = BadPrefix;

    fn from_str(s: &str) -> Result<Self, BadPrefix> {
        let quoted = || common::inert::Quoted(s).to_string();
        let lower = s.to_ascii_lowercase();
        let well_formed = lower.len() <= uuid::fmt::Hyphenated::LENGTH
            && lower.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !well_formed {
            return Err(BadPrefix::Malformed(quoted()));
        }
        if lower.len() < Self::MIN_LEN {
            return Err(BadPrefix::TooShort(quoted()));
        }
        Ok(IdPrefix(lower))
    }
}

impl fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_the_start_of_the_usual_form_only() {
        let id: JobId = "a62dfccc-2ff9-411d-a9ef-d4812ed3d867".parse().unwrap();
        for yes in [
            "a62d",
            "A62DFCCC",
            "a62dfccc-",
            "a62dfccc-2f",
            &id.to_string(),
        ] {
            let p: IdPrefix = yes.parse().unwrap();
            assert!(p.matches(id), "{yes}");
        }
        let p: IdPrefix = "a62e".parse().unwrap();
        assert!(!p.matches(id));
        assert!(matches!(
            "a62".parse::<IdPrefix>(),
            Err(BadPrefix::TooShort(_))
        ));
        for bad in [
            "a62dfccc2ff9",
            "xyz1",
            "a62d ",
            "a62dfccc-2ff9-411d-a9ef-d4812ed3d8670",
            "",
        ] {
            assert!(bad.parse::<IdPrefix>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn job_ids_parse_and_print_as_uuids() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        let err = "1234".parse::<JobId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed job id \"1234\": expected a UUID"
        );
        // A huge or hostile id is quoted short and inert: Python's gRPC clients fail
        // on a status message past their 8 KB metadata limit.
        let err = "\u{1b}[2J"
            .repeat(2000)
            .parse::<JobId>()
            .unwrap_err()
            .to_string();
        assert!(err.len() < 300, "{} bytes: {err}", err.len());
        assert!(!err.contains('\u{1b}'), "{err}");
        assert!(err.ends_with("(8000 bytes): expected a UUID"), "{err}");
    }
}
