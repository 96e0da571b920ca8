//! The worker's typed errors. Each variant says whose fault it is, so the server can map
//! it to the right status code without parsing messages.

use std::io;

use crate::id::{JobId, MalformedJobId};
use crate::process::cgroup::{CgroupError, DeviceError};
use crate::state::record::LockError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty argv, NUL bytes, malformed id, bad limits).
    #[error("{0}")]
    InvalidArgument(String),

    /// The program could not be started: no such file, not executable, and so on.
    #[error("cannot start {}: {reason}", common::inert::Brief(program))]
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

    /// The kernel refused one of the job's limits as written to its cgroup (a device
    /// io.max cannot throttle, a value out of the file's range): the caller's to change.
    #[error("the kernel refused a limit: {0}")]
    LimitRefused(#[source] CgroupError),

    /// A cgroup operation failed on the server's side (ENOSPC, EIO, a missing file...).
    #[error("{0}")]
    Cgroup(#[source] CgroupError),

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
        if crate::state::durable::is_full(&source) {
            Error::StateDirFull {
                context: context.into(),
            }
        } else {
            Error::io(context, source)
        }
    }
}

/// The one place a cgroup failure is judged: a value the kernel refuses is the caller's,
/// anything else the server's.
impl From<CgroupError> for Error {
    fn from(e: CgroupError) -> Self {
        if e.refuses_value() {
            Error::LimitRefused(e)
        } else {
            Error::Cgroup(e)
        }
    }
}

/// A device named in a limit is always the caller's to fix.
impl From<DeviceError> for Error {
    fn from(e: DeviceError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// A malformed job id is the caller's mistake.
impl From<MalformedJobId> for Error {
    fn from(e: MalformedJobId) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// Another server holding the state dir is a precondition of start-up; failing to open
/// or write the lock file is this server's fault.
impl From<LockError> for Error {
    fn from(e: LockError) -> Self {
        match e {
            e @ LockError::InUse { .. } => Error::FailedPrecondition(e.to_string()),
            LockError::Open { path, source } => {
                Error::io(format!("cannot open {}", path.display()), source)
            }
            LockError::Write { path, source } => {
                Error::io(format!("cannot write {}", path.display()), source)
            }
        }
    }
}
