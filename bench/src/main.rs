//! `jobworker-bench`: measures the real `jobd` and `jobc` (release builds) against bare
//! baselines and, when it is installed, against pueue, and prints a table of figures,
//! baselines, ratios and targets. Run it as
//! `cargo run --release -p bench -- [--quick] [--install-pueue] [--only 1,5]`, or with
//! `--compare OTHER_BUILD_DIR` to measure this build against another one (`compare.rs`).
//!
//! Everything it starts (jobd, pueued, jobs) runs on 127.0.0.1 with state in scratch
//! folders; daemons are stopped by pid and the folders deleted at the end, also after a
//! failure or Ctrl-C.

mod binaries;
mod compare;
mod floor;
mod jobd;
mod procfs;
mod pueue;
mod relay;
mod report;
mod rpc;
mod scenarios;
mod stats;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::report::Row;
use crate::scenarios::Ctx;

const USAGE: &str = "usage: jobworker-bench [--quick] [--install-pueue] [--only N,N,...]
                       [--compare OTHER_BUILD_DIR [--rounds N]]

  --quick          smaller runs (under a minute in all)
  --install-pueue  cargo install pueue --locked first, if pueue is missing
  --only N,...     run only these scenarios (1-7; 8, gzip on log streams, only so)
  --compare DIR    run them against this build and against the jobd and jobc in DIR
                   (another build's target/release), interleaved, and print both with
                   their ratio
  --rounds N       rounds of --compare, each build once a round in ABBA order [default: 4]";

struct Options {
    quick: bool,
    install_pueue: bool,
    only: Vec<u8>,
    compare: Option<std::path::PathBuf>,
    rounds: usize,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        quick: false,
        install_pueue: false,
        only: scenarios::ALL.to_vec(),
        compare: None,
        rounds: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--install-pueue" => opts.install_pueue = true,
            "--only" => {
                let list = args.next().context("--only needs a list such as 1,5")?;
                opts.only = list
                    .split(',')
                    .map(|n| n.trim().parse::<u8>())
                    .collect::<Result<_, _>>()
                    .context("--only takes scenario numbers such as 1,5")?;
                let known = |n: &u8| scenarios::ALL.contains(n) || scenarios::OPTIONAL.contains(n);
                if let Some(bad) = opts.only.iter().find(|n| !known(n)) {
                    bail!("there is no scenario {bad}");
                }
            }
            "--compare" => {
                let dir = args.next().context("--compare needs a build's folder")?;
                opts.compare = Some(dir.into());
            }
            "--rounds" => {
                opts.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--rounds takes a number of rounds, at least 1")?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(floor::unary::CLIENT_FLAG) {
        return match floor::unary::client_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jobworker-bench {}: {e:#}", floor::unary::CLIENT_FLAG);
                ExitCode::FAILURE
            }
        };
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("jobworker-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options) -> Result<()> {
    report_load("before");
    if opts.install_pueue {
        binaries::install_pueue()?;
    }
    let bins = binaries::ensure_built()?;
    if let Some(dir) = &opts.compare {
        let other = binaries::Binaries::in_dir(dir)?;
        let compared = tokio::select! {
            done = compare::run(&bins, &other, &opts.only, opts.rounds, opts.quick) => done,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; cleaning up"),
        };
        report_load("after");
        return compared;
    }
    let ctx = Ctx {
        jobd: jobd::Jobd::start(&bins)?,
        pueue: start_pueue()?,
        quick: opts.quick,
    };
    println!(
        "jobd pid {} on {}; {} run",
        ctx.jobd.pid(),
        ctx.jobd.server(),
        if opts.quick { "quick" } else { "full" }
    );
    let rows = tokio::select! {
        rows = run_scenarios(&ctx, &opts.only) => rows,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; cleaning up"),
    };
    println!("\n{}", report::table(&report::in_scenario_order(rows)));
    report_load("after");
    drop(ctx);
    Ok(())
}

fn start_pueue() -> Result<Option<pueue::Pueued>> {
    if !binaries::pueue_available() {
        println!("pueue/pueued not on PATH: no pueue baselines (--install-pueue installs it)");
        return Ok(None);
    }
    Ok(Some(pueue::Pueued::start()?))
}

/// Says how busy the machine is while the benchmark is idle, naming the processes that
/// use CPU, because other load skews every figure on a small machine.
fn report_load(when: &str) {
    let (share, hogs) = procfs::busy(std::time::Duration::from_secs(1));
    let hogs: Vec<String> = hogs
        .iter()
        .map(|(name, cpus)| format!("{name} {:.0}%", cpus * 100.0))
        .collect();
    println!(
        "machine {when} the run: {:.0}% of all CPUs busy over 1 s (load average {}){}",
        share * 100.0,
        procfs::loadavg(),
        if hogs.is_empty() {
            String::new()
        } else {
            format!("; busy: {}", hogs.join(", "))
        }
    );
    if share > 0.1 {
        println!("note: other work is running; figures will be noisy");
    }
}

pub(crate) async fn run_scenarios(ctx: &Ctx, only: &[u8]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in only {
        println!(
            "\n== scenario {} (load {})",
            scenarios::title(n),
            procfs::loadavg()
        );
        let limit = scenarios::time_limit(n, ctx.quick);
        let started = std::time::Instant::now();
        match tokio::time::timeout(limit, scenarios::run(n, ctx)).await {
            Ok(Ok(r)) => rows.extend(r),
            Ok(Err(e)) => {
                eprintln!("!!! scenario {n} FAILED: {e:#}");
                rows.push(Row::failed(scenarios::title(n), format!("failed: {e:#}")));
            }
            Err(_) => {
                eprintln!("!!! scenario {n} TIMED OUT after {limit:?}");
                rows.push(Row::failed(
                    scenarios::title(n),
                    format!("timed out after {limit:?}"),
                ));
            }
        }
        println!("  ({:.1} s)", started.elapsed().as_secs_f64());
    }
    rows
}
