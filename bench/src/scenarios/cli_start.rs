//! Scenario 1: what a user waits for when typing `jobc start true` — a new process, a TLS
//! handshake with client certificates, one RPC — against `pueue add -- true` over pueue's
//! unix socket. `pueue add` only queues the task, while `jobc start` returns once the
//! program has been exec'd, so the comparison favours pueue.

use std::process::Stdio;

use anyhow::{ensure, Result};

use super::{blocking, time_each, Ctx};
use crate::report::{Goal, Row};
use crate::stats::{median, ms, p90};

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.pick(100, 30);
    let mut jobc = blocking(|| time_each(3, runs, || jobc_start(ctx)))?;
    let jobc_median = median(&mut jobc);
    println!(
        "  jobc start true: median {:.2} ms, p90 {:.2} ms over {runs} runs",
        ms(jobc_median),
        ms(p90(&mut jobc))
    );
    let pueue_median = match &ctx.pueue {
        Some(p) => {
            let mut samples = blocking(|| time_each(3, runs, || pueue_add(p)))?;
            let m = median(&mut samples);
            println!(
                "  pueue add -- true: median {:.2} ms, p90 {:.2} ms over {runs} runs",
                ms(m),
                ms(p90(&mut samples))
            );
            blocking(|| p.clean());
            Some(ms(m))
        }
        None => None,
    };
    let row = Row::new(
        "1 `jobc start true`, new process (vs `pueue add -- true`)",
        ms(jobc_median),
        "ms",
        Goal::RatioAtMost(1.0),
    )
    .baseline(pueue_median);
    Ok(vec![row.note(match pueue_median {
        None => "pueue not installed",
        Some(_) => "pueue add only queues; jobc waits for exec",
    })])
}

fn jobc_start(ctx: &Ctx) -> Result<()> {
    let out = ctx
        .jobd
        .jobc()
        .args(["start", "true"])
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success() && out.stdout.len() == 37,
        "jobc start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn pueue_add(p: &crate::pueue::Pueued) -> Result<()> {
    let out = p.run(&["add", "--", "true"])?;
    ensure!(
        out.status.success(),
        "pueue add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
