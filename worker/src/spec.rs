//! What a caller asks for: a job's command, its resource limits and its isolation.

use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use crate::id::JobId;

/// A bandwidth limit for one block device, named by its path on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRate {
    pub device: String,
    pub bytes_per_second: u64,
}

/// Resource limits; `None` (or empty) means no limit of that kind was asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub device_read_bps: Vec<DeviceRate>,
    pub device_write_bps: Vec<DeviceRate>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.cpus.is_none()
            && self.memory_bytes.is_none()
            && self.pids.is_none()
            && self.device_read_bps.is_empty()
            && self.device_write_bps.is_empty()
    }
}

/// Which new namespaces a job runs in: the one definition jobc and jobd parse names into.
pub use common::Isolation;

/// A request to run `argv` on behalf of `owner`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub owner: String,
    pub argv: Vec<String>,
    pub limits: Limits,
    /// `None`: the server's default isolation.
    pub isolation: Option<Isolation>,
    /// Run as root instead of the owner's uid (only where the server allows it).
    pub as_root: bool,
}

impl JobSpec {
    pub fn new(owner: impl Into<String>, argv: Vec<String>) -> Self {
        JobSpec {
            owner: owner.into(),
            argv,
            limits: Limits::default(),
            isolation: None,
            as_root: false,
        }
    }

    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(isolation);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Rejects what can never be exec'd, before any resource is taken.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::InvalidArgument(
                "the command is empty: give a program to run".into(),
            ));
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(Error::InvalidArgument(format!(
                "argument {i} contains a NUL byte, which cannot be passed to a program"
            )));
        }
        if self.owner.is_empty() {
            return Err(Error::InvalidArgument("a job needs an owner".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_empty_and_nul() {
        let ok = JobSpec::new("alice", vec!["true".into()]);
        assert!(ok.validate().is_ok());
        assert!(JobSpec::new("alice", vec![]).validate().is_err());
        assert!(JobSpec::new("alice", vec!["".into()]).validate().is_err());
        let nul = JobSpec::new("alice", vec!["echo".into(), "a\0b".into()]);
        assert!(nul
            .validate()
            .unwrap_err()
            .to_string()
            .contains("argument 1 contains a NUL byte"));
    }
}
