//! Where jobd keeps its state when it is not told. jobc needs the same answer to find the
//! development PKI that jobd creates there, so the rule is written once, here.

use std::path::{Path, PathBuf};

/// The state dir when none is configured: the system location as root, else the user's
/// (`$XDG_STATE_HOME/jobworker` or `~/.local/state/jobworker`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/jobworker");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("jobworker")
}
