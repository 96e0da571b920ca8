//! The worker's typed errors. Each variant says whose fault it is, so the server can map
//! it to the right status code without parsing messages.

use std::io;

use crate::spec::JobId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty argv, NUL bytes, malformed id, bad limits).
    #[error("{0}")]
    InvalidArgument(String),

    /// The program could not be started: no such file, not executable, and so on.
    #[error("cannot start {}: {reason}", crate::inert::Brief(program))]
    Exec { program: String, reason: String },

    /// The caller may not ask for this (e.g. a root job where the server forbids them).
    #[error("{0}")]
    PermissionDenied(String),

    #[error("job {0} not found")]
    NotFound(JobId),

    /// The request is valid but this server cannot honour it (e.g. limits without cgroups).
    #[error("{0}")]
    Unsupported(String),

    /// A server limit is reached (e.g. the number of running jobs); retry later.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The state dir has no room for a job's record (ENOSPC, EDQUOT): nothing was started.
    #[error("{context}: the state dir is full")]
    StateDirFull { context: String },

    /// A job that has not ended cannot be removed, and similar state conflicts.
    #[error("{0}")]
    FailedPrecondition(String),

    /// Something on the server failed; not the caller's doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An error writing the state dir: [`Error::StateDirFull`] if it is out of room.
    pub(crate) fn storage(context: impl Into<String>, source: io::Error) -> Self {
        if crate::durable::is_full(&source) {
            Error::StateDirFull {
                context: context.into(),
            }
        } else {
            Error::io(context, source)
        }
    }
}
