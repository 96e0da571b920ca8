//! `jobd`'s command line and configuration file, merged into a [`ServerConfig`].
//!
//! Precedence: command-line flags, then the config file, then built-in defaults. The
//! defaults make `jobd serve` alone a working development server: loopback only, state in
//! the default state dir, and a development PKI created there if no TLS files are given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::identity::Role;
use crate::pki::{self, PkiOptions, User};
use crate::revoke::Revocation;
use crate::server::{self, Listen, ServerConfig, TlsFiles};

#[derive(Debug, Parser)]
#[command(
    name = "jobd",
    version,
    about = "jobworker server: runs jobs for remote users over mutual TLS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the job API (the default command).
    Serve(Box<ServeArgs>),
    /// Manage a small certificate authority for jobd and its clients.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An address to listen on, IP:PORT or [IPv6]:PORT; repeat it for more
    /// [default: 127.0.0.1:50051 and [::1]:50051, or only the first where there is no IPv6].
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Where job records and output live [default: /var/lib/jobworker as root].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// CA certificate that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Certificate revocation list (PEM, from `jobd pki revoke`): the client certificates
    /// it names are refused at the handshake [default: crl.pem of the development PKI, if
    /// there is one]. SIGHUP reloads it with the certificate, key and CA.
    #[arg(long, value_name = "FILE")]
    pub crl: Option<PathBuf>,
    /// The audit log: one JSON line per request (who, from where, what, the outcome)
    /// [default: audit.log in the state dir]. SIGHUP reopens it, for rotation.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a stop does not say [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u64>,
    /// Resource control: auto (use cgroup v2 if it has the cpu, io, memory and pids
    /// controllers, else run without limits), required (refuse to start without), off.
    #[arg(long, value_name = "MODE")]
    pub cgroups: Option<worker::CgroupMode>,
    /// The cgroup (a path under the cgroup2 mount) to create jobd's subtree in
    /// [default: the cgroup jobd runs in].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// How long ended jobs and their output are kept, e.g. 7d or 12h [default: forever].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// The uids (FIRST-LAST) that give each user's jobs a uid and gid of their own
    /// [default: 61184-65519, systemd's range for dynamic users].
    #[arg(long, value_name = "FIRST-LAST")]
    pub job_uid_range: Option<worker::UidRange>,
    /// Once listening, write the bound addresses (HOST:PORT and a newline each, in the order
    /// of --listen) to FILE, replaced atomically: how a script or a test learns the port of
    /// `--listen 127.0.0.1:0`.
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464) [default: no
    /// metrics endpoint]. Plain HTTP with no authentication: bind it to loopback or a
    /// monitoring network.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Writes `addrs`, one a line, to `path` through a temporary file in the same folder and a
/// rename, so that a reader polling for the file never sees it half written.
pub fn write_address_file(path: &std::path::Path, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("--address-file {}: not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            anyhow::anyhow!("cannot write the address file {}: {e}", path.display())
        })
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA, a server certificate and client certificates.
    Init {
        /// Folder to write the certificates and keys to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A client to issue a certificate for, as NAME:ROLE[,ROLE] (roles: admin, user).
        /// Default: admin:admin, alice:user, bob:user.
        #[arg(long = "user", value_name = "NAME:ROLES")]
        users: Vec<User>,
        /// An extra DNS name or IP address for the server certificate.
        #[arg(long = "san", value_name = "HOST")]
        sans: Vec<String>,
        /// Validity of every certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing PKI in the folder.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate from an existing CA (ca.pem and ca-key.pem in DIR).
    AddUser {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "NAME:ROLES")]
        user: User,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace the user's existing certificate and key.
        #[arg(long)]
        force: bool,
    },
    /// Revoke client certificates: add them to the CRL (crl.pem in DIR) signed by the CA.
    /// Given nothing to revoke, sign the list again with a later expiry.
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The user whose certificate (NAME.pem in DIR) to revoke; repeatable.
        #[arg(long = "user", value_name = "NAME")]
        users: Vec<String>,
        /// A certificate's serial number (hex, as `openssl x509 -serial` and the audit
        /// log show it); repeatable.
        #[arg(long = "serial", value_name = "HEX", value_parser = crate::revoke::parse_serial)]
        serials: Vec<Vec<u8>>,
        /// Days until the CRL expires (its nextUpdate): sign it again before then.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

/// `listen` in the config file: one address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "an address (\"IP:PORT\") or a list of addresses"
)]
enum FileListen {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

/// The config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<FileListen>,
    state_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    grace_seconds: Option<u64>,
    cgroups: Option<String>,
    cgroup_root: Option<PathBuf>,
    default_cpus: Option<f64>,
    default_memory_bytes: Option<u64>,
    default_pids: Option<u64>,
    max_cpus: Option<f64>,
    max_memory_bytes: Option<u64>,
    max_pids: Option<u64>,
    max_device_bps: Option<u64>,
    retention: Option<String>,
    max_output_bytes: Option<u64>,
    isolation: Option<Vec<String>>,
    job_uid_range: Option<String>,
    /// Replaced by `job_uid_range`; refused with a message saying so.
    job_user: Option<String>,
    allow_root_jobs: Option<bool>,
    weaker_isolation_roles: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_log_streams: Option<usize>,
    max_running_jobs: Option<usize>,
    max_argv_bytes: Option<usize>,
    max_running_jobs_per_user: Option<usize>,
    max_kept_jobs_per_user: Option<usize>,
    list_page_size: Option<usize>,
    max_list_page_size: Option<usize>,
    max_handshakes_per_address: Option<usize>,
    handshake_timeout: Option<String>,
    /// KEY=VALUE variables every job gets, over the default PATH.
    job_env: Option<Vec<String>>,
    default_timeout: Option<String>,
    max_timeout: Option<String>,
    metrics_listen: Option<SocketAddr>,
}

/// Merges flags, file and defaults; creates the development PKI when no TLS files are set.
pub fn server_config(args: ServeArgs) -> anyhow::Result<ServerConfig> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let listen = match (args.listen, file.listen) {
        (flags, _) if !flags.is_empty() => Listen::from_addrs(flags),
        (_, Some(FileListen::One(addr))) => Listen::from(addr),
        (_, Some(FileListen::Many(addrs))) if addrs.is_empty() => {
            anyhow::bail!("listen in the config file is an empty list: give at least one address")
        }
        (_, Some(FileListen::Many(addrs))) => Listen::from_addrs(addrs),
        (_, None) => Listen::localhost(),
    };
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(common::default_state_dir);
    let tls = match (
        args.ca.or(file.ca),
        args.cert.or(file.cert),
        args.key.or(file.key),
    ) {
        (Some(ca), Some(cert), Some(key)) => TlsFiles {
            ca,
            cert,
            key,
            crl: None,
        },
        (None, None, None) => TlsFiles::in_dir(&server::ensure_dev_pki(&state_dir)?),
        _ => anyhow::bail!(
            "give --ca, --cert and --key together, or none of them for a development PKI"
        ),
    };
    let mut tls = tls;
    if let Some(crl) = args.crl.or(file.crl) {
        tls.crl = Some(crl);
    }
    let audit_log = args.audit_log.or(file.audit_log);
    let mut config = ServerConfig::new(listen, state_dir, tls);
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if audit_log.is_some() {
        config.audit_log = audit_log;
    }
    if let Some(s) = args.grace.or(file.grace_seconds) {
        config.worker.default_grace = Duration::from_secs(s);
    }
    let file_mode = file
        .cgroups
        .as_deref()
        .map(str::parse::<worker::CgroupMode>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("cgroups in the config file: {e}"))?;
    if let Some(mode) = args.cgroups.or(file_mode) {
        config.worker.cgroups = mode;
    }
    config.worker.cgroup_root = args.cgroup_root.or(file.cgroup_root);
    config.worker.limits = worker::LimitPolicy {
        default_cpus: file.default_cpus,
        default_memory_bytes: file.default_memory_bytes,
        default_pids: file.default_pids,
        max_cpus: file.max_cpus,
        max_memory_bytes: file.max_memory_bytes,
        max_pids: file.max_pids,
        max_device_bps: file.max_device_bps,
    };
    let file_retention = file_duration("retention", &file.retention)?;
    config.worker.retention = args.retention.or(file_retention);
    config.worker.max_output_bytes = file.max_output_bytes;
    if let Some(list) = &file.isolation {
        config.worker.isolation = worker::Isolation::from_names(list.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("isolation in the config file: {e}"))?;
    }
    if file.job_user.is_some() {
        anyhow::bail!(
            "job_user in the config file is no longer supported: each user's jobs run under a \
             uid of their own from job_uid_range"
        );
    }
    let file_range = file
        .job_uid_range
        .as_deref()
        .map(str::parse::<worker::UidRange>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("job_uid_range in the config file: {e}"))?;
    if let Some(range) = args.job_uid_range.or(file_range) {
        config.worker.job_uids = Some(range);
    }
    config.worker.allow_root = file.allow_root_jobs.unwrap_or(false);
    for var in file.job_env.iter().flatten() {
        common::env::parse_var(var)
            .map_err(|e| anyhow::anyhow!("job_env in the config file: {e}"))?;
        config.worker.env.push(var.clone());
    }
    config.worker.default_timeout = file_duration("default_timeout", &file.default_timeout)?;
    config.worker.max_timeout = file_duration("max_timeout", &file.max_timeout)?;
    if let (Some(default), Some(max)) = (config.worker.default_timeout, config.worker.max_timeout) {
        anyhow::ensure!(
            default <= max,
            "default_timeout in the config file ({}) is longer than max_timeout ({})",
            humantime::format_duration(default),
            humantime::format_duration(max)
        );
    }
    if let Some(roles) = &file.weaker_isolation_roles {
        config.service.weaker_isolation_roles = roles
            .iter()
            .map(|r| {
                Role::parse(r).ok_or_else(|| {
                    anyhow::anyhow!(
                        "weaker_isolation_roles in the config file: unknown role {r:?} (admin, user)"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    // The defaults themselves must pass the policy (and its maxima).
    config
        .worker
        .limits
        .resolve(&worker::Limits::default())
        .map_err(|e| anyhow::anyhow!("invalid default limits in the config file: {e}"))?;
    if let Some(n) = file.max_connections {
        config.transport.max_connections = n;
    }
    if let Some(n) = file.max_streams_per_connection {
        config.max_streams_per_connection = n;
    }
    if let Some(n) = file.max_log_streams {
        config.service.max_log_streams = n;
    }
    if let Some(n) = file.max_running_jobs {
        config.worker.max_running_jobs = n;
    }
    if let Some(n) = file.max_argv_bytes {
        config.service.request.max_argv_bytes = n;
    }
    let at_least_one = |key: &str, n: Option<usize>| match n {
        Some(0) => Err(anyhow::anyhow!(
            "{key} in the config file must be at least 1"
        )),
        n => Ok(n),
    };
    if let Some(n) = at_least_one("max_running_jobs_per_user", file.max_running_jobs_per_user)? {
        config.worker.max_running_jobs_per_user = n;
    }
    if let Some(n) = at_least_one("max_kept_jobs_per_user", file.max_kept_jobs_per_user)? {
        config.worker.max_kept_jobs_per_user = n;
    }
    if let Some(n) = at_least_one("max_list_page_size", file.max_list_page_size)? {
        config.service.list.max_page_size = n;
        config.service.list.default_page_size = config.service.list.default_page_size.min(n);
    }
    if let Some(n) = at_least_one("list_page_size", file.list_page_size)? {
        anyhow::ensure!(
            n <= config.service.list.max_page_size,
            "list_page_size in the config file ({n}) is larger than max_list_page_size ({})",
            config.service.list.max_page_size
        );
        config.service.list.default_page_size = n;
    }
    if let Some(n) = at_least_one(
        "max_handshakes_per_address",
        file.max_handshakes_per_address,
    )? {
        config.transport.max_handshakes_per_address = n;
    }
    if let Some(timeout) = file_duration("handshake_timeout", &file.handshake_timeout)? {
        anyhow::ensure!(
            !timeout.is_zero(),
            "handshake_timeout in the config file must be longer than zero"
        );
        config.transport.handshake_timeout = timeout;
    }
    Ok(config)
}

/// A duration key of the config file (`90s`, `7d`), if it is there.
fn file_duration(key: &str, text: &Option<String>) -> anyhow::Result<Option<Duration>> {
    text.as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{key} in the config file: {e}"))
}

pub fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            out,
            users,
            sans,
            days,
            force,
        } => {
            let mut opts = PkiOptions::new(&out);
            if !users.is_empty() {
                opts.users = users;
            }
            opts.extra_sans = sans;
            opts.days = days;
            opts.force = force;
            pki::init(&opts)?;
            warn_if_repaired(&out)?;
            println!(
                "wrote CA, server and client certificates to {}",
                out.display()
            );
        }
        PkiCommand::AddUser {
            dir,
            user,
            days,
            force,
        } => {
            if days == 0 || days > 36500 {
                return Err(pki::PkiError::Days.into());
            }
            let now = time::OffsetDateTime::now_utc();
            pki::add_user(
                &dir,
                &user,
                now - time::Duration::minutes(5),
                now + time::Duration::days(days.into()),
                force,
            )?;
            warn_if_repaired(&dir)?;
            println!(
                "wrote {0}.pem and {0}-key.pem to {1}",
                user.name,
                dir.display()
            );
        }
        PkiCommand::Revoke {
            dir,
            users,
            serials,
            days,
        } => {
            let what: Vec<Revocation> = users
                .into_iter()
                .map(Revocation::User)
                .chain(serials.into_iter().map(Revocation::Serial))
                .collect();
            let done = crate::revoke::revoke(&dir, &what, days)?;
            for serial in &done.already {
                println!("{serial} was revoked already");
            }
            for serial in &done.added {
                println!("revoked {serial}");
            }
            println!(
                "wrote {} (valid until {}); send jobd SIGHUP to apply it",
                done.crl.display(),
                done.next_update
            );
        }
    }
    Ok(())
}

/// Makes a PKI folder private, and says on stderr what an older `pki init` left wider.
fn warn_if_repaired(dir: &std::path::Path) -> anyhow::Result<()> {
    let repaired = pki::make_private(dir)?;
    if repaired.count > 0 {
        eprintln!(
            "jobd: warning: {} was readable by others: made private (folders 0700, files 0600): {}",
            dir.display(),
            repaired.describe()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// `serve` args for a config file with `toml` and TLS files that are only named.
    fn with_file(toml: &str) -> anyhow::Result<ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobd.toml");
        std::fs::write(&path, toml).unwrap();
        server_config(ServeArgs {
            config: Some(path),
            state_dir: Some(dir.path().join("state")),
            ca: Some("ca.pem".into()),
            cert: Some("server.pem".into()),
            key: Some("server-key.pem".into()),
            ..Default::default()
        })
    }

    #[test]
    fn weaker_isolation_roles_default_to_admins_and_are_configurable() {
        let roles = |toml: &str| with_file(toml).unwrap().service.weaker_isolation_roles;
        assert_eq!(roles(""), vec![Role::Admin]);
        assert_eq!(roles("weaker_isolation_roles = []"), vec![]);
        assert_eq!(
            roles(r#"weaker_isolation_roles = ["admin", "user"]"#),
            vec![Role::Admin, Role::User]
        );
        let err = with_file(r#"weaker_isolation_roles = ["root"]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weaker_isolation_roles in the config file: unknown role \"root\" (admin, user)"
        );
    }

    #[test]
    fn jobd_listens_on_both_loopbacks_unless_flags_or_the_file_say_otherwise() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let listen = |flags: &[&str], toml: &str| {
            let dir = tempfile::tempdir().unwrap();
            let mut args = serve_args(dir.path(), Some(toml));
            args.listen = flags.iter().map(|f| addr(f)).collect();
            server_config(args).map(|c| c.listen)
        };
        let default = listen(&[], "").unwrap();
        assert_eq!(
            default,
            Listen {
                addrs: vec![addr("127.0.0.1:50051"), addr("[::1]:50051")],
                is_default: true
            }
        );
        let asked = |addrs: &[&str]| Listen {
            addrs: addrs.iter().map(|a| addr(a)).collect(),
            is_default: false,
        };
        assert_eq!(
            listen(&[], r#"listen = "0.0.0.0:7000""#).unwrap(),
            asked(&["0.0.0.0:7000"])
        );
        assert_eq!(
            listen(&[], r#"listen = ["[::]:7000", "10.0.0.1:7001"]"#).unwrap(),
            asked(&["[::]:7000", "10.0.0.1:7001"])
        );
        // Flags replace the file's list, in their order; an address given twice is bound once.
        assert_eq!(
            listen(
                &["[::1]:0", "127.0.0.1:0", "[::1]:0"],
                r#"listen = ["0.0.0.0:7000"]"#
            )
            .unwrap(),
            asked(&["[::1]:0", "127.0.0.1:0"])
        );
        for (bad, says) in [
            ("listen = []", "listen in the config file is an empty list"),
            (
                "listen = \"localhost:50051\"",
                "an address (\"IP:PORT\") or a list of addresses",
            ),
            ("listen = 50051", "an address"),
        ] {
            let err = format!("{:#}", listen(&[], bad).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        // A flag that is not an address is clap's to refuse.
        let err = Cli::try_parse_from(["jobd", "serve", "--listen", "localhost:1"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }

    #[test]
    fn the_address_file_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("address");
        std::fs::write(&path, "stale, from a jobd before\n").unwrap();
        write_address_file(
            &path,
            &[
                "127.0.0.1:40123".parse().unwrap(),
                "[::1]:40124".parse().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1:40123\n[::1]:40124\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("address")]);
        let err = write_address_file(
            &dir.path().join("no/such/dir"),
            &["[::1]:1".parse().unwrap()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }

    #[test]
    fn isolation_in_the_config_file_takes_jobcs_namespace_names() {
        let isolation = |toml: &str| with_file(toml).unwrap().worker.isolation;
        assert_eq!(isolation(""), worker::Isolation::ALL);
        assert_eq!(isolation("isolation = []"), worker::Isolation::NONE);
        assert_eq!(
            isolation(r#"isolation = ["pid", "net"]"#),
            worker::Isolation::from_list("pid,net").unwrap()
        );
        assert_eq!(
            isolation(r#"isolation = ["none"]"#),
            worker::Isolation::NONE
        );
        let err = with_file(r#"isolation = ["pid", "user"]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "isolation in the config file: unknown namespace \"user\": namespaces are pid, \
             mount and net (or all, or none)"
        );
    }

    fn serve_args(dir: &std::path::Path, config: Option<&str>) -> ServeArgs {
        let config = config.map(|text| {
            let path = dir.join("jobd.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        ServeArgs {
            config,
            state_dir: Some(dir.join("state")),
            ..Default::default()
        }
    }

    #[test]
    fn job_uids_come_from_the_dynamic_user_range_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let config = server_config(serve_args(dir.path(), None)).unwrap();
        assert_eq!(config.worker.job_uids, Some(worker::UidRange::DYNAMIC_USER));

        let file = server_config(serve_args(
            dir.path(),
            Some("job_uid_range = \"70000-70999\""),
        ))
        .unwrap();
        assert_eq!(file.worker.job_uids.unwrap().to_string(), "70000-70999");

        let mut args = serve_args(dir.path(), Some("job_uid_range = \"70000-70999\""));
        args.job_uid_range = Some("80000-80009".parse().unwrap());
        let flag = server_config(args).unwrap();
        assert_eq!(flag.worker.job_uids.unwrap().to_string(), "80000-80009");

        let err =
            server_config(serve_args(dir.path(), Some("job_uid_range = \"0-10\""))).unwrap_err();
        assert!(format!("{err:#}").contains("job_uid_range"), "{err:#}");
    }

    #[test]
    fn job_user_is_refused_with_a_pointer_to_job_uid_range() {
        let dir = tempfile::tempdir().unwrap();
        let err = server_config(serve_args(dir.path(), Some("job_user = \"nobody\""))).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("job_user") && text.contains("job_uid_range"),
            "{text}"
        );
    }

    #[test]
    fn the_development_pki_is_private_from_the_state_dir_down() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        server_config(serve_args(dir.path(), None)).unwrap();
        let state = dir.path().join("state");
        let mut pending = vec![state.clone()];
        let mut seen = 0;
        while let Some(path) = pending.pop() {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(meta.mode() & 0o7777, want, "{}", path.display());
            if meta.is_dir() {
                pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
            seen += 1;
        }
        // state, pki, and the CA's, the server's and three users' certificates and keys.
        assert_eq!(seen, 2 + 2 * 5, "{}", state.display());
    }

    #[test]
    fn job_environment_and_time_limits_come_from_the_config_file() {
        let defaults = with_file("").unwrap();
        assert_eq!(
            defaults.worker.env,
            vec![format!("PATH={}", worker::JOB_PATH)]
        );
        assert_eq!(defaults.worker.default_timeout, None);
        assert_eq!(defaults.worker.max_timeout, None);
        let c = with_file(
            "job_env = [\"LANG=C.UTF-8\", \"PATH=/opt/bin:/usr/bin\"]\n\
             default_timeout = \"1h\"\nmax_timeout = \"1day\"\n",
        )
        .unwrap();
        assert_eq!(
            c.worker.env,
            vec![
                format!("PATH={}", worker::JOB_PATH),
                "LANG=C.UTF-8".to_string(),
                "PATH=/opt/bin:/usr/bin".to_string()
            ]
        );
        assert_eq!(c.worker.default_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.worker.max_timeout, Some(Duration::from_secs(86400)));
        for (bad, says) in [
            (
                "job_env = [\"1X=y\"]",
                "job_env in the config file: environment variable name",
            ),
            ("job_env = [\"NOVALUE\"]", "is not KEY=VALUE"),
            (
                "default_timeout = \"soon\"",
                "default_timeout in the config file",
            ),
            (
                "default_timeout = \"2h\"\nmax_timeout = \"1h\"",
                "default_timeout in the config file (2h) is longer than max_timeout (1h)",
            ),
        ] {
            let err = format!("{:#}", with_file(bad).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn quotas_paging_and_handshake_limits_come_from_the_config_file() {
        let defaults = with_file("").unwrap();
        assert_eq!(defaults.worker.max_running_jobs_per_user, 256);
        assert_eq!(defaults.worker.max_kept_jobs_per_user, 10_000);
        assert_eq!(defaults.service.list.default_page_size, 100);
        assert_eq!(defaults.service.list.max_page_size, 1000);
        assert_eq!(defaults.transport.max_handshakes_per_address, 16);
        assert_eq!(defaults.transport.handshake_timeout, Duration::from_secs(5));

        let c = with_file(
            "max_running_jobs_per_user = 3\nmax_kept_jobs_per_user = 40\n\
             list_page_size = 5\nmax_list_page_size = 50\n\
             max_handshakes_per_address = 4\nhandshake_timeout = \"1500ms\"\n",
        )
        .unwrap();
        assert_eq!(c.worker.max_running_jobs_per_user, 3);
        assert_eq!(c.worker.max_kept_jobs_per_user, 40);
        assert_eq!(c.service.list.default_page_size, 5);
        assert_eq!(c.service.list.max_page_size, 50);
        assert_eq!(c.transport.max_handshakes_per_address, 4);
        assert_eq!(c.transport.handshake_timeout, Duration::from_millis(1500));

        // A maximum below the default lowers the default with it.
        let c = with_file("max_list_page_size = 2\n").unwrap();
        assert_eq!(c.service.list.default_page_size, 2);

        for (bad, says) in [
            ("max_kept_jobs_per_user = 0", "must be at least 1"),
            (
                "list_page_size = 20\nmax_list_page_size = 10",
                "larger than max_list_page_size",
            ),
            ("handshake_timeout = \"0s\"", "longer than zero"),
            ("handshake_timeout = \"soon\"", "handshake_timeout"),
        ] {
            let e = format!("{:#}", with_file(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_asked_for_and_the_flag_wins() {
        assert_eq!(with_file("").unwrap().metrics_listen, None);
        let c = with_file("metrics_listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let mut args = serve_args(dir.path(), Some("metrics_listen = \"127.0.0.1:9464\""));
        args.metrics_listen = Some("[::1]:9100".parse().unwrap());
        let flag = server_config(args).unwrap();
        assert_eq!(flag.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        let err = format!("{:#}", with_file("metrics_listen = \"9464\"").unwrap_err());
        assert!(err.contains("metrics_listen"), "{err}");
    }
}
