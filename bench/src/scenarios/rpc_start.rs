//! Scenario 2: the server's share of a start. Start RPCs for `true`, one after another
//! over one established connection, against the cheapest way to start the same program
//! (`std::process::Command::spawn`, timed up to its return, reaped outside the timing).
//! Each series starts once the machine has settled after the one before.
//! The target figure is jobd's own: the `server-timing` its reply to each Start carries,
//! from the handler's entry to the program's exec; the RPC round trip is reported beside it.
//! Measured with the server's default isolation (new PID, mount and network namespaces)
//! and with none (only a PID namespace where jobd has no cgroups: nothing else would hold
//! a job's processes), since creating namespaces is part of the cost. A Status RPC on the same
//! connection is timed too: the round trip that every call pays, for reference.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use proto::v1 as pb;

use super::{blocking, wait_all_ended, Ctx};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::{median, p90, us};

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.pick(200, 50);
    let mut spawn = blocking(|| spawn_latencies(n))?;
    let spawn_median = median(&mut spawn);
    println!(
        "  Command::new(\"true\").spawn(): median {:.0} µs, p90 {:.0} µs",
        us(spawn_median),
        us(p90(&mut spawn))
    );
    let mut c = ctx.client().await?;
    let mut rows = vec![status_round_trip(&mut c, n).await?];
    let least = rpc::least_isolation(&mut c).await?;
    for (label, isolation) in [("default isolation", None), least] {
        blocking(|| procfs::settle(Duration::from_secs(10)));
        describe_isolation(&mut c, isolation).await?;
        let (mut samples, mut server) = start_latencies(&mut c, n, isolation).await?;
        let m = median(&mut samples);
        let server_median = us(median(&mut server));
        println!(
            "  Start ({label}): in jobd median {server_median:.0} µs; as an RPC median {:.0} µs, \
             p90 {:.0} µs over {n}",
            us(m),
            us(p90(&mut samples))
        );
        rows.push(
            Row::new(
                format!("2 Start of `true` inside jobd, {label} (vs spawn())"),
                server_median,
                "µs",
                Goal::RatioAtMost(2.0),
            )
            .baseline(Some(us(spawn_median)))
            .note("jobd's server-timing: handler entry to exec"),
        );
        rows.push(
            Row::new(
                format!("2 Start RPC `true`, one connection, {label}"),
                us(m),
                "µs",
                Goal::None,
            )
            .baseline(Some(us(spawn_median))),
        );
        wait_all_ended(&mut c, Duration::from_secs(30)).await?;
    }
    Ok(rows)
}

/// Prints which namespaces a job started this way actually gets.
async fn describe_isolation(c: &mut Client, isolation: Option<pb::Isolation>) -> Result<()> {
    let id = rpc::start(c, rpc::argv(&["true"]), isolation).await?;
    let got = rpc::status(c, &id).await?.isolation.unwrap_or_default();
    println!(
        "  jobs asking for {} get namespaces: pid={} mount={} net={}",
        if isolation.is_some() {
            "the least"
        } else {
            "the default"
        },
        got.pid,
        got.mount,
        got.net
    );
    Ok(())
}

/// The median Status round trip: gRPC, HTTP/2 and TLS with no work behind it.
async fn status_round_trip(c: &mut Client, n: usize) -> Result<Row> {
    let id = rpc::start(c, rpc::argv(&["true"]), None).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        rpc::status(c, &id).await?;
        if i >= 10 {
            samples.push(t.elapsed());
        }
    }
    let m = median(&mut samples);
    println!("  Status RPC round trip: median {:.0} µs", us(m));
    Ok(Row::new(
        "2 Status RPC round trip, same connection (reference)",
        us(m),
        "µs",
        Goal::None,
    ))
}

fn spawn_latencies(n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        let mut child = Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let took = t.elapsed();
        child.wait()?;
        if i >= 10 {
            samples.push(took);
        }
    }
    Ok(samples)
}

/// Round trips and the server's own times (its `server-timing`) of `n` Starts.
async fn start_latencies(
    c: &mut Client,
    n: usize,
    isolation: Option<pb::Isolation>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut rpc, mut server) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 10 {
        let t = Instant::now();
        let (_, took) = rpc::start_timed(c, rpc::argv(&["true"]), isolation).await?;
        if i >= 10 {
            rpc.push(t.elapsed());
            server.push(took);
        }
    }
    Ok((rpc, server))
}
