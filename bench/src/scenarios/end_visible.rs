//! Scenario 3: how soon a job's end shows in Status. The job prints a CLOCK_REALTIME
//! timestamp as its very last act (`exec date +%s%N` after a short sleep); the bench polls
//! Status every ~0.5 ms over an established connection and takes the wall-clock time at
//! which a reply first says the job has ended. The job's `ended_at` (when jobd reaped it)
//! splits the lag into "jobd noticed the exit" and "the status showed it".

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::{blocking, Ctx};
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::median_f64;

const SCRIPT: &str = "sleep 0.2; exec date +%s%N";
const POLL_EVERY: Duration = Duration::from_micros(500);

/// Lags of one run, in ms.
struct Lag {
    total: f64,
    to_reap: f64,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.pick(20, 8);
    let mut c = ctx.client().await?;
    let mut total = Vec::with_capacity(runs);
    let mut to_reap = Vec::with_capacity(runs);
    for _ in 0..runs {
        let lag = one_run(&mut c).await?;
        total.push(lag.total);
        to_reap.push(lag.to_reap);
    }
    let max = total.iter().copied().fold(0.0, f64::max);
    let (m, reap) = (median_f64(&mut total), median_f64(&mut to_reap));
    println!(
        "  exit → status shows the end: median {m:.2} ms (max {max:.2}) over {runs} runs; \
         of which exit → jobd's ended_at: median {reap:.2} ms"
    );
    Ok(vec![Row::new(
        "3 job exit → visible in Status (0.5 ms polling)",
        m,
        "ms",
        Goal::AtMost(10.0),
    )
    .note(format!("exit → jobd's ended_at: {reap:.2} ms"))])
}

async fn one_run(c: &mut Client) -> Result<Lag> {
    let id = rpc::start(c, rpc::argv(&["sh", "-c", SCRIPT]), None).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (seen, status) = loop {
        let s = rpc::status(c, &id).await?;
        if rpc::has_ended(&s) {
            break (now_nanos(), s);
        }
        if Instant::now() > deadline {
            bail!("job {id} did not end within 5 s");
        }
        blocking(|| std::thread::sleep(POLL_EVERY));
    };
    let out = rpc::output(c, &id).await?;
    let printed: i64 = String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .with_context(|| format!("the job printed {out:?}, not a timestamp"))?;
    let ended = status
        .ended_at
        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .context("an ended job without ended_at")?;
    Ok(Lag {
        total: (seen - printed) as f64 / 1e6,
        to_reap: (ended - printed) as f64 / 1e6,
    })
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
