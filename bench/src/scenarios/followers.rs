//! Scenario 6: fan-out. 1,000 followers (Logs with follow) of one job, spread over 8
//! connections because a connection carries at most 256 streams; each counts the bytes it
//! gets and must get every one. Reports jobd's peak RSS while serving them, which must
//! stay bounded however many readers there are.
//!
//! The job sleeps a second before writing, so followers attach before its output starts.
//!
//! The job writes 8 MiB (2 MiB with `--quick`), not 100 MiB: every follower gets every
//! byte through TLS, so 1,000 followers of 100 MiB are 100 GiB to encrypt and decrypt on
//! this machine, many minutes on two cores. Peak memory depends on how many followers
//! read at once, not on how long the output is.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;

use super::{Ctx, MIB};
use crate::procfs::{self, mib};
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};

const FOLLOWERS: usize = 1000;
const CONNECTIONS: usize = 8;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let size = ctx.pick(8 * MIB, 2 * MIB);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(ctx.client().await?);
    }
    let script = format!("sleep 1; exec head -c {size} /dev/urandom");
    let id = rpc::start(&mut clients[0], rpc::argv(&["sh", "-c", &script]), None).await?;
    let pid = ctx.jobd.pid();
    procfs::reset_peak(pid)?;
    let before = procfs::mem(pid)?;
    let t = Instant::now();
    let counts = follow_all(&clients, &id).await;
    let took = t.elapsed();
    let after = procfs::mem(pid)?;

    let complete = counts
        .iter()
        .filter(|c| matches!(c, Ok(n) if *n == size))
        .count();
    report_failures(&counts, size);
    println!(
        "  {FOLLOWERS} followers × {} MiB in {:.2} s ({:.0} MiB/s in all); complete: {complete}; \
         jobd RSS {:.1} MiB before, peak {:.1} MiB",
        size / MIB,
        took.as_secs_f64(),
        (size * FOLLOWERS as u64) as f64 / MIB as f64 / took.as_secs_f64(),
        mib(before.rss_kib),
        mib(after.hwm_kib)
    );
    rpc::remove(&mut clients[0], &id).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "  jobd RSS a second after the last follower ended: {:.1} MiB",
        mib(procfs::mem(pid)?.rss_kib)
    );
    Ok(vec![
        Row::new(
            format!(
                "6 jobd peak RSS, {FOLLOWERS} followers of a {} MiB job",
                size / MIB
            ),
            mib(after.hwm_kib),
            "MiB",
            Goal::AtMost(256.0),
        ),
        Row::new(
            "6 followers that got every byte",
            complete as f64,
            "",
            Goal::AtLeast(FOLLOWERS as f64),
        ),
    ])
}

/// Opens every follower, then waits for all; each yields its byte count or its error.
async fn follow_all(clients: &[Client], id: &str) -> Vec<Result<u64>> {
    let mut tasks = JoinSet::new();
    for i in 0..FOLLOWERS {
        let mut c = clients[i % clients.len()].clone();
        let id = id.to_string();
        tasks.spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(120),
                rpc::count_output(&mut c, &id, true),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    let mut counts = Vec::with_capacity(FOLLOWERS);
    while let Some(joined) = tasks.join_next().await {
        counts.push(joined.map_err(anyhow::Error::from).and_then(|r| r));
    }
    counts
}

/// Says loudly which followers missed bytes or failed.
fn report_failures(counts: &[Result<u64>], size: u64) {
    let bad: Vec<String> = counts
        .iter()
        .filter_map(|c| match c {
            Ok(n) if *n == size => None,
            Ok(n) => Some(format!("got {n} of {size} bytes")),
            Err(e) => Some(format!("{e:#}")),
        })
        .collect();
    if let Some(first) = bad.first() {
        eprintln!(
            "!!! {} of {FOLLOWERS} followers did NOT get every byte; first: {first}",
            bad.len()
        );
    }
}
