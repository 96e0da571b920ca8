//! List paging, after Google's API design guide (AIP-158): page sizes with a server default
//! and maximum, opaque page tokens, and pages that stay far below gRPC's 4 MiB message
//! limit however long the jobs' argv are.
//!
//! A page token is the place of the page's last job in the list's order (start time, id;
//! see [`worker::page`]) and a fingerprint of the filters it was issued for, in hex. It is
//! not secret and needs no signature: a forged one can only choose where a page starts
//! within what the caller may see anyway.

use proto::v1 as pb;
use tonic::Status;
use worker::{Cursor, ListQuery, Page, StateFilter};

use crate::authz::{self, Action, Denied};
use crate::convert;
use crate::identity::Identity;

/// Bounds on one List page.
#[derive(Debug, Clone)]
pub struct ListLimits {
    /// Jobs per page when the request does not say (`page_size` 0).
    pub default_page_size: usize,
    /// Most jobs per page; larger requests are lowered to it.
    pub max_page_size: usize,
    /// A page ends before its encoded jobs pass this size, unless it holds a single job.
    /// Half of the 4 MiB that gRPC clients accept by default.
    pub max_page_bytes: usize,
}

impl Default for ListLimits {
    fn default() -> Self {
        ListLimits {
            default_page_size: 100,
            max_page_size: 1000,
            max_page_bytes: 2 * 1024 * 1024,
        }
    }
}

const TOKEN_VERSION: u8 = 1;
/// Version, place, filter fingerprint.
const TOKEN_LEN: usize = 1 + Cursor::LEN + 8;

/// A List request, checked and resolved against the caller's rights.
#[derive(Debug)]
pub struct PageRequest {
    /// Whose jobs; `None`: everyone's (an admin's unfiltered list).
    owner: Option<String>,
    state: StateFilter,
    after: Option<Cursor>,
    size: usize,
    /// Ties page tokens to the filters they were issued for.
    filters: u64,
}

impl PageRequest {
    pub fn parse(
        caller: &Identity,
        req: pb::ListRequest,
        limits: &ListLimits,
    ) -> Result<PageRequest, Status> {
        let owner = if req.owner.is_empty() {
            authz::list_scope(caller).map(str::to_string)
        } else {
            authz::authorize(caller, Action::List, Some(&req.owner)).map_err(|d| match d {
                Denied::NoRole => Status::permission_denied(
                    "this certificate carries no known role (admin or user) and may do nothing",
                ),
                _ => Status::permission_denied("only an admin may list another user's jobs"),
            })?;
            Some(req.owner)
        };
        let state = match pb::ListStateFilter::try_from(req.state) {
            Ok(pb::ListStateFilter::Unspecified) => StateFilter::All,
            Ok(pb::ListStateFilter::Running) => StateFilter::Running,
            Ok(pb::ListStateFilter::Ended) => StateFilter::Ended,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown state filter {}: use running or ended, or none for every job",
                    req.state
                )))
            }
        };
        let size = match usize::try_from(req.page_size) {
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "page_size {} is negative; use 0 for the server's default",
                    req.page_size
                )))
            }
            Ok(0) => limits.default_page_size,
            Ok(n) => n.min(limits.max_page_size),
        }
        .max(1);
        let filters = fingerprint(owner.as_deref(), state);
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(parse_token(token, filters)?),
        };
        Ok(PageRequest {
            owner,
            state,
            after,
            size,
            filters,
        })
    }

    pub fn query(&self) -> ListQuery<'_> {
        ListQuery {
            owner: self.owner.as_deref(),
            state: self.state,
            after: self.after,
            limit: self.size,
        }
    }

    /// Renders the page, ending it early where the next job would pass the byte budget.
    /// Only the jobs on the page are read in full.
    pub fn response(&self, page: Page, limits: &ListLimits) -> pb::ListResponse {
        let mut jobs = Vec::with_capacity(page.jobs.len());
        let mut bytes = 0;
        let mut last = None;
        let mut cut = false;
        for (place, job) in page.jobs {
            let status = convert::into_status(job.info());
            let len = prost::Message::encoded_len(&status);
            // Field tag, length, message.
            let field = 1 + prost::length_delimiter_len(len) + len;
            if !jobs.is_empty() && bytes + field > limits.max_page_bytes {
                cut = true;
                break;
            }
            bytes += field;
            jobs.push(status);
            last = Some(place);
        }
        let next_page_token = match last {
            Some(place) if cut || page.more => token(place, self.filters),
            _ => String::new(),
        };
        pb::ListResponse {
            jobs,
            next_page_token,
        }
    }
}

fn token(place: Cursor, filters: u64) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_LEN);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&place.to_bytes());
    bytes.extend_from_slice(&filters.to_be_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_token(token: &str, filters: u64) -> Result<Cursor, Status> {
    let malformed = || {
        Status::invalid_argument(
            "the page token is not one this server issued: pass the next_page_token of the \
             previous page, or none to start from the first page",
        )
    };
    if token.len() != 2 * TOKEN_LEN || !token.is_ascii() {
        return Err(malformed());
    }
    let bytes = (0..TOKEN_LEN)
        .map(|i| u8::from_str_radix(&token[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| malformed())?;
    if bytes[0] != TOKEN_VERSION {
        return Err(malformed());
    }
    let place: [u8; Cursor::LEN] = bytes[1..1 + Cursor::LEN]
        .try_into()
        .expect("the length was checked");
    let issued_for = u64::from_be_bytes(
        bytes[1 + Cursor::LEN..]
            .try_into()
            .expect("the length was checked"),
    );
    if issued_for != filters {
        return Err(Status::invalid_argument(
            "the page token belongs to a list with other filters: ask for every page with \
             the same state and owner, or start again without a token",
        ));
    }
    Ok(Cursor::from_bytes(place))
}

/// FNV-1a over the filters: stable across builds and restarts, unlike std's hasher.
fn fingerprint(owner: Option<&str>, state: StateFilter) -> u64 {
    let state = match state {
        StateFilter::All => 0u8,
        StateFilter::Running => 1,
        StateFilter::Ended => 2,
    };
    let mut bytes = vec![state];
    match owner {
        None => bytes.push(0),
        Some(owner) => {
            bytes.push(1);
            bytes.extend_from_slice(owner.as_bytes());
        }
    }
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn request(page_token: &str, page_size: i32) -> pb::ListRequest {
        pb::ListRequest {
            page_token: page_token.into(),
            page_size,
            ..Default::default()
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        let admin = Identity::new("admin", vec![Role::Admin]);
        let limits = ListLimits::default();
        let size = |n| {
            PageRequest::parse(&admin, request("", n), &limits)
                .map(|r| r.size)
                .map_err(|s| s.code())
        };
        assert_eq!(size(0), Ok(100));
        assert_eq!(size(7), Ok(7));
        assert_eq!(size(5000), Ok(1000));
        assert_eq!(size(i32::MAX), Ok(1000));
        assert_eq!(size(-1), Err(tonic::Code::InvalidArgument));
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_filters() {
        let alice = Identity::new("alice", vec![Role::User]);
        let limits = ListLimits::default();
        let first = PageRequest::parse(&alice, request("", 0), &limits).unwrap();
        assert_eq!(
            first.owner.as_deref(),
            Some("alice"),
            "a user sees their own"
        );
        let place = Cursor {
            started_at_unix_nanos: 1_700_000_000_123_456_789,
            id: "6f1c2a7e-8a7b-4b7e-9c1d-2e3f4a5b6c7d".parse().unwrap(),
        };
        let t = token(place, first.filters);
        assert_eq!(t.len(), 2 * TOKEN_LEN);
        let next = PageRequest::parse(&alice, request(&t, 0), &limits).unwrap();
        assert_eq!(next.after, Some(place));
        // Naming herself is the same list.
        let mut own = request(&t, 0);
        own.owner = "alice".into();
        assert_eq!(
            PageRequest::parse(&alice, own, &limits).unwrap().after,
            Some(place)
        );

        let mut other_state = request(&t, 0);
        other_state.state = pb::ListStateFilter::Running as i32;
        let e = PageRequest::parse(&alice, other_state, &limits).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("other filters"), "{e:?}");

        let bob = Identity::new("bob", vec![Role::User]);
        let e = PageRequest::parse(&bob, request(&t, 0), &limits).unwrap_err();
        assert!(e.message().contains("other filters"), "{e:?}");

        let mut bad = t.clone();
        bad.replace_range(..2, "02");
        let odd = "0".repeat(2 * TOKEN_LEN - 1);
        let wide = "é".repeat(TOKEN_LEN);
        for bad in [&bad[..], "zz", &t[..10], "é", &odd, &wide] {
            let e = PageRequest::parse(&alice, request(bad, 0), &limits).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("not one this server issued"), "{e:?}");
        }
    }

    #[test]
    fn only_an_admin_lists_another_owner() {
        let limits = ListLimits::default();
        let mut for_bob = request("", 0);
        for_bob.owner = "bob".into();
        let alice = Identity::new("alice", vec![Role::User]);
        let e = PageRequest::parse(&alice, for_bob.clone(), &limits).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "only an admin may list another user's jobs");
        let admin = Identity::new("admin", vec![Role::Admin]);
        let r = PageRequest::parse(&admin, for_bob, &limits).unwrap();
        assert_eq!(r.owner.as_deref(), Some("bob"));
        let all = PageRequest::parse(&admin, request("", 0), &limits).unwrap();
        assert_eq!(all.owner, None);
    }
}
