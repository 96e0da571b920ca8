//! The engine under `jobd`: runs jobs, captures their output durably, and streams it.
//!
//! Request flow: [`Worker::start`] validates a [`JobSpec`], spawns the process with one
//! `clone3` ([`spawn`]), and hands its pipes and pidfd to a capture thread ([`capture`])
//! that appends framed records to the job's log file ([`logfile`]) and publishes progress.
//! Readers ([`LogReader`]) replay that file and follow the progress notifications, so
//! any number of them cost the writer nothing. No gRPC or TLS here.

mod ahead;
mod capture;
pub mod cgroup;
mod durable;
mod error;
mod folder;
mod job;
mod limits;
pub mod logfile;
mod netns;
pub mod page;
pub mod private;
mod processes;
mod quota;
mod restore;
pub mod spawn;
mod spec;
mod start;
mod status;
pub mod store;
mod subscribe;
mod users;
mod worker;

pub use cgroup::CgroupMode;
pub use error::Error;
pub use job::Job;
pub use limits::LimitPolicy;
pub use logfile::{Record, Stream};
pub use page::{Cursor, ListQuery, Page, StateFilter};
pub use spawn::Credentials;
pub use spec::{DeviceRate, Isolation, JobId, JobSpec, Limits};
pub use start::PRIVATE_TMP_BYTES;
pub use status::{JobInfo, JobState};
pub use subscribe::LogReader;
pub use users::{UidRange, USERS_FILE};
pub use worker::{Config, Worker};
