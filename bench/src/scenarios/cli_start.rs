//! Scenario 1: what a user waits for when typing `jobc start true` — a new process, a TLS
//! handshake with client certificates, one RPC, and jobd's start of the program in its
//! namespaces — against the floor of the same work (see [`crate::floor`]): a new process
//! making the same mutual TLS 1.3 connection and one unary gRPC call to a server that
//! answers at once, plus the floor of a start of `true` in the namespaces and as the
//! kind of user jobd's job gets. jobc's and the floor's series take turns in blocks.
//!
//! Two more series, timed in the same blocks, split the gap between jobc and its floor:
//! the floor's own client sending its Start to jobd (so the client is the floor's and
//! the rest is jobd's), and `jobc status ID` of an ended job (the same client work with no
//! start behind it).
//!
//! `pueue add -- true` stays as an unlike-work row: it returns once the task is queued,
//! over a Unix socket with no TLS.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{blocking, time_each, Ctx, StartFloor};
use crate::floor::unary;
use crate::report::{Goal, Row};
use crate::rpc;
use crate::stats::{median, ms, p90};

/// Each series is taken in this many blocks, taking turns.
const BLOCKS: usize = 4;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.pick(100, 32);
    let mut c = ctx.client().await?;
    let spawn = StartFloor::new(ctx, &mut c, None, false).await?;
    let server = unary::Server::start(&ctx.jobd.pki()).await?;
    let bench = std::env::current_exe().context("cannot find this bench's binary")?;
    let client_args = unary::client_args(server.addr, &ctx.jobd.pki());
    let jobd_addr = ctx.jobd.server().parse().context("jobd's address")?;
    let client_to_jobd = unary::client_args(jobd_addr, &ctx.jobd.pki());
    let ended = rpc::start(&mut c, rpc::argv(&["true"]), None).await?;
    rpc::wait_ended(&mut c, &ended, Duration::from_secs(10)).await?;
    let mut s = Series::default();
    for _ in 0..BLOCKS {
        let block = runs / BLOCKS;
        s.jobc
            .extend(blocking(|| time_each(2, block, || jobc_start(ctx)))?);
        s.client.extend(blocking(|| {
            time_each(2, block, || floor_client(&bench, &client_args))
        })?);
        s.spawned
            .extend(blocking(|| spawn.floor.latencies(2, block))?);
        s.status.extend(blocking(|| {
            time_each(2, block, || jobc_status(ctx, &ended))
        })?);
        s.client_to_jobd.extend(blocking(|| {
            time_each(2, block, || floor_client(&bench, &client_to_jobd))
        })?);
    }
    let jobc_median = ms(median(&mut s.jobc));
    let client_median = ms(median(&mut s.client));
    let spawn_median = ms(median(&mut s.spawned));
    let status_median = ms(median(&mut s.status));
    let to_jobd_median = ms(median(&mut s.client_to_jobd));
    let floor = client_median + spawn_median;
    println!(
        "  jobc start true: median {jobc_median:.2} ms, p90 {:.2} ms over {runs} runs; \
         jobc status of an ended job: median {status_median:.2} ms, p90 {:.2} ms; \
         the floor's client starting true in jobd: median {to_jobd_median:.2} ms, p90 {:.2} ms",
        ms(p90(&mut s.jobc)),
        ms(p90(&mut s.status)),
        ms(p90(&mut s.client_to_jobd))
    );
    println!(
        "  the floor: a client process with one mutual-TLS unary call {client_median:.2} ms \
         (p90 {:.2}) + a start in jobd's namespaces ({}) {spawn_median:.3} ms = {floor:.2} ms",
        ms(p90(&mut s.client)),
        spawn.describe()
    );
    let mut rows = vec![Row::new(
        "1 `jobc start true`, new process (vs the floor: client + start)",
        jobc_median,
        "ms",
        Goal::RatioAtMost(1.15),
    )
    .baseline(Some(floor))
    .note(format!(
        "floor: client {client_median:.2} + start {spawn_median:.3} ms"
    ))];
    rows.push(
        Row::new(
            "1 the floor's client starting `true` in jobd (vs the floor: client + start)",
            to_jobd_median,
            "ms",
            Goal::None,
        )
        .baseline(Some(floor))
        .note("jobd's share of the gap: the client is the floor's"),
    );
    rows.push(
        Row::new(
            "1 `jobc status ID`, new process (vs the floor's client alone)",
            status_median,
            "ms",
            Goal::None,
        )
        .baseline(Some(client_median))
        .note("the same connection and call, with no start behind it"),
    );
    if let Some(p) = &ctx.pueue {
        let mut samples = blocking(|| time_each(3, runs, || pueue_add(p)))?;
        let m = ms(median(&mut samples));
        println!(
            "  pueue add -- true: median {m:.2} ms, p90 {:.2} ms over {runs} runs",
            ms(p90(&mut samples))
        );
        blocking(|| p.clean());
        rows.push(
            Row::new(
                "1 the same vs `pueue add -- true`",
                jobc_median,
                "ms",
                Goal::None,
            )
            .baseline(Some(m))
            .note("unlike work: pueue add only queues, over a Unix socket, no TLS"),
        );
    }
    super::wait_all_ended(&mut c, Duration::from_secs(30)).await?;
    Ok(rows)
}

/// The series scenario 1 takes, in turns.
#[derive(Default)]
struct Series {
    /// `jobc start true`.
    jobc: Vec<Duration>,
    /// The floor's client against the floor's server.
    client: Vec<Duration>,
    /// The floor of a start in jobd's namespaces.
    spawned: Vec<Duration>,
    /// `jobc status ID` of an ended job.
    status: Vec<Duration>,
    /// The floor's client against jobd: a real Start.
    client_to_jobd: Vec<Duration>,
}

fn jobc_start(ctx: &Ctx) -> Result<()> {
    let mut cmd = ctx.jobd.jobc();
    cmd.args(["start", "true"]);
    run_checked(cmd, "jobc start", prints_a_job_id)
}

fn jobc_status(ctx: &Ctx, id: &str) -> Result<()> {
    let mut cmd = ctx.jobd.jobc();
    cmd.args(["status", id]);
    run_checked(cmd, "jobc status", |out| out.starts_with(b"finished"))
}

fn floor_client(bench: &std::path::Path, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(bench);
    cmd.args(args).stdin(Stdio::null());
    run_checked(cmd, "the floor's client", prints_a_job_id)
}

/// A job id and its newline, as `jobc start` and the floor's client print it.
fn prints_a_job_id(out: &[u8]) -> bool {
    out.len() == 37
}

/// Runs one timed command; an error unless it succeeded and printed what `ok` expects.
fn run_checked(mut cmd: Command, what: &str, ok: impl Fn(&[u8]) -> bool) -> Result<()> {
    let out = cmd.stderr(Stdio::piped()).output()?;
    ensure!(
        out.status.success() && ok(&out.stdout),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
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
