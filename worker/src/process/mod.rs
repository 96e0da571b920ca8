//! Making and holding a job's processes: the `clone3` into namespaces and a cgroup,
//! the uid each owner's jobs run as, and signalling every process of a job at once.

pub(crate) mod cgroup;
pub(crate) mod init;
pub(crate) mod members;
pub(crate) mod netns;
pub(crate) mod spawn;
pub(crate) mod uids;
