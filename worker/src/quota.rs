//! Per-user quotas: how many jobs one user may have running, and how many kept (running
//! or ended, with their output) on the server.
//!
//! A start reserves one of each before anything of the job exists, and the check and the
//! count are one step under one lock, so concurrent starts can never pass a quota
//! together. The running count goes down when the job is shown as ended (so a Stop that
//! returned has freed its slot); the kept count when the job is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::Error;

#[derive(Debug, Default)]
struct Counts {
    running: usize,
    kept: usize,
}

#[derive(Debug)]
pub(crate) struct Quotas {
    max_running: usize,
    max_kept: usize,
    /// Owners with at least one running or kept job.
    counts: Mutex<HashMap<String, Counts>>,
}

impl Quotas {
    /// Quotas with the jobs already kept (restored at start-up, all ended) counted.
    pub(crate) fn new<'a>(
        max_running: usize,
        max_kept: usize,
        kept: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Quotas> {
        let mut counts: HashMap<String, Counts> = HashMap::new();
        for owner in kept {
            counts.entry(owner.to_string()).or_default().kept += 1;
        }
        Arc::new(Quotas {
            max_running,
            max_kept,
            counts: Mutex::new(counts),
        })
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<String, Counts>> {
        // Every update is a whole step under the lock: a panicked holder left it consistent.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more running and one more kept job for `owner`, or refuses if either
    /// quota is reached.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        owner: &str,
    ) -> Result<(RunningQuota, KeptQuota), Error> {
        let mut counts = self.counts();
        let (running, kept) = counts.get(owner).map_or((0, 0), |c| (c.running, c.kept));
        if running >= self.max_running {
            return Err(Error::ResourceExhausted(format!(
                "you already run {running} jobs, the most this server runs for one user; \
                 stop one (jobc stop ID) or wait for one to end"
            )));
        }
        if kept >= self.max_kept {
            return Err(Error::ResourceExhausted(format!(
                "the server already keeps {kept} of your jobs, the most it keeps for one \
                 user; delete ended ones (jobc rm ID)"
            )));
        }
        let c = counts.entry(owner.to_string()).or_default();
        c.running += 1;
        c.kept += 1;
        Ok((
            RunningQuota {
                quotas: Arc::clone(self),
                owner: owner.to_string(),
            },
            KeptQuota {
                quotas: Arc::clone(self),
                owner: owner.to_string(),
                kept: false,
            },
        ))
    }

    /// One of `owner`'s kept jobs was deleted.
    pub(crate) fn forget(&self, owner: &str) {
        self.release(owner, |c| c.kept = c.kept.saturating_sub(1));
    }

    fn release(&self, owner: &str, update: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts();
        if let Some(c) = counts.get_mut(owner) {
            update(c);
            if c.running == 0 && c.kept == 0 {
                counts.remove(owner);
            }
        }
    }

    /// (running, kept) for `owner`.
    #[cfg(test)]
    fn of(&self, owner: &str) -> (usize, usize) {
        self.counts()
            .get(owner)
            .map_or((0, 0), |c| (c.running, c.kept))
    }
}

/// One running job of its owner; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct RunningQuota {
    quotas: Arc<Quotas>,
    owner: String,
}

impl Drop for RunningQuota {
    fn drop(&mut self) {
        self.quotas
            .release(&self.owner, |c| c.running = c.running.saturating_sub(1));
    }
}

/// One kept job of its owner. Dropped before [`KeptQuota::keep`] (the start failed), it
/// frees the slot; after, the job's deletion does ([`Quotas::forget`]).
#[derive(Debug)]
pub(crate) struct KeptQuota {
    quotas: Arc<Quotas>,
    owner: String,
    kept: bool,
}

impl KeptQuota {
    /// The job is in the table: it stays counted until it is deleted.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for KeptQuota {
    fn drop(&mut self) {
        if !self.kept {
            self.quotas.forget(&self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_count_per_owner_and_free_on_release() {
        let q = Quotas::new(2, 3, ["alice"]);
        let (run1, kept1) = q.reserve("alice").unwrap();
        let (run2, kept2) = q.reserve("alice").unwrap();
        let e = q.reserve("alice").unwrap_err().to_string();
        assert_eq!(
            e,
            "you already run 2 jobs, the most this server runs for one user; stop one \
             (jobc stop ID) or wait for one to end"
        );
        // Another owner has quotas of their own.
        let (bob_run, bob_kept) = q.reserve("bob").unwrap();
        drop((bob_run, bob_kept));
        assert_eq!(q.of("bob"), (0, 0));
        assert!(
            q.counts().get("bob").is_none(),
            "an owner without jobs is forgotten"
        );

        kept1.keep();
        kept2.keep();
        drop(run1);
        assert_eq!(q.of("alice"), (1, 3));
        let e = q.reserve("alice").unwrap_err().to_string();
        assert!(
            e.starts_with("the server already keeps 3 of your jobs"),
            "{e}"
        );
        q.forget("alice");
        let (run3, kept3) = q.reserve("alice").unwrap();
        // A start that failed gives both back.
        drop((run3, kept3));
        assert_eq!(q.of("alice"), (1, 2));
        drop(run2);
        assert_eq!(q.of("alice"), (0, 2));
    }
}
