//! The seven scenarios of the benchmark, one module each, and what they share: the jobd
//! (and pueued) under test, the run's size (full or `--quick`) and small helpers.

pub mod cli_start;
pub mod compressed_logs;
pub mod end_visible;
pub mod followers;
pub mod logs_read;
pub mod rpc_start;
pub mod throughput;
pub mod write_path;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use proto::v1 as pb;

use crate::floor::{self, Floor, Setup};
use crate::jobd::Jobd;
use crate::pueue::Pueued;
use crate::report::Row;
use crate::rpc::{self, Client};

pub const MIB: u64 = 1024 * 1024;

/// What every scenario runs against.
pub struct Ctx {
    pub jobd: Jobd,
    pub pueue: Option<Pueued>,
    pub quick: bool,
}

impl Ctx {
    /// The full-run or the `--quick` value of a parameter.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    pub async fn client(&self) -> Result<Client> {
        rpc::connect(&self.jobd.target()).await
    }
}

/// The floor of a start of `true` that jobd runs with `isolation`: the namespaces its
/// job gets, a cgroup of its own where jobd has cgroups and, with `record`, job folders on
/// the disk of jobd's state dir and records as long as jobd's.
pub struct StartFloor {
    pub floor: Floor,
    setup: Setup,
    _folders: Option<tempfile::TempDir>,
}

impl StartFloor {
    pub async fn new(
        ctx: &Ctx,
        c: &mut Client,
        isolation: Option<pb::Isolation>,
        record: bool,
    ) -> Result<StartFloor> {
        let (id, got) = rpc::probe(c, isolation).await?;
        let setup = floor::setup_for(&got);
        let folders = if record {
            let record = ctx.jobd.job_dir(&id).join("job.json");
            let len = std::fs::metadata(&record)
                .with_context(|| format!("cannot stat {}", record.display()))?
                .len() as usize;
            let dir = tempfile::Builder::new()
                .prefix("floor.")
                .tempdir_in(ctx.jobd.scratch())?;
            Some((dir, len))
        } else {
            None
        };
        let cgroup = floor::cgroup::of_jobd(ctx.jobd.pid())
            .context("cannot tell whether jobd has cgroups")?;
        let floor = Floor::new(
            setup,
            folders.as_ref().map(|(dir, len)| (dir.path(), *len)),
            cgroup.as_deref(),
        )
        .context("cannot set up the floor")?;
        Ok(StartFloor {
            floor,
            setup,
            _folders: folders.map(|(dir, _)| dir),
        })
    }

    /// What the floor's starts do, in words, for the bench's output.
    pub fn describe(&self) -> String {
        let mut what = self.setup.describe();
        if self.floor.has_cgroups() {
            what.push_str(", a cgroup each");
        }
        what
    }
}

/// Runs blocking work (child processes, short sleeps) without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs scenario `n`.
pub async fn run(n: u8, ctx: &Ctx) -> Result<Vec<Row>> {
    match n {
        1 => cli_start::run(ctx).await,
        2 => rpc_start::run(ctx).await,
        3 => end_visible::run(ctx).await,
        4 => throughput::run(ctx).await,
        5 => logs_read::run(ctx).await,
        6 => followers::run(ctx).await,
        7 => write_path::run(ctx).await,
        8 => compressed_logs::run(ctx).await,
        _ => bail!("there is no scenario {n}"),
    }
}

/// The default order: scenario 6 last, because 1,000 followers leave jobd with a much
/// larger RSS (glibc keeps the freed memory), and every later start then pays for it
/// (jobs are started with a fork-style `clone3`, whose cost grows with jobd's memory).
pub const ALL: [u8; 7] = [1, 2, 3, 4, 5, 7, 6];

/// Scenarios run only when asked for with `--only`: 8 measures a choice (jobc asks for no
/// compression), not a target.
pub const OPTIONAL: [u8; 1] = [8];

/// A one-line title for scenario `n`, used when it fails before producing rows.
pub fn title(n: u8) -> &'static str {
    match n {
        1 => "1 jobc start true",
        2 => "2 Start RPC latency",
        3 => "3 job end visible in status",
        4 => "4 starts per second",
        5 => "5 jobc logs --raw",
        6 => "6 1000 followers",
        7 => "7 200 MiB of lines",
        8 => "8 log streams with and without gzip",
        _ => "unknown scenario",
    }
}

/// The most a scenario may take before it is abandoned and reported as failed.
pub fn time_limit(n: u8, quick: bool) -> Duration {
    let full = match n {
        6 | 8 => 150,
        5 => 90,
        _ => 60,
    };
    Duration::from_secs(if quick { full / 3 } else { full })
}

/// Waits until no job of this jobd is running any more, so that capture threads and
/// pending record writes of one scenario do not slow down the next.
pub async fn wait_all_ended(c: &mut Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // One page of running jobs: any at all means not yet.
        let jobs = c
            .list(pb::ListRequest {
                state: pb::ListStateFilter::Running as i32,
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        let running = jobs.iter().filter(|j| !rpc::has_ended(j)).count();
        if running == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{running} jobs still run after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Times `n` calls of `f` after `warmup` untimed ones.
pub fn time_each(
    warmup: usize,
    n: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<Duration>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// Runs `cmd` with its output to /dev/null; returns how long it took, or its error.
pub fn time_to_devnull(mut cmd: Command, what: &str) -> Result<Duration> {
    let devnull = std::fs::File::create("/dev/null")?;
    let t = Instant::now();
    let out = cmd.stdout(devnull).stderr(Stdio::piped()).output()?;
    let took = t.elapsed();
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}
