//! Scenario 8 (not in the default run; `--only 8`): what gzip on a log stream costs and
//! saves. A finished job's 64 MiB of output, read whole by the in-process client once
//! asking for gzip responses (`accept_compressed`) and once not, interleaved, five rounds
//! each, for two kinds of text: `seq` (very compressible) and base64 of random bytes (a
//! quarter is saved at best). Per read: wall time, jobd's CPU time, this process's (the
//! client's) CPU time, and the bytes jobd wrote to the socket. jobc does not ask for gzip;
//! these figures are why.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tonic::codec::CompressionEncoding;

use super::{Ctx, MIB};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::rpc::{self, Client};
use crate::stats::median_f64;

const SIZE: u64 = 64 * MIB;

/// One read's figures.
#[derive(Default)]
struct Read {
    wall: Vec<f64>,
    jobd_cpu: Vec<f64>,
    client_cpu: Vec<f64>,
    wire: Vec<f64>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let rounds = ctx.pick(5, 2);
    let mut c = ctx.client().await?;
    let kinds = [
        ("seq", format!("seq 1 100000000 | head -c {SIZE}")),
        (
            "base64 of random",
            format!(
                "head -c {} /dev/urandom | base64 | head -c {SIZE}",
                SIZE / 4 * 3 + MIB
            ),
        ),
    ];
    let mut rows = Vec::new();
    for (kind, script) in kinds {
        let id = rpc::start(&mut c, rpc::argv(&["sh", "-c", &script]), None).await?;
        rpc::wait_ended(&mut c, &id, Duration::from_secs(120)).await?;
        // The end is in the status a moment before the last bytes are drained and synced.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut plain_client = ctx.client().await?;
        let mut gzip_client = ctx
            .client()
            .await?
            .accept_compressed(CompressionEncoding::Gzip);
        let (mut plain, mut gzip) = (Read::default(), Read::default());
        for _ in 0..rounds {
            read(ctx, &mut plain_client, &id, &mut plain).await?;
            read(ctx, &mut gzip_client, &id, &mut gzip).await?;
        }
        for (how, r) in [("identity", &mut plain), ("gzip", &mut gzip)] {
            println!(
                "  {kind}, {how} (medians of {rounds}): {:.3} s, jobd CPU {:.3} s, client CPU \
                 {:.3} s, {:.1} MiB on the wire",
                median_f64(&mut r.wall),
                median_f64(&mut r.jobd_cpu),
                median_f64(&mut r.client_cpu),
                median_f64(&mut r.wire) / MIB as f64
            );
        }
        let name = |what: &str| format!("8 {} MiB of {kind}: {what}", SIZE / MIB);
        rows.push(
            Row::new(
                name("read time with gzip"),
                median_f64(&mut gzip.wall),
                "s",
                Goal::None,
            )
            .baseline(Some(median_f64(&mut plain.wall))),
        );
        rows.push(
            Row::new(
                name("jobd CPU with gzip"),
                median_f64(&mut gzip.jobd_cpu),
                "s",
                Goal::None,
            )
            .baseline(Some(median_f64(&mut plain.jobd_cpu))),
        );
        rows.push(
            Row::new(
                name("bytes on the wire with gzip"),
                median_f64(&mut gzip.wire) / MIB as f64,
                "MiB",
                Goal::None,
            )
            .baseline(Some(median_f64(&mut plain.wire) / MIB as f64)),
        );
        rpc::remove(&mut c, &id).await?;
    }
    Ok(rows)
}

async fn read(ctx: &Ctx, c: &mut Client, id: &str, into: &mut Read) -> Result<()> {
    let pid = ctx.jobd.pid();
    let (jobd_cpu, client_cpu) = (
        procfs::cpu_time(pid)?,
        procfs::rusage_cpu(libc::RUSAGE_SELF),
    );
    let written = procfs::written_bytes(pid)?;
    let started = Instant::now();
    let bytes = rpc::count_output(c, id, false).await?;
    let wall = started.elapsed();
    ensure!(bytes == SIZE, "read {bytes} bytes of output, not {SIZE}");
    into.wall.push(wall.as_secs_f64());
    into.jobd_cpu
        .push((procfs::cpu_time(pid)? - jobd_cpu).as_secs_f64());
    into.client_cpu
        .push((procfs::rusage_cpu(libc::RUSAGE_SELF) - client_cpu).as_secs_f64());
    into.wire
        .push((procfs::written_bytes(pid)? - written) as f64);
    Ok(())
}
