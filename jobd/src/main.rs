//! The `jobd` binary: parse the command line, set up logging, run.

use anyhow::Context;
use clap::Parser;
use jobd::cli::{self, Cli, Command};
use tokio::signal::unix::{signal, SignalKind};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("jobd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve(Default::default())) {
        Command::Pki(command) => cli::pki(command),
        Command::Serve(args) => {
            init_logging();
            tune_malloc();
            // Blocking threads do the log reads that must wait for the disk; their buffers
            // are bounded by the worker's read budget, and more threads would only add stacks.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(64)
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(*args))
        }
    }
}

async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    // Handled from the start: a signal that comes while jobd recovers its jobs or before
    // it says where it listens is acted on once it serves, never the default death.
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let address_file = args.address_file.clone();
    let config = cli::server_config(args)?;
    let listen = config.listen.clone();
    let mut server = jobd::server::Server::open(config)?;
    let listeners = jobd::server::bind(&listen).await?;
    if let Some(addr) = server.bind_metrics().await? {
        tracing::info!("metrics on {addr}");
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot read the bound address")?;
    for addr in &addrs {
        tracing::info!(%addr, "listening");
    }
    if let Some(path) = &address_file {
        cli::write_address_file(path, &addrs)?;
    }
    // SIGHUP: new TLS material for new handshakes, the audit log reopened. A failed reload
    // is logged and changes nothing.
    let reloader = server.reloader();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload();
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        jobd::notify::stopping().unwrap_or_else(
            |e| tracing::warn!(error = %e, "cannot tell systemd that jobd is stopping"),
        );
    };
    // Under systemd (Type=notify): the listeners are bound, so connections are taken from
    // now on.
    jobd::notify::ready()
        .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot tell systemd that jobd is ready"));
    server.serve(listeners, shutdown).await
}

/// Log streaming allocates and frees many buffers of 64 KiB to 1 MiB on many threads.
/// By default glibc gives each thread its own arena, so a burst of readers leaves its
/// peak RSS behind in dozens of arenas; four arenas bound that. Buffers stay below the
/// (fixed) mmap threshold, so freed ones are reused from the heap instead of being
/// mapped, faulted in and unmapped for every batch, and an arena keeps up to 8 MiB of free
/// memory at its top rather than handing it back to the kernel after each batch (a
/// profile of a 200 MiB log read showed a quarter of jobd's time in page faults, page
/// clearing and `madvise`). Called before any thread exists.
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JOBD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
