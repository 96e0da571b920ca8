//! The authorization policy: a pure function of (caller, action, job owner).
//!
//! | action                  | admin | user            | no known role |
//! |-------------------------|-------|-----------------|---------------|
//! | start, list             | yes   | yes (list: own) | no            |
//! | start as root           | yes   | no              | no            |
//! | stop/status/logs/remove | any   | own only        | no            |
//!
//! A job the caller may not touch is reported as not found, so that its existence does
//! not leak to other users.

use crate::identity::{Identity, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// Start a job as root instead of the server's job user.
    StartAsRoot,
    List,
    Stop,
    Status,
    Logs,
    Remove,
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The certificate carries no role this server knows: PermissionDenied.
    NoRole,
    /// The job belongs to someone else: reported as NotFound.
    Hidden,
    /// The action needs the admin role: PermissionDenied.
    AdminOnly,
}

/// Decides whether `caller` may perform `action` on a job owned by `owner` (`None` for
/// actions that concern no single job).
pub fn authorize(caller: &Identity, action: Action, owner: Option<&str>) -> Result<(), Denied> {
    if caller.roles.is_empty() {
        return Err(Denied::NoRole);
    }
    match (action, owner) {
        (Action::Start | Action::List, _) => Ok(()),
        (Action::StartAsRoot, _) if caller.has(Role::Admin) => Ok(()),
        (Action::StartAsRoot, _) => Err(Denied::AdminOnly),
        (_, _) if caller.has(Role::Admin) => Ok(()),
        (_, Some(owner)) if owner == caller.name => Ok(()),
        _ => Err(Denied::Hidden),
    }
}

/// Whose jobs `list` shows the caller: `None` means everyone's.
pub fn list_scope(caller: &Identity) -> Option<&str> {
    if caller.has(Role::Admin) {
        None
    } else {
        Some(&caller.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, roles: &[Role]) -> Identity {
        Identity::new(name, roles.to_vec())
    }

    #[test]
    fn the_seed_table() {
        let admin = id("admin", &[Role::Admin]);
        let alice = id("alice", &[Role::User]);
        let both = id("root", &[Role::User, Role::Admin]);
        let nobody = id("mallory", &[]);
        use Action::*;
        let job_actions = [Stop, Status, Logs, Remove];
        // (caller, action, owner, expected)
        type Case<'a> = (&'a Identity, Action, Option<&'a str>, Result<(), Denied>);
        let mut table: Vec<Case> = vec![
            (&admin, Start, None, Ok(())),
            (&alice, Start, None, Ok(())),
            (&nobody, Start, None, Err(Denied::NoRole)),
            (&admin, List, None, Ok(())),
            (&alice, List, None, Ok(())),
            (&nobody, List, None, Err(Denied::NoRole)),
            (&admin, StartAsRoot, None, Ok(())),
            (&both, StartAsRoot, None, Ok(())),
            (&alice, StartAsRoot, None, Err(Denied::AdminOnly)),
            (&nobody, StartAsRoot, None, Err(Denied::NoRole)),
        ];
        for action in job_actions {
            table.extend([
                (&admin, action, Some("admin"), Ok(())),
                (&admin, action, Some("alice"), Ok(())),
                (&both, action, Some("alice"), Ok(())),
                (&alice, action, Some("alice"), Ok(())),
                (&alice, action, Some("bob"), Err(Denied::Hidden)),
                (&alice, action, Some("admin"), Err(Denied::Hidden)),
                (&nobody, action, Some("mallory"), Err(Denied::NoRole)),
                (&nobody, action, Some("alice"), Err(Denied::NoRole)),
            ]);
        }
        for (caller, action, owner, expected) in table {
            assert_eq!(
                authorize(caller, action, owner),
                expected,
                "{} {action:?} job of {owner:?}",
                caller.name
            );
        }
    }

    #[test]
    fn list_scope_is_own_jobs_for_users_and_all_for_admins() {
        assert_eq!(list_scope(&id("alice", &[Role::User])), Some("alice"));
        assert_eq!(list_scope(&id("admin", &[Role::Admin])), None);
    }
}
