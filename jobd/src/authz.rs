//! The authorization policy: a pure function of (caller, action, job owner).
//!
//! | action                  | admin | user            | no known role |
//! |-------------------------|-------|-----------------|---------------|
//! | start, list             | yes   | yes (list: own) | no            |
//! | list one owner's jobs   | any   | own only        | no            |
//! | start as root           | yes   | no              | no            |
//! | stop/status/logs/remove | any   | own only        | no            |
//! | start with less isolation than the server's default | where configured (default: yes) | where configured (default: no) | no |
//!
//! A job the caller may not touch is reported as not found, so that its existence does
//! not leak to other users. Isolation is a server decision: a caller may always ask for
//! the server's default namespaces or more, and for fewer (no PID namespace, the host's
//! network) only with a role the server's `weaker_isolation_roles` names. A user who asks
//! to list another user's jobs is refused outright (the request names no job, so the
//! refusal tells nothing about any).

use worker::Isolation;

use crate::identity::{Identity, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// Start a job as root instead of the server's job user.
    StartAsRoot,
    List,
    Stop,
    /// Send a signal: the same rule as for a stop.
    Signal,
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
    /// The job would lack these namespaces of the server's default, which the caller's
    /// roles may not give up: PermissionDenied.
    WeakerIsolation(Isolation),
}

/// The roles that may weaken isolation when the configuration does not say: admins.
pub const DEFAULT_WEAKER_ISOLATION_ROLES: &[Role] = &[Role::Admin];

/// Decides whether `caller` may perform `action` on a job owned by `owner` (`None` for
/// actions that concern no single job; for `List`, the owner a list is filtered by).
pub fn authorize(caller: &Identity, action: Action, owner: Option<&str>) -> Result<(), Denied> {
    if caller.roles.is_empty() {
        return Err(Denied::NoRole);
    }
    match (action, owner) {
        (Action::Start, _) | (Action::List, None) => Ok(()),
        (Action::StartAsRoot, _) if caller.has(Role::Admin) => Ok(()),
        (Action::StartAsRoot, _) => Err(Denied::AdminOnly),
        (_, _) if caller.has(Role::Admin) => Ok(()),
        (_, Some(owner)) if owner == caller.name => Ok(()),
        (Action::List, _) => Err(Denied::AdminOnly),
        _ => Err(Denied::Hidden),
    }
}

/// Decides whether `caller` may run a job in the namespaces `asked` where the server's
/// default is `default`: the default or more is anyone's (with a role); dropping any of
/// the default's namespaces needs one of `weaker_roles`.
pub fn authorize_isolation(
    caller: &Identity,
    asked: Isolation,
    default: Isolation,
    weaker_roles: &[Role],
) -> Result<(), Denied> {
    if caller.roles.is_empty() {
        return Err(Denied::NoRole);
    }
    let dropped = Isolation {
        pid: default.pid && !asked.pid,
        mount: default.mount && !asked.mount,
        net: default.net && !asked.net,
    };
    if dropped == Isolation::NONE || caller.roles.iter().any(|r| weaker_roles.contains(r)) {
        Ok(())
    } else {
        Err(Denied::WeakerIsolation(dropped))
    }
}

/// The one sentence that refuses `dropped`, naming what was asked for.
pub fn weaker_isolation_refusal(dropped: Isolation) -> String {
    let mut what = Vec::new();
    if dropped.pid {
        what.push("without a PID namespace");
    }
    if dropped.mount {
        what.push("without a mount namespace");
    }
    if dropped.net {
        what.push("with the host's network");
    }
    format!(
        "this server does not let you start a job {}: that is less isolation than its default",
        what.join(" or ")
    )
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
        let job_actions = [Stop, Signal, Status, Logs, Remove];
        // (caller, action, owner, expected)
        type Case<'a> = (&'a Identity, Action, Option<&'a str>, Result<(), Denied>);
        let mut table: Vec<Case> = vec![
            (&admin, Start, None, Ok(())),
            (&alice, Start, None, Ok(())),
            (&nobody, Start, None, Err(Denied::NoRole)),
            (&admin, List, None, Ok(())),
            (&alice, List, None, Ok(())),
            (&nobody, List, None, Err(Denied::NoRole)),
            (&admin, List, Some("alice"), Ok(())),
            (&both, List, Some("alice"), Ok(())),
            (&alice, List, Some("alice"), Ok(())),
            (&alice, List, Some("bob"), Err(Denied::AdminOnly)),
            (&nobody, List, Some("mallory"), Err(Denied::NoRole)),
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
    fn weakening_isolation_table() {
        let admin = id("admin", &[Role::Admin]);
        let alice = id("alice", &[Role::User]);
        let both = id("root", &[Role::User, Role::Admin]);
        let nobody = id("mallory", &[]);
        let all = Isolation::ALL;
        let none = Isolation::NONE;
        let no_pid = Isolation { pid: false, ..all };
        let host_net = Isolation { net: false, ..all };
        let pid_only = Isolation { pid: true, ..none };
        let only_admin = DEFAULT_WEAKER_ISOLATION_ROLES;
        let users_too: &[Role] = &[Role::Admin, Role::User];
        let no_one: &[Role] = &[];
        let dropped = |pid, mount, net| Err(Denied::WeakerIsolation(Isolation { pid, mount, net }));
        // (caller, asked, server default, roles that may weaken, expected)
        type Case<'a> = (
            &'a Identity,
            Isolation,
            Isolation,
            &'a [Role],
            Result<(), Denied>,
        );
        let table: Vec<Case> = vec![
            // The default or more is anyone's.
            (&alice, all, all, only_admin, Ok(())),
            (&alice, all, all, no_one, Ok(())),
            (&alice, pid_only, pid_only, no_one, Ok(())),
            (&alice, all, pid_only, no_one, Ok(())),
            (&alice, none, none, no_one, Ok(())),
            (&alice, host_net, host_net, no_one, Ok(())),
            // Less than the default: admins by default.
            (&admin, none, all, only_admin, Ok(())),
            (&both, no_pid, all, only_admin, Ok(())),
            (&alice, none, all, only_admin, dropped(true, true, true)),
            (&alice, no_pid, all, only_admin, dropped(true, false, false)),
            (
                &alice,
                host_net,
                all,
                only_admin,
                dropped(false, false, true),
            ),
            (
                &alice,
                none,
                pid_only,
                only_admin,
                dropped(true, false, false),
            ),
            // Trading one namespace for another is still less of the default.
            (
                &alice,
                Isolation {
                    pid: false,
                    mount: true,
                    net: false,
                },
                pid_only,
                only_admin,
                dropped(true, false, false),
            ),
            // As configured: users too, or no one.
            (&alice, none, all, users_too, Ok(())),
            (&admin, none, all, no_one, dropped(true, true, true)),
            (&admin, host_net, all, no_one, dropped(false, false, true)),
            (&alice, none, all, &[Role::User], Ok(())),
            (&admin, none, all, &[Role::User], dropped(true, true, true)),
            // Without a role, nothing.
            (&nobody, all, all, users_too, Err(Denied::NoRole)),
            (&nobody, none, all, users_too, Err(Denied::NoRole)),
        ];
        for (caller, asked, default, roles, expected) in table {
            assert_eq!(
                authorize_isolation(caller, asked, default, roles),
                expected,
                "{} asks {asked:?} of default {default:?}, weaker for {roles:?}",
                caller.name
            );
        }
    }

    #[test]
    fn a_refused_weakening_is_one_sentence_naming_it() {
        assert_eq!(
            weaker_isolation_refusal(Isolation {
                pid: true,
                mount: false,
                net: true
            }),
            "this server does not let you start a job without a PID namespace or with the \
             host's network: that is less isolation than its default"
        );
        assert_eq!(
            weaker_isolation_refusal(Isolation {
                mount: true,
                ..Isolation::NONE
            }),
            "this server does not let you start a job without a mount namespace: that is less \
             isolation than its default"
        );
    }

    #[test]
    fn list_scope_is_own_jobs_for_users_and_all_for_admins() {
        assert_eq!(list_scope(&id("alice", &[Role::User])), Some("alice"));
        assert_eq!(list_scope(&id("admin", &[Role::Admin])), None);
    }
}
