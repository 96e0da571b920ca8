//! Which namespaces a job runs in, named the same way everywhere a person writes them:
//! jobc's `--isolate pid,net` and jobd's `isolation = ["pid", "net"]` are one vocabulary,
//! parsed once, so the client and the server cannot drift apart on what a name means.

use std::fmt;

/// Which new namespaces a job runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Isolation {
    /// Its own PID namespace (everything it starts dies with it) and /proc.
    pub pid: bool,
    /// Its own mount namespace with private propagation: its mounts stay its own.
    pub mount: bool,
    /// Its own network namespace with only loopback: no way out.
    pub net: bool,
}

/// A name in a namespace list that is none of `pid`, `mount`, `net`, `all`, `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownNamespace(pub String);

impl fmt::Display for UnknownNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown namespace {}: namespaces are pid, mount and net (or all, or none)",
            crate::inert::Quoted(&self.0)
        )
    }
}

impl std::error::Error for UnknownNamespace {}

impl Isolation {
    pub const NONE: Isolation = Isolation {
        pid: false,
        mount: false,
        net: false,
    };
    pub const ALL: Isolation = Isolation {
        pid: true,
        mount: true,
        net: true,
    };

    /// The namespaces a list of names asks for: each of `pid`, `mount`, `net` adds one,
    /// `all` adds all three and `none` adds nothing (so `none` alone is no namespace).
    pub fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Isolation, UnknownNamespace> {
        let mut isolation = Isolation::NONE;
        for name in names {
            match name.trim() {
                "all" => isolation = Isolation::ALL,
                "none" => {}
                "pid" => isolation.pid = true,
                "mount" => isolation.mount = true,
                "net" => isolation.net = true,
                other => return Err(UnknownNamespace(other.to_owned())),
            }
        }
        Ok(isolation)
    }

    /// A comma-separated list, as `--isolate` takes it: `pid,net`.
    pub fn from_list(list: &str) -> Result<Isolation, UnknownNamespace> {
        Isolation::from_names(list.split(','))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_add_up_and_all_or_none_are_shorthands() {
        let only = |pid, mount, net| Ok(Isolation { pid, mount, net });
        assert_eq!(Isolation::from_list("pid"), only(true, false, false));
        assert_eq!(Isolation::from_list("pid, net"), only(true, false, true));
        assert_eq!(Isolation::from_list("mount"), only(false, true, false));
        assert_eq!(Isolation::from_list("all"), Ok(Isolation::ALL));
        assert_eq!(Isolation::from_list("none"), Ok(Isolation::NONE));
        assert_eq!(Isolation::from_names([]), Ok(Isolation::NONE));
        assert_eq!(
            Isolation::from_names(["net", "pid"]),
            only(true, false, true)
        );
    }

    #[test]
    fn an_unknown_name_is_refused_by_name() {
        let err = Isolation::from_list("pid,user").unwrap_err();
        assert_eq!(err, UnknownNamespace("user".into()));
        assert_eq!(
            err.to_string(),
            "unknown namespace \"user\": namespaces are pid, mount and net (or all, or none)"
        );
        assert!(
            Isolation::from_list("").is_err(),
            "an empty name is not a namespace"
        );
    }
}
