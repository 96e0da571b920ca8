//! What a caller asks for: a job's command, its environment, working directory and time
//! limit, its resource limits and its isolation.

use std::time::Duration;

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
    /// `KEY=VALUE` strings over the server's base environment. Once started: the whole
    /// environment the job got.
    pub env: Vec<String>,
    /// An absolute path, entered as the job's user; `None`: `/`.
    pub working_dir: Option<String>,
    /// How long the job may run before it is stopped; `None`: the server's default.
    /// Once started: the limit it got, if any.
    pub timeout: Option<Duration>,
}

impl JobSpec {
    pub fn new(owner: impl Into<String>, argv: Vec<String>) -> Self {
        JobSpec {
            owner: owner.into(),
            argv,
            limits: Limits::default(),
            isolation: None,
            as_root: false,
            env: Vec::new(),
            working_dir: None,
            timeout: None,
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
        for var in &self.env {
            common::env::parse_var(var).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "the working directory {} is not an absolute path",
                    common::inert::Brief(dir)
                )));
            }
            if dir.contains('\0') {
                return Err(Error::InvalidArgument(
                    "the working directory contains a NUL byte".into(),
                ));
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::InvalidArgument(
                "a timeout of 0 would stop the job before it starts: give a positive duration"
                    .into(),
            ));
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

    #[test]
    fn validation_refuses_bad_environment_directories_and_timeouts() {
        let refused = |f: fn(&mut JobSpec)| {
            let mut spec = JobSpec::new("alice", vec!["true".into()]);
            f(&mut spec);
            spec.validate().unwrap_err().to_string()
        };
        assert!(refused(|s| s.env = vec!["1A=x".into()]).contains("is not valid"));
        assert!(refused(|s| s.env = vec!["A=x\0".into()]).contains("NUL"));
        assert!(refused(|s| s.env = vec!["NOEQUALS".into()]).contains("KEY=VALUE"));
        assert!(refused(|s| s.working_dir = Some("srv".into())).contains("not an absolute path"));
        assert!(refused(|s| s.timeout = Some(Duration::ZERO)).contains("timeout of 0"));
        let mut ok = JobSpec::new("alice", vec!["true".into()]);
        ok.env = vec!["A=1".into()];
        ok.working_dir = Some("/srv".into());
        ok.timeout = Some(Duration::from_secs(1));
        assert!(ok.validate().is_ok());
    }
}
