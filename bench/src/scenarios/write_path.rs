//! Scenario 7: whether being captured slows a chatty job down. A job writes 200 MiB of
//! 100-byte lines (`yes LINE | head -c N`), five times (medians); timed from the Start call until its status
//! says it finished (polled every millisecond), against the same command writing straight
//! to a file on the disk of jobd's state dir. Every byte is then checked to be in the log.
//!
//! Run a second time with a follower opened right after Start, timed until the follower
//! has every byte too: on two cores the follower (jobd encrypting, the client
//! decrypting) competes with the job for CPU, so that figure is reported beside it.
//!
//! jobd syncs a job's log to disk after the job ends, so the baseline's own `fsync` is
//! timed separately and printed.
//!
//! Last, the log of one such job is read back with `jobc logs` as JSON lines, two million
//! of them, against `jobc logs --raw` of the same log: what rendering a line costs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{blocking, time_to_devnull, Ctx, MIB};
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::{median, ms};

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let size = ctx.pick(200 * MIB, 50 * MIB);
    let line = "0123456789".repeat(10)[..99].to_string();
    let script = format!("yes {line} | head -c {size}");
    let mut c = ctx.client().await?;
    let reps = ctx.pick(5, 2);
    let (mut alone, mut finished, mut streamed, mut direct, mut sync) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let run = under_jobd(&mut c, &script, size, false).await?;
        rpc::remove(&mut c, &run.id).await?;
        alone.push(run.finished);
        let run = under_jobd(&mut c, &script, size, true).await?;
        rpc::remove(&mut c, &run.id).await?;
        finished.push(run.finished);
        streamed.push(run.streamed.unwrap_or_default().max(run.finished));
        let (d, s) = blocking(|| direct_to_file(ctx, &script, size))?;
        direct.push(d);
        sync.push(s);
    }
    let (json, raw) = read_back(ctx, &mut c, &script, size).await?;
    let (alone, finished, streamed) = (
        median(&mut alone),
        median(&mut finished),
        median(&mut streamed),
    );
    let (direct, sync) = (median(&mut direct), median(&mut sync));
    println!(
        "  {} MiB of lines, medians of {reps}: jobd, no reader: finished after {:.0} ms | \
         with a follower: finished after {:.0} ms, stream complete after {:.0} ms | \
         straight to a file {:.0} ms, + {:.0} ms to fsync it",
        size / MIB,
        ms(alone),
        ms(finished),
        ms(streamed),
        ms(direct),
        ms(sync)
    );
    let lines = size / 100;
    println!(
        "  `jobc logs` of one such log, medians of {reps}: JSON lines {:.0} ms ({:.1} M lines/s), \
         --raw {:.0} ms",
        ms(json),
        lines as f64 / json.as_secs_f64() / 1e6,
        ms(raw)
    );
    Ok(vec![
        Row::new(
            format!(
                "7 {} MiB of 100-byte lines under jobd (vs > file)",
                size / MIB
            ),
            ms(alone),
            "ms",
            Goal::RatioAtMost(1.2),
        )
        .baseline(Some(ms(direct)))
        .note(format!("baseline + fsync: {:.0} ms", ms(direct + sync))),
        Row::new(
            "7 the same with a follower, until it has every byte (vs > file)",
            ms(streamed),
            "ms",
            Goal::None,
        )
        .baseline(Some(ms(direct)))
        .note(format!(
            "job finished at {:.0} ms, stream complete at {:.0} ms",
            ms(finished),
            ms(streamed)
        )),
        Row::new(
            format!(
                "7 `jobc logs` of such a log as JSON lines ({:.1} M lines; vs --raw)",
                lines as f64 / 1e6
            ),
            ms(json),
            "ms",
            Goal::None,
        )
        .baseline(Some(ms(raw))),
    ])
}

/// Runs the job once more and reads its log back with `jobc logs`, as JSON lines and with
/// `--raw`, alternately; returns the medians.
async fn read_back(
    ctx: &Ctx,
    c: &mut Client,
    script: &str,
    size: u64,
) -> Result<(Duration, Duration)> {
    let run = under_jobd(c, script, size, false).await?;
    let (mut json, mut raw) = (vec![], vec![]);
    for _ in 0..ctx.pick(5, 2) {
        for (args, times) in [(&["logs"][..], &mut json), (&["logs", "--raw"], &mut raw)] {
            let mut cmd = ctx.jobd.jobc();
            cmd.args(args).arg(&run.id);
            times.push(blocking(|| time_to_devnull(cmd, "jobc logs"))?);
        }
    }
    rpc::remove(c, &run.id).await?;
    Ok((median(&mut json), median(&mut raw)))
}

/// When, counted from the Start call, the job was seen finished and (with a follower)
/// its stream ended.
struct Run {
    id: String,
    finished: Duration,
    streamed: Option<Duration>,
}

/// Starts the job, with a follower if asked, and polls its status every millisecond;
/// checks that the log holds every byte.
async fn under_jobd(c: &mut Client, script: &str, size: u64, follow: bool) -> Result<Run> {
    let t = Instant::now();
    let id = rpc::start(c, rpc::argv(&["sh", "-c", script]), None).await?;
    let follower = follow.then(|| {
        let (mut follower, follow_id) = (c.clone(), id.clone());
        tokio::spawn(async move {
            let got = rpc::count_output(&mut follower, &follow_id, true).await;
            (got, t.elapsed())
        })
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = rpc::status(c, &id).await?;
        if rpc::has_ended(&s) {
            break s;
        }
        ensure!(Instant::now() < deadline, "job {id} still runs after 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let finished = t.elapsed();
    ensure!(
        status.exit_code == Some(0),
        "the job ended badly: {status:?}"
    );
    let streamed = match follower {
        Some(task) => {
            let (got, streamed) = task.await.context("follower task failed")?;
            let got = got?;
            ensure!(got == size, "the follower got {got} of {size} bytes");
            Some(streamed)
        }
        None => None,
    };
    let stored = rpc::count_output(c, &id, true).await?;
    ensure!(stored == size, "the log holds {stored} of {size} bytes");
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
