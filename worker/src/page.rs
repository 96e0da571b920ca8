//! One page of the job list, chosen without copying any job that is not on it.
//!
//! The list's order is a job's start time, then its id: stable, since neither ever
//! changes, and a job started while a caller pages through the list sorts after every
//! job already there. A page is the `limit` smallest jobs after a [`Cursor`], picked in
//! one pass over the table with a heap of `limit + 1` entries: O(jobs · log limit) time
//! and O(limit) memory per page, however many jobs (and argv bytes) the table holds.
//! Only the jobs picked are then read in full, by whoever renders the page.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::id::JobId;
use crate::job::Job;
use crate::output::logfile::to_unix_nanos;

/// A place in the list's order: a page starts after the job with this start time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub started_at_unix_nanos: i64,
    pub id: JobId,
}

impl Cursor {
    /// Length of [`Cursor::to_bytes`].
    pub const LEN: usize = 24;

    pub fn of(job: &Job) -> Cursor {
        Cursor {
            started_at_unix_nanos: to_unix_nanos(job.started_at()),
            id: job.id(),
        }
    }

    /// Start time (big-endian) then id: a fixed-size form for page tokens.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.started_at_unix_nanos.to_be_bytes());
        out[8..].copy_from_slice(&self.id.to_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Cursor {
        let (time, id) = bytes.split_at(8);
        Cursor {
            started_at_unix_nanos: i64::from_be_bytes(time.try_into().expect("8 bytes")),
            id: JobId::from_bytes(id.try_into().expect("16 bytes")),
        }
    }
}

/// Which jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateFilter {
    #[default]
    All,
    /// Shown as running.
    Running,
    /// Shown as finished or stopped.
    Ended,
}

/// What one page holds.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    /// Only this owner's jobs; `None`: everyone's.
    pub owner: Option<&'a str>,
    pub state: StateFilter,
    /// Only jobs after this place; `None`: from the start.
    pub after: Option<Cursor>,
    /// Most jobs on the page (at least one is always asked for).
    pub limit: usize,
}

/// Jobs in list order, each with its place, and whether more match after the last.
#[derive(Debug, Default)]
pub struct Page {
    pub jobs: Vec<(Cursor, Arc<Job>)>,
    pub more: bool,
}

/// A heap entry, ordered by its place alone.
struct Entry(Cursor, Arc<Job>);

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

/// Picks the page `query` asks for from `jobs`, in any order.
pub(crate) fn select<'j>(jobs: impl Iterator<Item = &'j Arc<Job>>, query: &ListQuery) -> Page {
    let limit = query.limit.max(1);
    // A max-heap of the `limit + 1` smallest places seen: one more than the page, to know
    // whether anything follows it.
    let mut heap: BinaryHeap<Entry> = BinaryHeap::with_capacity(limit + 1);
    for job in jobs {
        let place = Cursor::of(job);
        if query.after.is_some_and(|after| place <= after) {
            continue;
        }
        if heap.len() > limit && heap.peek().is_some_and(|largest| place >= largest.0) {
            continue;
        }
        if query.owner.is_some_and(|owner| job.owner() != owner) {
            continue;
        }
        let wanted = match query.state {
            StateFilter::All => true,
            StateFilter::Running => job.state().is_running(),
            StateFilter::Ended => !job.state().is_running(),
        };
        if !wanted {
            continue;
        }
        if heap.len() > limit {
            heap.pop();
        }
        heap.push(Entry(place, Arc::clone(job)));
    }
    let more = heap.len() > limit;
    let mut jobs: Vec<(Cursor, Arc<Job>)> = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Entry(place, job)| (place, job))
        .collect();
    jobs.truncate(limit);
    Page { jobs, more }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::logfile::from_unix_nanos;
    use crate::spec::{Isolation, JobSpec};
    use crate::state::record::JobRecord;
    use crate::status::{JobInfo, JobState};

    /// An ended job as a restart would load it.
    fn job(owner: &str, started_at_unix_nanos: i64) -> Arc<Job> {
        let spec = JobSpec::new(owner, vec!["true".into()]).with_isolation(Isolation::NONE);
        let started_at = from_unix_nanos(started_at_unix_nanos);
        let info = JobInfo::started(JobId::new(), &spec, None, 1, started_at);
        let mut record = JobRecord::new(info, 0, None);
        record.state = JobState::Finished { exit_code: 0 };
        record.ended_at_unix_nanos = Some(started_at_unix_nanos + 1);
        Arc::new(Job::restored(record, "/nonexistent".into(), 0))
    }

    /// Every page of `query` in turn, checking each page's size.
    fn all_pages(jobs: &[Arc<Job>], mut query: ListQuery) -> Vec<Cursor> {
        let mut seen = Vec::new();
        loop {
            let page = select(jobs.iter(), &query);
            assert!(page.jobs.len() <= query.limit.max(1));
            if page.more {
                assert_eq!(
                    page.jobs.len(),
                    query.limit.max(1),
                    "a short page with more"
                );
            }
            seen.extend(page.jobs.iter().map(|(c, _)| *c));
            match (page.more, page.jobs.last()) {
                (true, Some((last, _))) => query.after = Some(*last),
                _ => return seen,
            }
        }
    }

    #[test]
    fn pages_cover_every_job_once_in_order() {
        // Many jobs share a start time: the id orders them.
        let jobs: Vec<Arc<Job>> = (0..600)
            .map(|i| {
                job(
                    if i % 3 == 0 { "bob" } else { "alice" },
                    (i * 7919 % 50) as i64,
                )
            })
            .collect();
        let mut everyone: Vec<Cursor> = jobs.iter().map(|j| Cursor::of(j)).collect();
        everyone.sort();
        for limit in [0, 1, 7, 100, 599, 600, 601, 5000] {
            let query = ListQuery {
                limit,
                ..Default::default()
            };
            assert_eq!(all_pages(&jobs, query), everyone, "limit {limit}");
        }
        let bobs: Vec<Cursor> = jobs
            .iter()
            .filter(|j| j.owner() == "bob")
            .map(|j| Cursor::of(j))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let query = ListQuery {
            owner: Some("bob"),
            limit: 33,
            ..Default::default()
        };
        assert_eq!(all_pages(&jobs, query), bobs);
        let running = ListQuery {
            state: StateFilter::Running,
            limit: 10,
            ..Default::default()
        };
        assert!(
            all_pages(&jobs, running).is_empty(),
            "restored jobs have ended"
        );
        let ended = ListQuery {
            state: StateFilter::Ended,
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(all_pages(&jobs, ended).len(), 600);
    }

    #[test]
    fn cursors_round_trip_through_bytes_in_order() {
        let a = Cursor {
            started_at_unix_nanos: 5,
            id: JobId::new(),
        };
        assert_eq!(Cursor::from_bytes(a.to_bytes()), a);
        let later = Cursor {
            started_at_unix_nanos: 6,
            ..a
        };
        assert!(a < later);
    }
}
