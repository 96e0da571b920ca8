//! Floors: the work jobworker does for a scenario, done the cheapest way this machine
//! allows and nothing else, measured in the same run so that each figure reads as a
//! ratio to the best the same work can do here, and a regression shows at once.
//!
//! - `spawn`: a child cloned into a job's namespaces and cgroup, as its user, exec'ing
//!   `true`;
//! - `ahead`: the made-ahead pools jobd keeps (network namespaces, job folders);
//! - `cgroup`: a cgroup per start, where jobd has cgroups;
//! - `record`: a job's folder and records, written as jobd writes them;
//! - `starts`: those together, one start after another or 64 at a time;
//! - `unary`: a process making one mutual TLS connection and one unary gRPC call to a
//!   server that answers at once.

pub mod ahead;
pub mod cgroup;
pub mod record;
pub mod spawn;
pub mod starts;
pub mod unary;

use proto::v1 as pb;

pub use spawn::Setup;
pub use starts::Floor;

/// The user floor children run as: jobs never run as root by default, and the uid's value
/// costs nothing, so `nobody` stands in for the job's own.
const NOBODY: (u32, u32) = (65534, 65534);

/// The floor's set-up for a job that got `isolation`: the same namespaces, and a switch
/// to another user when jobd (and so this bench) runs as root.
pub fn setup_for(isolation: &pb::Isolation) -> Setup {
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    Setup {
        pid: isolation.pid,
        mount: isolation.mount,
        net: isolation.net,
        user: root.then_some(NOBODY),
    }
}
