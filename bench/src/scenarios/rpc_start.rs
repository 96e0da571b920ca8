//! Scenario 2: the server's share of a start. Start RPCs for `true`, one after another
//! over one established connection, each once the job before has ended, against the floor of the same work (see
//! [`crate::floor`]): a clone into the same namespaces as the same kind of user, with the
//! same made-ahead pools, exec'ing `true`, with and without a job folder and record
//! written as jobd writes them. The target figure is jobd's own: the `server-timing` its
//! reply to each Start carries, from the handler's entry to the program's exec, which is
//! also how far the floor is timed; the RPC round trip is reported beside it.
//!
//! jobd's and the floor's series take turns in blocks, so drift on the machine falls on
//! both alike. Measured with the server's default isolation (new PID, mount and network
//! namespaces) and with the least it allows (only a PID namespace where jobd has no
//! cgroups: nothing else would hold a job's processes). `Command::spawn()` with no
//! namespaces and no user switch stays as an unlike-work row, and a Status round trip on
//! the same connection is there for reference.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use proto::v1 as pb;

use super::{blocking, wait_all_ended, Ctx, StartFloor};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::{median, p90, us};

/// Each series is taken in this many blocks, taking turns.
const BLOCKS: usize = 4;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.pick(200, 48);
    let mut spawn = blocking(|| spawn_latencies(n))?;
    let spawn_median = us(median(&mut spawn));
    println!(
        "  Command::new(\"true\").spawn(): median {spawn_median:.0} µs, p90 {:.0} µs",
        us(p90(&mut spawn))
    );
    let mut c = ctx.client().await?;
    let mut rows = vec![status_round_trip(&mut c, n).await?];
    let least = rpc::least_isolation(&mut c).await?;
    for (label, isolation) in [("default isolation", None), least] {
        let bare = StartFloor::new(ctx, &mut c, isolation, false).await?;
        let recorded = StartFloor::new(ctx, &mut c, isolation, true).await?;
        println!("  {label}: the floor does {}", bare.describe());
        let mut series = Series::default();
        blocking(|| procfs::settle(Duration::from_secs(10)));
        for _ in 0..BLOCKS {
            let block = n / BLOCKS;
            series
                .floor_recorded
                .extend(blocking(|| recorded.floor.latencies(2, block))?);
            series
                .floor_bare
                .extend(blocking(|| bare.floor.latencies(2, block))?);
            let (rpc, server) = start_latencies(&mut c, block, isolation).await?;
            series.rpc.extend(rpc);
            series.server.extend(server);
            wait_all_ended(&mut c, Duration::from_secs(30)).await?;
        }
        let server = us(median(&mut series.server));
        let floor_recorded = us(median(&mut series.floor_recorded));
        let floor_bare = us(median(&mut series.floor_bare));
        println!(
            "  Start ({label}): in jobd median {server:.0} µs; as an RPC median {:.0} µs, \
             p90 {:.0} µs; the floor {floor_recorded:.0} µs with its record, \
             {floor_bare:.0} µs without, over {n} each",
            us(median(&mut series.rpc)),
            us(p90(&mut series.rpc)),
        );
        rows.push(
            Row::new(
                format!("2 Start of `true` inside jobd, {label} (vs the floor with a record)"),
                server,
                "µs",
                Goal::RatioAtMost(1.5),
            )
            .baseline(Some(floor_recorded))
            .note("jobd's server-timing and the floor: to the exec"),
        );
        rows.push(
            Row::new(
                format!("2 the same vs the floor without a record, {label}"),
                server,
                "µs",
                Goal::None,
            )
            .baseline(Some(floor_bare)),
        );
        rows.push(
            Row::new(
                format!("2 the same vs `Command::spawn()`, {label}"),
                server,
                "µs",
                Goal::None,
            )
            .baseline(Some(spawn_median))
            .note("unlike work: no namespaces, no user, no record"),
        );
        rows.push(
            Row::new(
                format!("2 Start RPC `true`, one connection, {label}"),
                us(median(&mut series.rpc)),
                "µs",
                Goal::None,
            )
            .note("timed by the client: adds the round trip"),
        );
    }
    Ok(rows)
}

#[derive(Default)]
struct Series {
    server: Vec<Duration>,
    rpc: Vec<Duration>,
    floor_recorded: Vec<Duration>,
    floor_bare: Vec<Duration>,
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

/// Round trips and the server's own times (its `server-timing`) of `n` Starts. Each job
/// has ended before the next Start, as each of the floor's is reaped and recorded before
/// its next: a Start that came while the last `true` still ran would share the two cores
/// with its start-up, which the floor's never do.
async fn start_latencies(
    c: &mut Client,
    n: usize,
    isolation: Option<pb::Isolation>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut rpc, mut server) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 2 {
        let t = Instant::now();
        let (id, took) = rpc::start_timed(c, rpc::argv(&["true"]), isolation).await?;
        if i >= 2 {
            rpc.push(t.elapsed());
            server.push(took);
        }
        rpc::wait_ended(c, &id, Duration::from_secs(10)).await?;
    }
    Ok((rpc, server))
}
