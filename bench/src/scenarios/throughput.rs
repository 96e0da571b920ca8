//! Scenario 4: how many jobs a jobd starts per second when one client pushes hard: 64
//! tasks share one connection (HTTP/2 streams on one TLS session), each starting `true`
//! jobs back to back until the total is reached. With the default isolation and with the
//! least jobd allows. The floor is the same loop without jobd (see [`crate::floor`]): 64
//! threads on both cores, each starting `true` in the same namespaces as the same kind
//! of user with its folder and first record, reaping it and writing its final record
//! durably, from the same made-ahead pools. jobd's bursts and the floor's alternate.
//! Each also prints the CPU it spent per start, its own and its jobs' (`true`, and in
//! jobd the job's init), since on two cores that bounds the rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use proto::v1 as pb;
use tokio::task::JoinSet;

use super::{blocking, wait_all_ended, Ctx, StartFloor};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};

const CONCURRENCY: usize = 64;

/// The outcome of one burst.
struct Burst {
    started: usize,
    failures: Vec<String>,
    took: Duration,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let total = ctx.pick(2000, 400);
    let mut c = ctx.client().await?;
    let mut rows = Vec::new();
    let least = rpc::least_isolation(&mut c).await?;
    for (label, isolation) in [("default isolation", None), least] {
        let floor = StartFloor::new(ctx, &mut c, isolation, true).await?;
        // The kernel tears down the previous burst's namespaces for a while after it.
        blocking(|| procfs::settle(Duration::from_secs(10)));
        let cpu_before = Cpu::of_this_process();
        let floor_rate = blocking(|| floor.floor.rate(total, CONCURRENCY))?;
        let floor_cpu = Cpu::of_this_process().since(&cpu_before, total);
        println!(
            "  {label}: the floor ({}, a record) {floor_rate:.0}/s; CPU per start {}",
            floor.describe(),
            floor_cpu.describe("the floor's threads")
        );
        blocking(|| procfs::settle(Duration::from_secs(10)));
        let jobd = ctx.jobd.pid();
        let cpu_before = Cpu::of(jobd)?;
        let burst = burst(&c, total, isolation).await;
        let rate = burst.started as f64 / burst.took.as_secs_f64();
        // Each job's CPU counts once jobd has reaped it.
        wait_all_ended(&mut c, Duration::from_secs(60)).await?;
        let jobd_cpu = Cpu::of(jobd)?.since(&cpu_before, burst.started.max(1));
        println!(
            "  {label}: {} starts in {:.2} s = {rate:.0}/s ({} failed); CPU per start {}",
            burst.started,
            burst.took.as_secs_f64(),
            burst.failures.len(),
            jobd_cpu.describe("jobd's threads")
        );
        let mut row = Row::new(
            format!("4 starts/s, 64 concurrent on one connection, {label} (vs the floor)"),
            rate,
            "/s",
            Goal::RatioAtLeast(0.9),
        )
        .baseline(Some(floor_rate));
        if let Some(first) = burst.failures.first() {
            eprintln!(
                "!!! {} of {total} starts FAILED; first: {first}",
                burst.failures.len()
            );
            row = row.note(format!("{} starts failed: {first}", burst.failures.len()));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// CPU time of a starter (jobd, or this process for the floor) and of the jobs it has
/// reaped, which on two cores bounds how many starts a second both can make.
struct Cpu {
    own: Duration,
    jobs: Duration,
}

impl Cpu {
    fn of(pid: u32) -> Result<Cpu> {
        let (own, jobs) = procfs::cpu_time_and_reaped(pid)?;
        Ok(Cpu { own, jobs })
    }

    fn of_this_process() -> Cpu {
        Cpu {
            own: procfs::rusage_cpu(libc::RUSAGE_SELF),
            jobs: procfs::rusage_cpu(libc::RUSAGE_CHILDREN),
        }
    }

    /// The CPU used since `before`, per start of `starts`.
    fn since(&self, before: &Cpu, starts: usize) -> Cpu {
        let per = |now: Duration, then: Duration| now.saturating_sub(then) / starts as u32;
        Cpu {
            own: per(self.own, before.own),
            jobs: per(self.jobs, before.jobs),
        }
    }

    fn describe(&self, own: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{:.2} ms ({own} {:.2} + the jobs {:.2})",
            ms(self.own + self.jobs),
            ms(self.own),
            ms(self.jobs)
        )
    }
}

async fn burst(client: &Client, total: usize, isolation: Option<pb::Isolation>) -> Burst {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (mut c, next) = (client.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut failures = Vec::new();
            let mut started = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match rpc::start(&mut c, rpc::argv(&["true"]), isolation).await {
                    Ok(_) => started += 1,
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            (started, failures)
        });
    }
    let mut burst = Burst {
        started: 0,
        failures: Vec::new(),
        took: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((started, failures)) => {
                burst.started += started;
                burst.failures.extend(failures);
            }
            Err(e) => burst.failures.push(format!("task failed: {e}")),
        }
    }
    burst.took = t.elapsed();
    burst
}
