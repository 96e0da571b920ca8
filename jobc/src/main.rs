//! The `jobc` binary: parse, connect, call, print. Errors are one line on stderr.

use std::io;

use clap::{CommandFactory, Parser};
use jobc::args::{Cli, Command, ContextCommand, Format, StartArgs};
use jobc::client;
use jobc::contexts::Contexts;
use jobc::errors::{self, Failure, EXIT_INTERRUPTED, EXIT_REQUEST, EXIT_USAGE};
use jobc::follow::Connection;
use jobc::listing;
use jobc::output::{self, print, LogSink};
use jobc::run;
use proto::v1 as pb;

fn main() {
    tune_malloc();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => exit(Failure::new(EXIT_REQUEST, format!("cannot start: {e}"))),
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(failure) => exit(failure),
    }
}

/// A log stream arrives as messages of up to 1 MiB, each in a fresh buffer. glibc maps
/// buffers that large and unmaps them when freed, and trims its heap after every batch, so
/// a 200 MiB `logs --raw` spent a sixth of jobc's time faulting pages in and clearing
/// them. A fixed 4 MiB mmap threshold and 8 MiB of free memory kept at the top of the heap
/// let freed buffers be reused instead.
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

/// Prints the failure as one line: its text may quote the server, which quotes callers,
/// so control characters are shown escaped rather than sent to the terminal.
fn exit(failure: Failure) -> ! {
    if !failure.message.is_empty() {
        eprintln!("jobc: {}", common::inert::Inert(&failure.message));
    }
    std::process::exit(failure.exit_code)
}

/// Runs the command; returns jobc's exit code.
async fn run(cli: Cli) -> Result<i32, Failure> {
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "jobc", &mut io::stdout());
        return Ok(0);
    }
    let usage = |e: String| Failure::new(EXIT_USAGE, e);
    let contexts = Contexts::load(&Contexts::default_path()).map_err(usage)?;
    match &cli.command {
        Command::Context(command) => return context(&contexts, command).map(|()| 0),
        Command::List {
            all_contexts: true,
            output,
            state,
            owner,
        } => {
            let request = listing::request(*state, owner.clone());
            return listing::list_all(&cli.conn, &contexts, request, *output)
                .await
                .map(|()| 0);
        }
        _ => {}
    }
    let (_, context) = contexts
        .chosen(cli.conn.context.as_deref())
        .map_err(usage)?
        .unwrap_or_default();
    let target = cli.conn.target_in(&context).map_err(usage)?;
    match connected(cli, target.clone()).await {
        Err(failure) if failure.unexplained => match client::diagnose(&target).await {
            Some(reason) => Err(Failure::new(failure.exit_code, reason.to_string())),
            None => Err(failure),
        },
        other => other,
    }
}

/// `jobc context ls` and `use`, which only read and write the contexts file.
fn context(contexts: &Contexts, command: &ContextCommand) -> Result<(), Failure> {
    match command {
        ContextCommand::Ls => {
            let all = contexts.all().map_err(|e| Failure::new(EXIT_USAGE, e))?;
            let rows: Vec<(bool, &str, &str)> = all
                .iter()
                .map(|(name, context)| {
                    let current = contexts.current() == Some(name.as_str());
                    let server = context.server.as_deref().unwrap_or("localhost:50051");
                    (current, name.as_str(), server)
                })
                .collect();
            print(&output::contexts_table(&rows))
        }
        ContextCommand::Use { name } => contexts
            .set_current(name)
            .map_err(|e| Failure::new(EXIT_USAGE, e)),
    }
}

/// The commands that talk to one server.
async fn connected(cli: Cli, target: client::Target) -> Result<i32, Failure> {
    // A start's own mistakes (an env file that cannot be read) show before connecting.
    let start = match &cli.command {
        Command::Start(args) => Some(start_request(args)?),
        Command::Run(args) => Some(start_request(&args.start).map_err(no_status)?),
        _ => None,
    };
    let connected = client::connect(&target).await;
    if let Command::Run(_) | Command::Wait { .. } = cli.command {
        // Their exit code is the job's: a failure of jobc's own must not look like one.
        let mut conn = Connection {
            target: target.clone(),
            client: connected.map_err(|e| no_status(e.into()))?,
        };
        let code = match cli.command {
            Command::Run(args) => {
                let request = start.expect("made above for a run");
                run::run(&mut conn, request, args.rm).await
            }
            Command::Wait { ids } => run::wait(&conn, &ids).await,
            _ => unreachable!("only run and wait get here"),
        }
        .map_err(no_status)?;
        return Ok(code);
    }
    let client = connected?;
    call(cli.command, start, Connection { target, client })
        .await
        .map(|()| 0)
}

/// The commands of one call (or a few: a list's pages), whose success is exit code 0.
async fn call(
    command: Command,
    start: Option<pb::StartRequest>,
    conn: Connection,
) -> Result<(), Failure> {
    let server = conn.target.server.clone();
    let status = |s: tonic::Status| errors::from_status(&s, &server);
    let mut client = conn.client.clone();
    match command {
        Command::Start(_) => {
            let request = start.expect("made above for a start");
            let reply = client.start(request).await.map_err(status)?;
            print(&format!("{}\n", reply.into_inner().job_id))
        }
        Command::Kill { id, signal, all } => {
            client
                .signal(pb::SignalRequest {
                    job_id: id,
                    signal: signal.to_string(),
                    all_processes: all,
                })
                .await
                .map_err(status)?;
            Ok(())
        }
        Command::Stop { id, grace } => {
            client
                .stop(pb::StopRequest {
                    job_id: id,
                    grace_period: grace.map(|s| proto::Duration {
                        seconds: s.into(),
                        nanos: 0,
                    }),
                })
                .await
                .map_err(status)?;
            Ok(())
        }
        Command::Rm { id } => {
            client
                .remove(pb::RemoveRequest { job_id: id })
                .await
                .map_err(status)?;
            Ok(())
        }
        Command::Status { id, output } => {
            let reply = client
                .status(pb::StatusRequest { job_id: id })
                .await
                .map_err(status)?;
            let s = reply.into_inner().status.unwrap_or_default();
            match output {
                Format::Text => print(&output::status_text(&s)),
                Format::Json => print(&format!("{}\n", output::status_to_json(&s))),
            }
        }
        Command::List {
            output,
            state,
            owner,
            all_contexts: _,
        } => {
            let request = listing::request(state, owner);
            listing::list(&mut client, &server, request, output).await
        }
        Command::Logs {
            id,
            raw,
            follow: _,
            no_follow,
            tail,
            since,
        } => {
            let start = match (tail, since) {
                (Some(n), _) => Some(pb::logs_request::Start::TailLines(n)),
                (None, Some(t)) => Some(pb::logs_request::Start::Since(t.into())),
                (None, None) => None,
            };
            let request = pb::LogsRequest {
                job_id: id,
                follow: !no_follow,
                start,
            };
            let mut conn = conn;
            let mut sink = LogSink::new(raw);
            tokio::select! {
                result = conn.logs(request, &mut sink, !no_follow) => result,
                _ = tokio::signal::ctrl_c() => Err(Failure::new(EXIT_INTERRUPTED, "")),
            }
        }
        Command::Run(_) | Command::Wait { .. } => unreachable!("handled above"),
        Command::Context(_) => unreachable!("handled before connecting"),
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
}

/// A failure of `run` or `wait`, whose exit codes are the job's.
fn no_status(failure: Failure) -> Failure {
    Failure {
        exit_code: if failure.exit_code == 0 {
            0
        } else {
            run::EXIT_NO_STATUS
        },
        ..failure
    }
}

fn start_request(args: &StartArgs) -> Result<pb::StartRequest, Failure> {
    let env =
        jobc::environment::job_env(&args.env, &args.env_file, |name| std::env::var(name).ok())
            .map_err(|e| Failure::new(EXIT_REQUEST, e))?;
    let rates = |v: &[(String, u64)]| {
        v.iter()
            .map(|(device, bytes_per_second)| pb::DeviceRate {
                device: device.clone(),
                bytes_per_second: *bytes_per_second,
            })
            .collect()
    };
    Ok(pb::StartRequest {
        argv: args.command.clone(),
        limits: Some(pb::Limits {
            cpus: args.cpus,
            memory_bytes: args.memory,
            pids: args.pids,
            device_read_bps: rates(&args.device_read_bps),
            device_write_bps: rates(&args.device_write_bps),
        }),
        isolation: args.isolate.map(|i| pb::Isolation {
            pid: i.pid,
            mount: i.mount,
            net: i.net,
        }),
        as_root: args.as_root,
        host_network: args.network.as_deref() == Some("host"),
        env,
        working_dir: args.workdir.clone().unwrap_or_default(),
        timeout: args.timeout.map(|s| proto::Duration {
            seconds: s as i64,
            nanos: 0,
        }),
    })
}
