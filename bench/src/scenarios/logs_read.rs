//! Scenario 5: reading back a big log. `jobc logs --raw ID > /dev/null` for a finished job
//! with 200 MiB of output, medians of five, against two in-process TLS relays (see
//! [`crate::relay`]): one of the log file itself, the target's baseline (the same work:
//! read the file, encrypt, send, decrypt, write), and one of the same size from memory. Beside the rates: jobd's peak RSS growth during the reads (a
//! reader must stream from the file, not load it) and the CPU each side spends per read,
//! since on two cores a read is bound by the CPU both ends need together. With pueue:
//! `pueue log --full` of the same output, read from disk by the client (pueue's default)
//! and served by pueued.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::{blocking, time_to_devnull, Ctx, MIB};
use crate::procfs::{self, mib};
use crate::pueue::Pueued;
use crate::relay::{self, Source};
use crate::report::{Goal, Row};
use crate::rpc;
use crate::stats::{median, median_f64, mib_per_s};

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let size = ctx.pick(200 * MIB, 50 * MIB);
    let mut c = ctx.client().await?;
    let argv = rpc::argv(&["head", "-c", &size.to_string(), "/dev/urandom"]);
    let id = rpc::start(&mut c, argv, None).await?;
    rpc::wait_ended(&mut c, &id, Duration::from_secs(60)).await?;
    // The end is in the status a moment before the last bytes are drained and synced.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = ctx.jobd.pid();
    procfs::reset_peak(pid)?;
    let before = procfs::mem(pid)?;
    let reps = ctx.pick(5, 2);
    let mut reads = Vec::with_capacity(reps);
    let jobd_cpu = procfs::cpu_time(pid)?;
    let jobc_cpu = procfs::rusage_cpu(libc::RUSAGE_CHILDREN);
    for _ in 0..reps {
        reads.push(blocking(|| time_jobc_logs(ctx, &id))?);
    }
    let jobd_cpu = (procfs::cpu_time(pid)? - jobd_cpu) / reps as u32;
    let jobc_cpu = (procfs::rusage_cpu(libc::RUSAGE_CHILDREN) - jobc_cpu) / reps as u32;
    let after = procfs::mem(pid)?;
    let growth = mib(after.hwm_kib.saturating_sub(before.rss_kib));

    let memory = relay_series(ctx, reps, Source::Memory(size)).await?;
    let log = ctx.jobd.job_dir(&id).join("output.log");
    let file = relay_series(ctx, reps, Source::File(log)).await?;
    let rate = mib_per_s(size, median(&mut reads));
    println!(
        "  jobc logs --raw: {} MiB, median of {reps} reads {rate:.0} MiB/s, CPU per read: jobd \
         {:.3} s + jobc {:.3} s; jobd RSS {:.1} MiB before, peak {:.1} MiB during the reads",
        size / MIB,
        jobd_cpu.as_secs_f64(),
        jobc_cpu.as_secs_f64(),
        mib(before.rss_kib),
        mib(after.hwm_kib)
    );
    for (what, r) in [("in-memory", &memory), ("log-file", &file)] {
        println!(
            "  TLS relay, {what} (median of {reps}): {:.0} MiB/s, CPU per transfer {:.3} s",
            r.rate,
            r.cpu.as_secs_f64()
        );
    }
    rpc::remove(&mut c, &id).await?;
    let mut rows = vec![
        Row::new(
            format!(
                "5 `jobc logs --raw` of {} MiB (vs a TLS relay of the log file)",
                size / MIB
            ),
            rate,
            "MiB/s",
            Goal::RatioAtLeast(0.8),
        )
        .baseline(Some(file.rate)),
        Row::new(
            "5 the same read vs a TLS relay from memory",
            rate,
            "MiB/s",
            Goal::None,
        )
        .baseline(Some(memory.rate))
        .note("less work than a replay: no page-cache read"),
        Row::new(
            "5 jobd peak RSS growth during that read",
            growth,
            "MiB",
            Goal::AtMost(32.0),
        ),
    ];
    if let Some(p) = &ctx.pueue {
        rows.extend(blocking(|| pueue_log(p, size))?);
    }
    Ok(rows)
}

/// The medians of a series of relays: throughput, and this process's CPU per transfer
/// (both ends of the relay run in it).
struct RelayFigures {
    rate: f64,
    cpu: Duration,
}

async fn relay_series(ctx: &Ctx, reps: usize, source: Source) -> Result<RelayFigures> {
    let mut rates = Vec::with_capacity(reps);
    let cpu = procfs::rusage_cpu(libc::RUSAGE_SELF);
    for _ in 0..reps {
        let (bytes, took) =
            relay::tls_relay(&ctx.jobd.target(), &ctx.jobd.pki(), source.clone()).await?;
        rates.push(mib_per_s(bytes, took));
    }
    Ok(RelayFigures {
        rate: median_f64(&mut rates),
        cpu: (procfs::rusage_cpu(libc::RUSAGE_SELF) - cpu) / reps as u32,
    })
}

fn time_jobc_logs(ctx: &Ctx, id: &str) -> Result<Duration> {
    let mut cmd = ctx.jobd.jobc();
    cmd.args(["logs", "--raw", id]);
    time_to_devnull(cmd, "jobc logs")
}

/// `pueue log --full` of the same amount of output, read locally and through pueued.
fn pueue_log(p: &Pueued, size: u64) -> Result<Vec<Row>> {
    let id = p.add(&format!("head -c {size} /dev/urandom"))?;
    p.wait(&id)?;
    let local = time_pueue_log(p.command(false), &id)?;
    let pid = p.pid();
    procfs::reset_peak(pid)?;
    let before = procfs::mem(pid)?;
    let remote = time_pueue_log(p.command(true), &id)?;
    let after = procfs::mem(pid)?;
    let growth = mib(after.hwm_kib.saturating_sub(before.rss_kib));
    let (local_rate, remote_rate) = (mib_per_s(size, local), mib_per_s(size, remote));
    println!(
        "  pueue log --full: {local_rate:.0} MiB/s reading the file itself, \
         {remote_rate:.0} MiB/s served by pueued (pueued peak RSS +{growth:.1} MiB)"
    );
    p.clean();
    Ok(vec![
        Row::new(
            "5 `pueue log --full`, client reads the file (pueue default)",
            local_rate,
            "MiB/s",
            Goal::None,
        ),
        Row::new(
            "5 `pueue log --full`, served by pueued (read_local_logs: false)",
            remote_rate,
            "MiB/s",
            Goal::None,
        ),
        Row::new(
            "5 pueued peak RSS growth serving it",
            growth,
            "MiB",
            Goal::None,
        ),
    ])
}

fn time_pueue_log(mut cmd: Command, id: &str) -> Result<Duration> {
    cmd.args(["log", "--full", id]);
    time_to_devnull(cmd, "pueue log")
}
