//! One uid per user: each owner's jobs run under a uid (and a gid of the same number) that
//! no other owner's jobs, no account of the host and not the server share, so that the
//! kernel keeps tenants apart (signals, ptrace, `/proc/<pid>/mem`, files they create) as
//! the API's authorization does.
//!
//! The mapping is allocated from a configured range (systemd's `DynamicUser=` range by
//! default) and kept in `<state dir>/users.json`, so a user's uid, and with it the files
//! their jobs left on the host, stays theirs across restarts. A uid (or gid) that names an
//! account or group of the host is never handed out.

use std::collections::{BTreeMap, HashSet};
use std::ffi::c_char;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::process::spawn::Credentials;
use crate::state::private;

/// Where the mapping lives in the state dir.
pub const USERS_FILE: &str = "users.json";

/// Bumped when the file's meaning changes.
const USERS_VERSION: u32 = 1;

/// The uids job users are allocated from, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    first: u32,
    last: u32,
}

impl UidRange {
    /// systemd's range for dynamic users (61184–65519): meant for exactly this, and kept
    /// clear of accounts by distributions.
    pub const DYNAMIC_USER: UidRange = UidRange {
        first: 61184,
        last: 65519,
    };

    /// Refuses ranges that hold root or the ids the kernel and NSS treat as "no id"
    /// (65535, the 16-bit -1, and 4294967295).
    pub fn new(first: u32, last: u32) -> Result<UidRange, String> {
        if first > last {
            return Err(format!("uid range {first}-{last} is empty"));
        }
        if first == 0 {
            return Err("a uid range for jobs cannot include 0 (root)".into());
        }
        if (first..=last).contains(&65535) || last == u32::MAX {
            return Err(format!(
                "uid range {first}-{last} includes 65535 or 4294967295, which mean \"no uid\""
            ));
        }
        Ok(UidRange { first, last })
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = String;

    /// Parses `FIRST-LAST`, e.g. `61184-65519`.
    fn from_str(s: &str) -> Result<UidRange, String> {
        let bad = || {
            format!(
                "{}: expected FIRST-LAST, e.g. 61184-65519",
                common::inert::Quoted(s)
            )
        };
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let parse = |n: &str| n.trim().parse::<u32>().map_err(|_| bad());
        UidRange::new(parse(first)?, parse(last)?)
    }
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    version: u32,
    users: BTreeMap<String, u32>,
}

/// The mapping from owner to uid, loaded from the state dir and extended on first use.
#[derive(Debug)]
pub(crate) struct JobUsers {
    range: UidRange,
    path: PathBuf,
    /// Held while a new user is given a uid and the file rewritten, so two starts never
    /// hand out the same uid.
    users: Mutex<BTreeMap<String, u32>>,
}

impl JobUsers {
    /// Loads `<state_dir>/users.json` (none yet: an empty mapping). Entries outside
    /// `range` or whose uid now names an account or group of the host are dropped with a
    /// warning (their user gets a new uid on their next job); an unreadable file is an
    /// error, since guessing could give one user another's old uid.
    pub(crate) fn open(state_dir: &Path, range: UidRange) -> Result<JobUsers, Error> {
        let path = state_dir.join(USERS_FILE);
        let file: UsersFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "{} is not a valid user mapping ({e}): repair or remove it",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => UsersFile::default(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        if file.version != USERS_VERSION && !file.users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{}: user mapping version {} is not supported",
                path.display(),
                file.version
            )));
        }
        let mut seen = HashSet::new();
        let mut users = BTreeMap::new();
        for (name, uid) in file.users {
            let why = if !range.contains(uid) {
                Some(format!("it is outside the configured range {range}"))
            } else if !seen.insert(uid) {
                Some("another user has it too".to_string())
            } else {
                host_id_name(uid).map(|n| format!("the host now has {n} with that id"))
            };
            match why {
                Some(why) => tracing::warn!(
                    user = %common::inert::Brief(&name),
                    uid,
                    "dropping the user's job uid because {why}: their next job gets another"
                ),
                None => {
                    users.insert(name, uid);
                }
            }
        }
        Ok(JobUsers {
            range,
            path,
            users: Mutex::new(users),
        })
    }

    /// The uid and gid `owner`'s jobs run as, allocated (and written to the state dir)
    /// on the owner's first job.
    pub(crate) fn credentials(&self, owner: &str) -> Result<Credentials, Error> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&uid) = users.get(owner) {
            return Ok(Credentials { uid, gid: uid });
        }
        let taken: HashSet<u32> = users.values().copied().collect();
        let uid = (self.range.first..=self.range.last)
            .find(|uid| !taken.contains(uid) && host_id_name(*uid).is_none())
            .ok_or_else(|| {
                Error::ResourceExhausted(format!(
                    "every uid for jobs ({}) is taken: widen job_uid_range",
                    self.range
                ))
            })?;
        users.insert(owner.to_string(), uid);
        if let Err(e) = self.write(&users) {
            users.remove(owner);
            return Err(Error::io(
                format!(
                    "cannot save the uid of a new user to {}",
                    self.path.display()
                ),
                e,
            ));
        }
        tracing::info!(user = %common::inert::Brief(owner), uid, "gave a new user a uid for their jobs");
        Ok(Credentials { uid, gid: uid })
    }

    /// Replaces the file atomically and durably: a uid handed out is never handed out
    /// again after a crash.
    fn write(&self, users: &BTreeMap<String, u32>) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&UsersFile {
            version: USERS_VERSION,
            users: users.clone(),
        })
        .map_err(io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = private::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
}

/// The host's account or group with this id, if any, as "user NAME" or "group NAME". A
/// lookup that fails (not "no such id", an error of the user database) counts as taken:
/// handing out the id of an account the database could not show would be worse.
fn host_id_name(id: u32) -> Option<String> {
    let user = lookup(|buf, found: &mut *mut libc::passwd, pwd| {
        // SAFETY: the pointers are valid for the call and `buf` outlives the use of `pwd`.
        unsafe { libc::getpwuid_r(id, pwd, buf.as_mut_ptr(), buf.len(), found) }
    });
    match user {
        Lookup::Found(pwd, _buf) => {
            // SAFETY: on success pw_name points into the buffer, NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
            return Some(format!("user {}", name.to_string_lossy()));
        }
        Lookup::Failed(rc) => {
            return Some(format!(
                "an id the user database cannot look up (error {rc})"
            ))
        }
        Lookup::None => {}
    }
    let group = lookup(|buf, found: &mut *mut libc::group, grp| {
        // SAFETY: as above, for a group entry.
        unsafe { libc::getgrgid_r(id, grp, buf.as_mut_ptr(), buf.len(), found) }
    });
    match group {
        Lookup::Found(grp, _buf) => {
            // SAFETY: on success gr_name points into the buffer, NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
            Some(format!("group {}", name.to_string_lossy()))
        }
        Lookup::Failed(rc) => Some(format!(
            "an id the group database cannot look up (error {rc})"
        )),
        Lookup::None => None,
    }
}

/// What a `get*id_r` call found; a found entry comes with the buffer its strings are in.
enum Lookup<T> {
    Found(T, Vec<c_char>),
    None,
    Failed(i32),
}

/// Calls a `get*id_r` function, growing its buffer while it says ERANGE.
fn lookup<T>(call: impl Fn(&mut Vec<c_char>, &mut *mut T, &mut T) -> libc::c_int) -> Lookup<T> {
    let mut len = 16 * 1024;
    loop {
        let mut buf = vec![0 as c_char; len];
        // SAFETY: passwd and group are plain C structs for which all-zero is valid (null
        // pointers, zero ids); the call fills them.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut found: *mut T = std::ptr::null_mut();
        match call(&mut buf, &mut found, &mut entry) {
            0 if found.is_null() => return Lookup::None,
            0 => return Lookup::Found(entry, buf),
            libc::ERANGE if len < 1024 * 1024 => len *= 4,
            rc => return Lookup::Failed(rc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root_and_no_uid() {
        assert_eq!("61184-65519".parse(), Ok(UidRange::DYNAMIC_USER));
        assert_eq!(
            "100-100".parse::<UidRange>().map(|r| r.to_string()),
            Ok("100-100".into())
        );
        for bad in ["", "1", "5-4", "0-10", "65000-65535", "a-b", "1-4294967295"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn uids_are_distinct_stable_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let users = JobUsers::open(dir.path(), UidRange::DYNAMIC_USER).unwrap();
        let alice = users.credentials("alice").unwrap();
        let bob = users.credentials("bob").unwrap();
        assert_ne!(alice.uid, bob.uid);
        assert_eq!(alice.uid, alice.gid);
        assert_eq!(users.credentials("alice").unwrap(), alice);
        let again = JobUsers::open(dir.path(), UidRange::DYNAMIC_USER).unwrap();
        assert_eq!(again.credentials("bob").unwrap(), bob);
        assert_eq!(again.credentials("alice").unwrap(), alice);
    }

    #[test]
    fn a_full_range_is_resource_exhausted_and_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let range = UidRange::new(61184, 61184).unwrap();
        let users = JobUsers::open(dir.path(), range).unwrap();
        users.credentials("alice").unwrap();
        let err = users.credentials("bob").unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        let again = JobUsers::open(dir.path(), range).unwrap();
        assert!(matches!(
            again.credentials("bob"),
            Err(Error::ResourceExhausted(_))
        ));
    }

    #[test]
    fn a_corrupt_file_is_refused_and_entries_outside_the_range_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(USERS_FILE), "{not json").unwrap();
        let err = JobUsers::open(dir.path(), UidRange::DYNAMIC_USER).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        std::fs::write(
            dir.path().join(USERS_FILE),
            r#"{"version":1,"users":{"alice":61184,"bob":70000,"carol":61184}}"#,
        )
        .unwrap();
        let users = JobUsers::open(dir.path(), UidRange::DYNAMIC_USER).unwrap();
        assert_eq!(users.credentials("alice").unwrap().uid, 61184);
        // bob's 70000 is outside the range, carol's is alice's: both get new ones.
        let bob = users.credentials("bob").unwrap().uid;
        let carol = users.credentials("carol").unwrap().uid;
        let range = UidRange::DYNAMIC_USER;
        assert!(
            range.contains(bob) && range.contains(carol),
            "{bob} {carol}"
        );
        assert!(
            bob != 61184 && carol != 61184 && bob != carol,
            "{bob} {carol}"
        );
    }
}
