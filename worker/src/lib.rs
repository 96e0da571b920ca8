//! The engine under `jobd`: runs jobs, captures their output durably, and streams it. No
//! gRPC or TLS here.
//!
//! Layers, each using only those below it:
//!
//! - [`Worker`] (`table`): the job table, opened on a state dir; `start` (the start path:
//!   prepare, provision, launch), `policy` (limit defaults and maxima), `quota`, `page`
//!   (one page of the list).
//! - [`Job`] (`job`): one job's description, state, and the channels that announce its
//!   progress and end; `spec` and `status` are what callers send and read.
//! - `process`: the `clone3` into namespaces, a cgroup and a uid (`spawn`, `netns`,
//!   `cgroup`, `uids`), and signalling all of a job's processes (`members`).
//! - `output`: the capture thread (`capture`) appends framed records to the job's log
//!   (`logfile`); readers ([`LogReader`], `reader`) replay it and follow the writer.
//! - `state`: the state dir: records that never lie (`record`, `durable`), folders
//!   (`folder`), recovery at start-up (`restore`), private modes (`private`).
//!
//! `made_ahead` keeps namespaces and folders ready before starts ask for them.

mod error;
mod id;
mod job;
mod made_ahead;
mod output;
mod page;
mod policy;
mod process;
mod quota;
mod spec;
mod start;
mod state;
mod status;
mod table;

pub use error::Error;
pub use id::{BadPrefix, IdPrefix, JobId, MalformedJobId};
pub use job::Job;
pub use output::capture::stored_bytes as output_bytes_stored;
pub use output::logfile::{Record, Stream};
pub use output::reader::LogReader;
pub use output::seek::{LogPosition, LogStart};
pub use page::{Cursor, ListQuery, Page, StateFilter};
pub use policy::LimitPolicy;
pub use process::cgroup::{CgroupError, CgroupMode};
pub use process::members::Recipients;
pub use process::spawn::Credentials;
pub use process::uids::{UidRange, USERS_FILE};
pub use spec::{DeviceRate, Isolation, JobSpec, Limits};
pub use start::{JOB_PATH, PRIVATE_TMP_BYTES};
pub use status::{JobInfo, JobState};
pub use table::{Config, Worker};

/// The state dir's formats, for tools and tests that read or write one without a worker:
/// job records, output logs, and where a cgroup v2 hierarchy is mounted.
pub mod disk {
    pub use crate::output::logfile::{
        encode_header, file_header, now_unix_nanos, RECORD_HEADER_LEN,
    };
    pub use crate::process::cgroup::cgroup2_mount;
    pub use crate::state::record::{
        process_start_ticks, read_record, write_record, JobRecord, LOG_FILE, RECORD_FILE,
        RECORD_VERSION,
    };
}

/// Files and folders only the server may read: jobd keeps its PKI the way the worker
/// keeps its state dir.
pub mod private {
    pub use crate::state::private::{create_dir_all, options, repair, Repaired};
}
