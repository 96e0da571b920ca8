//! Scenario 7: whether being captured slows a chatty job down. A job writes 200 MiB of
//! 100-byte lines (`yes LINE | head -c N`); timed from the Start call until its status
//! says it finished AND a follower opened right after Start has received every byte,
//! against the same command writing straight to a file on the disk of jobd's state dir.
//! jobd syncs a job's log to disk before it ends the log stream, so the baseline's own
//! `fsync` is timed separately and printed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{blocking, Ctx, MIB};
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::ms;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let size = ctx.pick(200 * MIB, 50 * MIB);
    let line = "0123456789".repeat(10)[..99].to_string();
    let script = format!("yes {line} | head -c {size}");
    let mut c = ctx.client().await?;
    let run = under_jobd(&mut c, &script, size).await?;
    rpc::remove(&mut c, &run.id).await?;
    let (direct, sync) = blocking(|| direct_to_file(ctx, &script, size))?;
    let jobd = run.finished.max(run.streamed);
    println!(
        "  {} MiB of lines: jobd {:.0} ms (status finished after {:.0} ms, stream complete \
         after {:.0} ms); straight to a file {:.0} ms, + {:.0} ms to fsync it",
        size / MIB,
        ms(jobd),
        ms(run.finished),
        ms(run.streamed),
        ms(direct),
        ms(sync)
    );
    Ok(vec![Row::new(
        format!(
            "7 {} MiB of 100-byte lines under jobd (vs > file)",
            size / MIB
        ),
        ms(jobd),
        "ms",
        Goal::RatioAtMost(1.2),
    )
    .baseline(Some(ms(direct)))
    .note(format!(
        "finished at {:.0} ms, streamed at {:.0} ms; baseline + fsync: {:.0} ms",
        ms(run.finished),
        ms(run.streamed),
        ms(direct + sync)
    ))])
}

/// When, counted from the Start call, the job was seen finished and its stream ended.
struct Run {
    id: String,
    finished: Duration,
    streamed: Duration,
}

/// Starts the job with a follower, and polls its status every 5 ms meanwhile.
async fn under_jobd(c: &mut Client, script: &str, size: u64) -> Result<Run> {
    let t = Instant::now();
    let id = rpc::start(c, rpc::argv(&["sh", "-c", script]), None).await?;
    let (mut follower, follow_id) = (c.clone(), id.clone());
    let follow = tokio::spawn(async move {
        let got = rpc::count_output(&mut follower, &follow_id, true).await;
        (got, t.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = rpc::status(c, &id).await?;
        if rpc::has_ended(&s) {
            break s;
        }
        ensure!(Instant::now() < deadline, "job {id} still runs after 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let finished = t.elapsed();
    let (got, streamed) = follow.await.context("follower task failed")?;
    let got = got?;
    ensure!(
        status.exit_code == Some(0),
        "the job ended badly: {status:?}"
    );
    ensure!(got == size, "the follower got {got} of {size} bytes");
    Ok(Run {
        id,
        finished,
        streamed,
    })
}

/// The same command writing to a file in jobd's scratch folder; returns the time to
/// write it and, separately, the time to fsync it.
fn direct_to_file(ctx: &Ctx, script: &str, size: u64) -> Result<(Duration, Duration)> {
    let path = ctx.jobd.scratch().join("direct.out");
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{script} > '{}'", path.display()))
        .stdin(Stdio::null())
        .status()?;
    let took = t.elapsed();
    ensure!(status.success(), "the direct command failed: {status}");
    let t = Instant::now();
    let file = std::fs::File::open(&path)?;
    file.sync_data()?;
    let sync = t.elapsed();
    let len = file.metadata()?.len();
    std::fs::remove_file(&path)?;
    ensure!(
        len == size,
        "the direct command wrote {len} of {size} bytes"
    );
    Ok((took, sync))
}
