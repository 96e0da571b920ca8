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

#[cfg(test)]
mod tests {
    use super::*;

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
