//! The command line: global connection flags (also read from `JOBC_*` variables) and one
//! subcommand per RPC. With no flags at all, jobc talks to a development jobd on this
//! machine, using the PKI that jobd created in its default state dir.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::Isolation;

use crate::client::Target;
use crate::contexts::Context;

/// The help heading of the connection flags.
pub const CONNECTION_HEADING: &str = "Connection options";

#[derive(Debug, Parser)]
#[command(
    name = "jobc",
    version,
    about = "Run and watch jobs on a jobworker server"
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Under a heading of their own: they are the same in every subcommand, and listed among a
/// subcommand's flags they would hide the few that are its own.
#[derive(Debug, Args)]
#[command(next_help_heading = CONNECTION_HEADING)]
pub struct ConnArgs {
    /// A context of the contexts file (`jobc context ls`): its server and certificates,
    /// under the flags given here [default: the file's current context].
    #[arg(long, global = true, env = "JOBC_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Server address [default: localhost:50051].
    #[arg(long, global = true, env = "JOBC_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// CA certificate that the server's certificate must chain to.
    #[arg(long, global = true, env = "JOBC_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate; its CN is your username, its O values your roles.
    #[arg(long, global = true, env = "JOBC_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of your client certificate.
    #[arg(long, global = true, env = "JOBC_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long connecting and the TLS handshake may take, e.g. 10s or 500ms [default: 10s].
    #[arg(long, global = true, env = "JOBC_CONNECT_TIMEOUT", value_name = "DURATION",
          value_parser = parse_timeout)]
    pub connect_timeout: Option<std::time::Duration>,
}

/// A duration with a unit (`10s`, `500ms`), or bare seconds; never zero.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(d)
}

impl ConnArgs {
    /// Fills what was not given from the development PKI of a local jobd (as admin).
    pub fn target(&self) -> Target {
        self.target_in(&Context::default())
            .expect("no context, so no context setting to refuse")
    }

    /// Each setting from its flag, else from `context`, else the development PKI of a
    /// local jobd (as admin).
    pub fn target_in(&self, context: &Context) -> Result<Target, String> {
        let pki = common::default_state_dir().join("pki");
        let timeout = match &context.connect_timeout {
            Some(text) => Some(parse_timeout(text).map_err(|e| format!("connect_timeout: {e}"))?),
            None => None,
        };
        Ok(Target {
            server: self
                .server
                .clone()
                .or_else(|| context.server.clone())
                .unwrap_or_else(|| "localhost:50051".into()),
            ca: self
                .ca
                .clone()
                .or_else(|| context.ca.clone())
                .unwrap_or_else(|| pki.join("ca.pem")),
            cert: self
                .cert
                .clone()
                .or_else(|| context.cert.clone())
                .unwrap_or_else(|| pki.join("admin.pem")),
            key: self
                .key
                .clone()
                .or_else(|| context.key.clone())
                .unwrap_or_else(|| pki.join("admin-key.pem")),
            connect_timeout: self
                .connect_timeout
                .or(timeout)
                .unwrap_or(crate::client::DEFAULT_CONNECT_TIMEOUT),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a job and print its id.
    Start(Box<StartArgs>),
    /// Start a job, print its output as it comes and exit with its exit code (128+N for
    /// signal N). Ctrl-C sends SIGINT to the job, a second Ctrl-C stops it. The job runs
    /// in jobd: if jobc itself is killed, the job goes on.
    Run(Box<RunArgs>),
    /// Wait until jobs have ended; print each status and exit with the first non-zero
    /// exit code among them (128+N for signal N).
    Wait {
        /// Job ids, or unique prefixes of at least 4 characters.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Stop a job: SIGTERM, a grace period, then SIGKILL. Returns when it has ended.
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL [default: the server's, 5].
        #[arg(long, value_name = "SECONDS")]
        grace: Option<u32>,
    },
    /// Send a signal to a running job's program (or to all of its processes).
    Kill {
        id: String,
        /// The signal: a name (HUP, SIGUSR1, RTMIN+1) or a number [default: KILL].
        #[arg(short, long, value_name = "SIGNAL", value_parser = parse_signal, default_value = "KILL")]
        signal: i32,
        /// Send it to every process of the job, not only to its program.
        #[arg(short, long)]
        all: bool,
    },
    /// Print a job's status: running, finished (exit code: N) or stopped (signal: N).
    Status {
        id: String,
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Print a job's output as JSON lines, then follow it until the job ends.
    Logs {
        id: String,
        /// Write the job's bytes to stdout and stderr exactly as it wrote them.
        #[arg(long)]
        raw: bool,
        /// Follow the job until it ends (the default), resuming after a broken
        /// connection or a restart of the server.
        #[arg(short, long, overrides_with = "no_follow")]
        follow: bool,
        /// Stop after the output so far instead of following the job.
        #[arg(long)]
        no_follow: bool,
        /// Start with the last N lines of the output (stdout and stderr together).
        #[arg(long, value_name = "N", conflicts_with = "since")]
        tail: Option<u32>,
        /// Start with the output written at or after TIME (RFC 3339, e.g.
        /// 2026-12-03T10:00:00Z) or DURATION ago (e.g. 10m, 2h).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
    },
    /// Delete an ended job and its output.
    Rm { id: String },
    /// List your jobs (an admin sees everyone's), oldest first.
    List {
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Ask every context's server at once, each with its own settings; a CONTEXT
        /// column (`context` in JSON) says whose job it is, and each server that fails is
        /// named on stderr.
        #[arg(long)]
        all_contexts: bool,
        /// Only jobs that are running, or only those that ended.
        #[arg(long, value_enum)]
        state: Option<ListState>,
        /// Only this user's jobs (an admin may name anyone).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// List the contexts of the contexts file, or choose the current one.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Print each context's name and server; `*` marks the current one.
    Ls,
    /// Make NAME the current context.
    Use { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListState {
    Running,
    Ended,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the job and its output once it has ended (as `jobc rm`).
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub start: StartArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// CPU bandwidth in CPUs, e.g. 0.5.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 64M or 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids: Option<u64>,
    /// Read bandwidth limit for a block device, e.g. /dev/sda:10M.
    #[arg(long, value_name = "DEV:RATE", value_parser = parse_device_rate)]
    pub device_read_bps: Vec<(String, u64)>,
    /// Write bandwidth limit for a block device, e.g. /dev/sda:10M.
    #[arg(long, value_name = "DEV:RATE", value_parser = parse_device_rate)]
    pub device_write_bps: Vec<(String, u64)>,
    /// Namespaces to run in: a list of pid, mount, net, or all, or none
    /// [default: the server's, normally all].
    #[arg(long, value_name = "LIST", value_parser = parse_isolation)]
    pub isolate: Option<Isolation>,
    /// `host` shares the host's network instead of an isolated one with only loopback.
    #[arg(long, value_name = "MODE", value_parser = ["host", "isolated"])]
    pub network: Option<String>,
    /// Run as root instead of the server's job user (admins only, where the server allows).
    #[arg(long)]
    pub as_root: bool,
    /// Set a variable in the job's environment; KEY alone takes its value from yours.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Read variables from a file of KEY=VALUE lines, as `docker run --env-file` does.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// The absolute directory to start the job in [default: /].
    #[arg(short = 'w', long, value_name = "DIR", value_parser = parse_workdir)]
    pub workdir: Option<String>,
    /// Stop the job (as `jobc stop` does) once it has run this long, e.g. 90s or 2h
    /// [default: the server's, if any].
    #[arg(long, value_name = "DURATION", value_parser = parse_job_timeout)]
    pub timeout: Option<u64>,
    /// The program and its arguments (everything after CMD belongs to the job).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// An RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither a time (2026-12-03T10:00:00Z) nor a duration (10m)")
    })?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s:?} is too long ago"))
}

fn parse_signal(s: &str) -> Result<i32, String> {
    common::parse_signal(s).map_err(|e| e.to_string())
}

/// `KEY=VALUE`, or a `KEY` alone whose value [`crate::environment`] takes from jobc's own.
fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some(_) => common::env::parse_var(s).map(|_| ()),
        None => common::env::check_name(s),
    }
    .map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_workdir(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(s.to_string())
}

/// A whole number of seconds, with a unit (`90s`, `2h`, `1h30m`) or bare.
fn parse_job_timeout(s: &str) -> Result<u64, String> {
    let d = parse_timeout(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?}: a job's timeout is a whole number of seconds"
        ));
    }
    Ok(d.as_secs())
}

fn parse_isolation(s: &str) -> Result<Isolation, String> {
    Isolation::from_list(s).map_err(|e| e.to_string())
}

/// Parses `64M`, `2G`, `512K` or a plain byte count (binary units: K = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 4096, 512K, 64M, 2G)"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let value = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if value == 0 {
        return Err(format!("{s:?}: the size must be greater than zero"));
    }
    Ok(value)
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs (example: 0.5)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!(
            "{s:?}: the number of CPUs must be greater than zero"
        ));
    }
    Ok(v)
}

fn parse_device_rate(s: &str) -> Result<(String, u64), String> {
    let (dev, rate) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected DEVICE:RATE, e.g. /dev/sda:10M"))?;
    if dev.is_empty() {
        return Err(format!("{s:?}: the device is missing"));
    }
    Ok((dev.to_string(), parse_size(rate)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_lists_the_connection_flags_under_their_own_heading_last() {
        let mut cli = Cli::command();
        // Copies the global flags into every subcommand, as parsing does.
        cli.build();
        let names: Vec<String> = cli
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .filter(|name| name != "help")
            .collect();
        assert!(names.len() >= 8, "{names:?}");
        let heading = format!("\n{CONNECTION_HEADING}:\n");
        for name in names {
            let sub = cli.find_subcommand_mut(&name).expect("listed above");
            let own: Vec<String> = sub
                .get_arguments()
                .filter(|a| !a.is_global_set())
                .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                .collect();
            let help = sub.render_long_help().to_string();
            let at = help
                .find(&heading)
                .unwrap_or_else(|| panic!("{name}: no {CONNECTION_HEADING:?} heading:\n{help}"));
            let (before, after) = help.split_at(at);
            for flag in ["--server", "--ca", "--cert", "--key", "--connect-timeout"] {
                let listed = format!(" {flag} <");
                assert!(
                    after.contains(&listed),
                    "{name}: {flag} not under it:\n{help}"
                );
                assert!(
                    !before.contains(&listed),
                    "{name}: {flag} before it:\n{help}"
                );
            }
            assert!(own.contains(&"--help".to_string()), "{name}: {own:?}");
            for flag in own {
                assert!(
                    before.contains(&flag) && !after.contains(&format!(" {flag} ")),
                    "{name}: its own {flag} is not above the heading:\n{help}"
                );
            }
        }
    }

    #[test]
    fn isolate_takes_the_servers_namespace_names() {
        let asked = |list: &str| {
            let cli = Cli::try_parse_from(["jobc", "start", "--isolate", list, "true"])?;
            match cli.command {
                Command::Start(start) => Ok::<_, clap::Error>(start.isolate),
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(
            asked("pid,net").unwrap(),
            Isolation::from_list("pid,net").ok()
        );
        assert_eq!(asked("none").unwrap(), Some(Isolation::NONE));
        let err = asked("pid,user").unwrap_err().to_string();
        assert!(err.contains("unknown namespace \"user\""), "{err}");
    }

    #[test]
    fn job_options_parse_and_refuse_bad_values_before_connecting() {
        let start = |extra: &[&str]| {
            let argv = ["jobc", "start"].iter().chain(extra).chain(&["true"]);
            match Cli::try_parse_from(argv)?.command {
                Command::Start(start) => Ok::<_, clap::Error>(start),
                other => panic!("parsed as {other:?}"),
            }
        };
        let s = start(&[
            "-e",
            "A=1",
            "--env",
            "HOME",
            "-w",
            "/srv",
            "--timeout",
            "1h30m",
        ])
        .unwrap();
        assert_eq!(s.env, ["A=1", "HOME"]);
        assert_eq!(s.workdir.as_deref(), Some("/srv"));
        assert_eq!(s.timeout, Some(5400));
        assert_eq!(start(&["--timeout", "90"]).unwrap().timeout, Some(90));
        for (bad, says) in [
            (vec!["-e", "1A=x"], "is not valid"),
            (vec!["-e", "A B"], "is not valid"),
            (vec!["-w", "srv"], "not an absolute path"),
            (vec!["--timeout", "1.5s"], "whole number of seconds"),
            (vec!["--timeout", "0s"], "longer than zero"),
            (vec!["--timeout", "soon"], "soon"),
        ] {
            let err = start(&bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn run_takes_the_flags_of_start_and_its_own() {
        let cli = Cli::try_parse_from([
            "jobc", "run", "--rm", "--cpus", "1", "sh", "-c", "x", "--rm",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(run.rm);
        assert_eq!(run.start.cpus, Some(1.0));
        assert_eq!(run.start.command, ["sh", "-c", "x", "--rm"]);
    }

    #[test]
    fn logs_start_at_a_tail_or_a_time_but_not_both() {
        let logs = |extra: &[&str]| match Cli::try_parse_from(
            ["jobc", "logs"].iter().chain(extra).chain(&["ID"]),
        )?
        .command
        {
            Command::Logs {
                tail,
                since,
                follow,
                no_follow,
                ..
            } => Ok::<_, clap::Error>((tail, since, follow, no_follow)),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(logs(&["--tail", "5"]).unwrap().0, Some(5));
        let t = logs(&["--since", "2026-12-03T10:00:00Z"])
            .unwrap()
            .1
            .unwrap();
        assert_eq!(
            humantime::format_rfc3339(t).to_string(),
            "2026-12-03T10:00:00Z"
        );
        let ago = logs(&["--since", "10m"]).unwrap().1.unwrap();
        let elapsed = std::time::SystemTime::now().duration_since(ago).unwrap();
        assert!((599..=601).contains(&elapsed.as_secs()), "{elapsed:?}");
        assert!(logs(&["--tail", "5", "--since", "10m"]).is_err());
        assert!(logs(&["--since", "soon"]).is_err());
        assert!(logs(&["--tail", "-1"]).is_err());
        let (_, _, follow, no_follow) = logs(&["--no-follow", "-f"]).unwrap();
        assert!(follow && !no_follow);
    }

    #[test]
    fn kill_takes_signal_names_and_numbers() {
        let kill = |extra: &[&str]| match Cli::try_parse_from(
            ["jobc", "kill"].iter().chain(extra).chain(&["ID"]),
        )?
        .command
        {
            Command::Kill { signal, all, .. } => Ok::<_, clap::Error>((signal, all)),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(kill(&[]).unwrap(), (9, false));
        assert_eq!(kill(&["-s", "HUP"]).unwrap(), (1, false));
        assert_eq!(kill(&["-s", "SIGUSR1", "--all"]).unwrap(), (10, true));
        assert_eq!(kill(&["--signal", "15", "-a"]).unwrap(), (15, true));
        let err = kill(&["-s", "FOO"]).unwrap_err().to_string();
        assert!(err.contains("unknown signal"), "{err}");
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        for bad in ["0", "-1", "1.5M", "M", "12X", "99999999999T", ""] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cpus_must_be_positive_and_finite() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn arguments_after_the_command_belong_to_the_job() {
        let cli = Cli::try_parse_from(["jobc", "start", "ls", "-la", "--cpus", "1"]).unwrap();
        let Command::Start(start) = cli.command else {
            panic!()
        };
        assert_eq!(start.command, ["ls", "-la", "--cpus", "1"]);
        assert_eq!(start.cpus, None);

        let cli =
            Cli::try_parse_from(["jobc", "start", "--cpus", "0.5", "--", "sh", "-c", "x"]).unwrap();
        let Command::Start(start) = cli.command else {
            panic!()
        };
        assert_eq!(start.command, ["sh", "-c", "x"]);
        assert_eq!(start.cpus, Some(0.5));

        let cli = Cli::try_parse_from(["jobc", "start", "--device-write-bps", "/dev/sda:1M", "dd"])
            .unwrap();
        let Command::Start(start) = cli.command else {
            panic!()
        };
        assert_eq!(start.device_write_bps, [("/dev/sda".to_string(), 1 << 20)]);
    }
}
